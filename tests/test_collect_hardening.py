"""What a hostile or broken node, a strange output or a careless option does to `collect`.

Each test is one reviewer finding: per-item failures instead of lost collectors, parse caps,
safe member names, outputs that are devices or already being written, host binaries.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

from kata_debug.bundle.writer import OutputTarget
from kata_debug.collect.runner import CollectOptions, run_collection
from tests.bundles import read_bundle
from tests.conftest import REPO, kata_debug
from tests.hostroots import add_task, kata_node, oci_spec

CRIO = "run/containers/storage/overlay-containers"


def _crio_task(root: Path, cid: str, spec: dict) -> None:
    userdata = root / CRIO / cid / "userdata"
    userdata.mkdir(parents=True)
    (userdata / "config.json").write_text(json.dumps(spec))


async def _collect(root: Path, out: Path, **kw):
    result = await run_collection(CollectOptions(host_root=root, output=str(out), **kw))
    return result, read_bundle(out)


def _items(bundle, collector: str) -> list[tuple[str, str]]:
    return [(f["item"], f["reason"]) for f in bundle.collector(collector)["items_failed"]]


# -- one bad directory is one failed item --------------------------------------------


async def test_a_loop_at_the_containerd_task_root_still_collects_cri_o_specs(tmp_path: Path) -> None:
    root = tmp_path / "host"
    (root / "run/containerd").mkdir(parents=True)
    (root / "run/containerd/io.containerd.runtime.v2.task").symlink_to("/run/containerd/io.containerd.runtime.v2.task")
    _crio_task(
        root,
        "crio0123",
        oci_spec(ctype="sandbox", sandbox_id="crio0123", extra_annotations={"io.katacontainers.pkg": "x"}),
    )
    _, bundle = await _collect(root, tmp_path / "b.tar.gz", collectors=["oci-specs", "resource-limits"])
    oci = bundle.collector("oci-specs")
    assert oci["status"] == "partial"
    assert _items(bundle, "oci-specs") == [
        ("/run/containerd/io.containerd.runtime.v2.task", "too many levels of symbolic links")
    ]
    assert "oci-specs/cri-o/crio0123/config.json" in bundle.members
    assert bundle.collector("resource-limits")["status"] == "partial"


async def test_a_looping_spec_is_one_item_the_other_bundles_are_collected(tmp_path: Path) -> None:
    root = kata_node(tmp_path / "host")
    tasks = root / "run/containerd/io.containerd.runtime.v2.task"
    (tasks / "moby").symlink_to("/run/containerd/io.containerd.runtime.v2.task/moby")  # a link, not a namespace
    loop = add_task(root, "k8s.io", "loop0123", oci_spec(ctype="container", sandbox_id="sb0123456789"))
    (loop / "config.json").unlink()
    (loop / "config.json").symlink_to("/run/containerd/io.containerd.runtime.v2.task/k8s.io/loop0123/config.json")
    _, bundle = await _collect(root, tmp_path / "b.tar.gz", collectors=["oci-specs"])
    assert _items(bundle, "oci-specs") == [
        (
            "/run/containerd/io.containerd.runtime.v2.task/k8s.io/loop0123/config.json",
            "cannot read config.json: too many levels of symbolic links",
        )
    ]
    assert "oci-specs/containerd/k8s.io/sb0123456789/config.json" in bundle.members


async def test_looping_directories_make_each_collector_partial_never_failed_or_ok(tmp_path: Path) -> None:
    root = kata_node(tmp_path / "host")
    # sandboxes: one state root loops; the sandbox under the others is still found.
    (root / "run/kata").symlink_to("/run/kata")
    # host: the hugepages directory loops.
    (root / "sys/kernel/mm").mkdir(parents=True)
    (root / "sys/kernel/mm/hugepages").symlink_to("/sys/kernel/mm/hugepages")
    # kata-config: a drop-in directory loops.
    (root / "etc/kata-containers/config.d").symlink_to("/etc/kata-containers/config.d")
    _, bundle = await _collect(
        root, tmp_path / "b.tar.gz", collectors=["sandboxes", "host", "kata-config", "agent-traces"]
    )
    assert _items(bundle, "sandboxes") == [
        ("/run/kata", "too many levels of symbolic links"),
        ("/run/kata/sb0123456789/shim-monitor.sock", "too many levels of symbolic links"),
    ]
    assert bundle.json("sandboxes/sandboxes.json")["count"] == 1
    assert _items(bundle, "host") == [("/sys/kernel/mm/hugepages", "too many levels of symbolic links")]
    # The directory is one item; the configuration whose drop-ins it would hold cannot be merged: another.
    assert _items(bundle, "kata-config") == [
        ("/etc/kata-containers", "too many levels of symbolic links"),
        ("/etc/kata-containers/configuration.toml", "too many levels of symbolic links"),
    ]
    assert bundle.json("kata-config/summary.json")["in_effect"] == "/etc/kata-containers/configuration.toml"
    for name in ("sandboxes", "host", "kata-config"):
        assert bundle.collector(name)["status"] == "partial", name


async def test_a_looping_span_spool_is_a_failed_item(tmp_path: Path) -> None:
    root = tmp_path / "host"
    (root / "var/lib/kata-debug").mkdir(parents=True)
    (root / "var/lib/kata-debug/traces").mkdir()
    (root / "var/lib/kata-debug/traces/spans.jsonl").write_text('{"resourceSpans": []}\n')
    (root / "var/lib/kata-debug/traces/spans.jsonl.1").symlink_to("/etc/passwd")  # not a regular file entry
    _, bundle = await _collect(root, tmp_path / "b.tar.gz", collectors=["agent-traces"])
    assert bundle.collector("agent-traces")["status"] == "ok"
    assert [f["name"] for f in bundle.json("agent-traces/index.json")["files"]] == ["spans.jsonl"]


# -- names from node data ------------------------------------------------------------


async def test_odd_names_on_the_node_become_safe_distinct_members(tmp_path: Path) -> None:
    root = kata_node(tmp_path / "host")
    for ns in ("ns with space", "ns:with:colons"):
        add_task(root, ns, "c1", oci_spec(ctype="container", sandbox_id="sb0123456789"))
    (root / "run/vc/sbs/sb\x01ctl").mkdir()
    (root / "run/vc/sbs/sb\x01ctl/persist.json").write_text("{}")
    _, bundle = await _collect(root, tmp_path / "b.tar.gz", collectors=["oci-specs", "sandboxes"])
    assert bundle.collector("oci-specs")["status"] == "ok"
    oci_members = sorted(m for m in bundle.members if m.startswith("oci-specs/containerd/ns"))
    assert len(oci_members) == 2
    for member in bundle.members:
        for part in member.split("/"):
            assert part not in ("", ".", "..") and all(c.isprintable() and c not in " :" for c in part), member
    index = bundle.json("oci-specs/index.json")["entries"]
    assert {e["namespace"] for e in index} >= {"ns with space", "ns:with:colons"}  # the index keeps the real names
    assert bundle.collector("sandboxes")["status"] == "ok"


# -- parse caps ------------------------------------------------------------------------


async def test_a_spec_over_the_parse_cap_is_kept_raw_cut_redacted_and_recorded(tmp_path: Path) -> None:
    root = kata_node(tmp_path / "host")
    env = ["DB_PASSWORD=hunter2"] + [f"FILLER_{i}=" + "x" * 100 for i in range(12000)]  # ~1.3 MiB
    add_task(root, "k8s.io", "big0123", oci_spec(ctype="container", sandbox_id="sb0123456789", env=env))
    persist = root / "run/vc/sbs/sb0123456789/persist.json"
    persist.write_text(json.dumps({"HypervisorState": {"Pid": 1}, "pad": "y" * 200_000}))
    _, bundle = await _collect(
        root,
        tmp_path / "b.tar.gz",
        collectors=["oci-specs", "sandboxes", "resource-limits"],
        max_parse_bytes=64 << 10,
    )
    oci = bundle.collector("oci-specs")
    assert oci["status"] == "partial"
    [(item, reason)] = _items(bundle, "oci-specs")
    assert item.endswith("/big0123/config.json") and "over the 65536 byte parse cap" in reason
    raw = "oci-specs/containerd/k8s.io/big0123/config.json.unparsed"
    assert len(bundle.members[raw]) <= (1 << 20) + 4096 and oci["truncated"][raw] > 0
    assert b"hunter2" not in bundle.members[raw]
    assert "oci-specs/containerd/k8s.io/sb0123456789/config.json" in bundle.members  # the small ones are parsed
    [(item, reason)] = _items(bundle, "sandboxes")
    assert item == "/run/vc/sbs/sb0123456789/persist.json" and "parse cap" in reason
    assert "sandboxes/sb0123456789/run-vc-sbs-persist.json.unparsed" in bundle.members
    assert any("persist.json" in i and "parse cap" in r for i, r in _items(bundle, "resource-limits"))


def test_max_parse_size_is_checked_like_other_sizes(tmp_path: Path) -> None:
    res = kata_debug("collect", "--max-parse-size", "lots", cwd=tmp_path)
    assert res.returncode == 2 and "--max-parse-size 'lots': not a size" in res.stderr.decode()


# -- output ----------------------------------------------------------------------------


def test_output_to_dev_null_writes_through_and_leaves_the_device_alone(tmp_path: Path) -> None:
    root = kata_node(tmp_path / "host")
    res = kata_debug("collect", "--host-root", str(root), "-o", "/dev/null", "-c", "oci-specs", cwd=tmp_path)
    assert res.returncode == 0, res.stderr.decode()
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert not Path("/dev/null.partial").exists()


def test_output_to_a_fifo_streams_a_valid_bundle(tmp_path: Path) -> None:
    root = kata_node(tmp_path / "host")
    fifo = tmp_path / "bundle.fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    res = kata_debug("collect", "--host-root", str(root), "-o", str(fifo), "-c", "oci-specs", cwd=tmp_path)
    reader.join(30)
    assert res.returncode == 0, res.stderr.decode()
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert read_bundle(got[0]).collector("oci-specs")["status"] == "ok"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle.fifo", "host"]


def test_output_to_dev_full_is_one_line(tmp_path: Path) -> None:
    root = kata_node(tmp_path / "host")
    res = kata_debug("collect", "--host-root", str(root), "-o", "/dev/full", "-c", "oci-specs", cwd=tmp_path)
    err = res.stderr.decode()
    assert res.returncode == 1 and "--output /dev/full: cannot write the bundle: No space left on device" in err
    assert len(err.strip().splitlines()) == 1, err


def test_an_existing_partial_is_never_shared(tmp_path: Path) -> None:
    root = kata_node(tmp_path / "host")
    out = tmp_path / "b.tar.gz"
    Path(f"{out}.partial").write_bytes(b"another run's bytes")
    res = kata_debug("collect", "--host-root", str(root), "-o", str(out), "-c", "oci-specs")
    err = res.stderr.decode()
    assert res.returncode == 1 and f"{out}.partial exists" in err and len(err.strip().splitlines()) == 1
    assert Path(f"{out}.partial").read_bytes() == b"another run's bytes" and not out.exists()


def test_default_names_never_collide(tmp_path: Path) -> None:
    """Two targets with the same default name (same node, same second) get two files."""
    name = str(tmp_path / "kata-debug-n-20260101T000000Z.tar.gz")
    first, second = OutputTarget(name, unique_suffix=".tar.gz"), OutputTarget(name, unique_suffix=".tar.gz")
    first.open().write(b"first")
    second.open().write(b"second")
    first.commit()
    second.commit()
    assert first.path == name and second.path == name.replace(".tar.gz", "-2.tar.gz")
    assert Path(first.path).read_bytes() == b"first" and Path(second.path).read_bytes() == b"second"
    # A third run finishing after a file took its name meanwhile does not replace it.
    third = OutputTarget(name, unique_suffix=".tar.gz")
    third.open().write(b"third")
    Path(name.replace(".tar.gz", "-3.tar.gz")).write_bytes(b"someone else")
    third.commit()
    assert Path(third.path).read_bytes() == b"third" and third.path.endswith("-4.tar.gz")


def test_two_collects_at_once_with_default_names_give_two_bundles(tmp_path: Path) -> None:
    root = kata_node(tmp_path / "host")
    cmd = [sys.executable, "-m", "kata_debug", "collect", "--host-root", str(root), "-c", "oci-specs"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "NODE_NAME": "same"}
    procs = [
        subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    bundles = sorted(tmp_path.glob("kata-debug-same-*.tar.zst"))  # zstd: the default
    assert len(bundles) == 3 and not list(tmp_path.glob("*.partial"))
    for b in bundles:
        assert read_bundle(b).collector("oci-specs")["status"] == "ok"


def test_a_since_before_1900_is_a_usage_error_before_any_work(tmp_path: Path) -> None:
    for since in ("99999999d", "999999999999999999d", "1800-01-01T00:00:00Z"):
        res = kata_debug("collect", "--since", since, cwd=tmp_path)
        err = res.stderr.decode()
        assert res.returncode == 2 and len(err.strip().splitlines()) == 1, err
        assert f"--since '{since}': " in err, "the error quotes what the user typed, not seconds"
    assert list(tmp_path.iterdir()) == []


# -- host binaries ---------------------------------------------------------------------


def _tool(root: Path, path: str, marker: Path) -> None:
    exe = root / path.lstrip("/")
    exe.parent.mkdir(parents=True, exist_ok=True)
    exe.write_text(f'#!/bin/sh\necho "$0 $*" >> {marker}\necho "{{\\"ran\\": true}}"\n')
    exe.chmod(0o755)


def test_host_binaries_run_only_when_asked_and_see_the_nodes_config(tmp_path: Path) -> None:
    root = kata_node(tmp_path / "host")
    marker = tmp_path / "ran.txt"
    _tool(root, "/usr/bin/containerd", marker)
    _tool(root, "/opt/kata/bin/kata-runtime", marker)
    out = tmp_path / "b.tar.gz"
    res = kata_debug("collect", "--host-root", str(root), "-o", str(out), "-c", "host", "-c", "kata-config")
    assert res.returncode == 0, res.stderr.decode()
    assert not marker.exists(), "a binary under --host-root ran without --run-host-tools"
    bundle = read_bundle(out)
    assert "--run-host-tools" in bundle.json("host/facts.json")["containerd"]["version_from"]
    assert bundle.json("kata-config/summary.json")["tools"]["kata-runtime"]["result"] == "not run"

    out.unlink()
    res = kata_debug(
        "collect", "--host-root", str(root), "-o", str(out), "-c", "host", "-c", "kata-config", "--run-host-tools"
    )
    assert res.returncode == 0, res.stderr.decode()
    ran = marker.read_text().splitlines()
    config = root / "etc/kata-containers/configuration.toml"
    assert f"{root}/opt/kata/bin/kata-runtime --config {config} kata-env --json" in ran
    assert f"{root}/usr/bin/containerd --version" in ran
    bundle = read_bundle(out)
    tool = bundle.json("kata-config/summary.json")["tools"]["kata-runtime"]
    assert tool["result"] == "exit 0" and tool["config"] == str(config) and str(root) in tool["ran"]
    assert "mount namespace" in bundle.json("host/facts.json")["containerd"]["version_from"]
