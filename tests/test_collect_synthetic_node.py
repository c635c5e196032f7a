"""`kata-debug collect` on a synthetic Kata node: what a maintainer finds in the bundle."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from aiohttp import web

from kata_debug.collect.runner import CollectOptions, run_collection
from kata_debug.collectors.sandboxes import short_unix_path
from tests.bundles import read_bundle
from tests.conftest import REPO, kata_debug
from tests.hostroots import add_task, kata_node, oci_spec


async def _collect(root: Path, out: Path, **kw) -> tuple:
    result = await run_collection(CollectOptions(host_root=root, output=str(out), **kw))
    return result, read_bundle(out)


async def test_kata_node_bundle_has_specs_index_state_config_and_no_secrets(tmp_path: Path) -> None:
    root = kata_node(tmp_path / "host")
    result, bundle = await _collect(root, tmp_path / "b.tar.gz", collectors=["oci-specs", "sandboxes", "kata-config"])
    assert result.exit_code == 0
    assert bundle.manifest["node"] == "kata-node-1"
    index = bundle.json("oci-specs/index.json")
    assert index["kata_sandboxes"] == ["sb0123456789"]
    app = next(e for e in index["entries"] if e["id"] == "ctr0123456789")
    assert app["runtime"] == "io.containerd.kata.v2" and app["kata"] is True
    assert app["type"] == "container" and app["sandbox_id"] == "sb0123456789"
    assert (app["pod_name"], app["pod_namespace"]) == ("web-0", "default")
    assert app["resources"]["cpu_quota"] == 50000 and app["resources"]["memory_limit"] == 800 * 2**20
    spec = bundle.json("oci-specs/containerd/k8s.io/ctr0123456789/config.json")
    assert spec["process"]["env"] == ["PATH=***", "DB_PASSWORD=***"]
    assert spec["annotations"]["example.com/api-token"] == "***"
    raw = b"".join(bundle.members.values())
    assert b"hunter2" not in raw and b"tok-abc123" not in raw
    assert bundle.manifest["redactions"]["oci-env"] >= 2
    state = bundle.json("sandboxes/sandboxes.json")
    assert state["sandboxes"][0]["id"] == "sb0123456789"
    assert bundle.json("sandboxes/sb0123456789/run-vc-sbs-persist.json")["HypervisorState"]["Pid"] == 4242
    cfg = bundle.json("kata-config/summary.json")
    assert cfg["in_effect"] == "/etc/kata-containers/configuration.toml"
    assert cfg["sizing"]["default_memory"] == 2048 and cfg["sizing"]["hypervisor"] == "qemu"
    assert cfg["sizing"]["enable_annotations"] == ["default_vcpus"]


async def test_non_kata_tasks_are_left_out_unless_all_runtimes(tmp_path: Path) -> None:
    root = kata_node(tmp_path / "host")
    add_task(root, "default", "runc1", oci_spec(ctype="container", sandbox_id="x"), runtime="io.containerd.runc.v2")
    _, bundle = await _collect(root, tmp_path / "a.tar.gz", collectors=["oci-specs"])
    index = bundle.json("oci-specs/index.json")
    assert "runc1" not in {e["id"] for e in index["entries"]}
    assert index["non_kata_tasks_skipped"] == {"io.containerd.runc.v2": 1}
    _, bundle = await _collect(root, tmp_path / "b.tar.gz", collectors=["oci-specs"], all_runtimes=True)
    assert "runc1" in {e["id"] for e in bundle.json("oci-specs/index.json")["entries"]}


async def test_malformed_config_json_is_a_failed_item_and_the_rest_is_collected(tmp_path: Path) -> None:
    root = kata_node(tmp_path / "host")
    add_task(
        root,
        "k8s.io",
        "broken",
        '{"ociVersion": "1.0.2", "process": {"env": ["PLAIN=plain-leak", "DB_PASSWORD=pw-leak"',
    )
    result, bundle = await _collect(root, tmp_path / "b.tar.gz", collectors=["oci-specs"])
    oci = bundle.collector("oci-specs")
    assert oci["status"] == "partial" and result.exit_code == 3
    assert oci["items_failed"][0]["item"].endswith("/broken/config.json")
    assert "malformed config.json" in oci["items_failed"][0]["reason"]
    assert "oci-specs/containerd/k8s.io/ctr0123456789/config.json" in bundle.members
    raw = bundle.members["oci-specs/containerd/k8s.io/broken/config.json.unparsed"]
    assert b'"PLAIN=***", "DB_PASSWORD=***"' in raw, "kept for the maintainer, env values still removed"


async def test_shim_monitor_socket_is_scraped_even_past_sun_path_length(tmp_path: Path) -> None:
    root = kata_node(tmp_path / ("deep-host-root-" * 4))
    sock = root / "run/vc/sbs/sb0123456789/shim-monitor.sock"
    app = web.Application()

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text="kata_shim_fds 12\n")

    async def agent_url(_: web.Request) -> web.Response:
        return web.Response(text="vsock://1234:1024")

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/agent-url", agent_url)
    runner = web.AppRunner(app)
    await runner.setup()
    assert len(str(sock)) > 108  # the long-path route
    await web.SockSite(runner, bind_unix(sock)).start()
    try:
        _, bundle = await _collect(root, tmp_path / "b.tar.gz", collectors=["sandboxes"])
    finally:
        await runner.cleanup()
    assert bundle.members["sandboxes/sb0123456789/monitor-metrics.txt"] == b"kata_shim_fds 12\n"
    monitor = bundle.json("sandboxes/sandboxes.json")["sandboxes"][0]["monitor"]
    assert monitor["agent_url"] == "vsock://1234:1024"


async def test_a_machine_without_kata_gets_a_bundle_saying_what_is_missing(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    result, bundle = await _collect(
        root, tmp_path / "b.tar.gz", collectors=["oci-specs", "sandboxes", "kata-config", "host"]
    )
    assert result.exit_code == 0
    assert bundle.json("oci-specs/index.json")["missing"] == ["no Kata task bundles on this node"]
    assert bundle.json("sandboxes/sandboxes.json")["missing"]
    assert bundle.json("kata-config/summary.json")["missing"] == ["no Kata configuration in the default search paths"]
    assert "/dev/kvm not present" in bundle.json("host/facts.json")["missing"]


async def test_symlinks_in_the_host_root_never_lead_outside_it(tmp_path: Path) -> None:
    root = kata_node(tmp_path / "host")
    outside = tmp_path / "outside.toml"
    outside.write_text("[hypervisor.qemu]\ndefault_memory = 987654\n")
    cfg = root / "etc/kata-containers/configuration.toml"
    cfg.unlink()
    cfg.symlink_to(str(outside))  # absolute target: means <root>/<that path> on the node
    _, bundle = await _collect(root, tmp_path / "b.tar.gz", collectors=["kata-config"])
    assert b"default_memory = 987654" not in b"".join(bundle.members.values())
    assert bundle.json("kata-config/summary.json")["sizing"] is None, "the link leads nowhere inside the root"


async def test_task_and_state_files_that_are_symlinks_are_read_inside_the_root(tmp_path: Path) -> None:
    """A node's /run/... symlinks are node paths: `<root>/<target>`, never the collector's own files."""
    root = kata_node(tmp_path / "host")
    leak = tmp_path / "outside"
    leak.mkdir()
    (leak / "config.json").write_text(json.dumps(oci_spec(ctype="container", sandbox_id="x", env=["K=OUTSIDE_LEAK"])))
    (leak / "persist.json").write_text('{"leak": "OUTSIDE_LEAK"}')
    (leak / "runtime").write_text("OUTSIDE_LEAK")
    # Absolute targets that exist outside the root but not inside it.
    app = root / "run/containerd/io.containerd.runtime.v2.task/k8s.io/ctr0123456789"
    for name in ("config.json", "runtime"):
        (app / name).unlink()
        (app / name).symlink_to(leak / name)
    persist = root / "run/vc/sbs/sb0123456789/persist.json"
    persist.unlink()
    persist.symlink_to(leak / "persist.json")
    # And one whose absolute target exists inside the root: followed there.
    inside = root / "srv/state/persist.json"
    inside.parent.mkdir(parents=True)
    inside.write_text('{"HypervisorState": {"Pid": 777}}')
    (root / "run/vc/sbs/sb-inside").mkdir(parents=True)
    (root / "run/vc/sbs/sb-inside/persist.json").symlink_to("/srv/state/persist.json")
    _, bundle = await _collect(root, tmp_path / "b.tar.gz", collectors=["oci-specs", "sandboxes"], all_runtimes=True)
    assert b"OUTSIDE_LEAK" not in b"".join(bundle.members.values())
    assert bundle.json("sandboxes/sb-inside/run-vc-sbs-persist.json")["HypervisorState"]["Pid"] == 777
    oci = bundle.collector("oci-specs")
    assert [(f["item"].rsplit("/", 2)[-2], f["reason"]) for f in oci["items_failed"]] == [
        ("ctr0123456789", "config.json missing")
    ]


def test_a_fifo_where_a_file_should_be_is_skipped_not_waited_on(tmp_path: Path) -> None:
    """A FIFO without a writer would block a plain open() forever, and the process with it."""
    root = kata_node(tmp_path / "host")
    app = root / "run/containerd/io.containerd.runtime.v2.task/k8s.io/ctr0123456789"
    (app / "config.json").unlink()
    os.mkfifo(app / "config.json")
    persist = root / "run/vc/sbs/sb0123456789/persist.json"
    persist.unlink()
    os.mkfifo(persist)
    out = tmp_path / "b.tar.gz"
    proc = kata_debug(
        "collect",
        "--host-root",
        str(root),
        "-o",
        str(out),
        "-c",
        "oci-specs",
        "-c",
        "sandboxes",
        "-c",
        "kata-config",
        "--format",
        "json",
        timeout=60,
    )
    assert proc.returncode == 3, proc.stderr.decode()
    bundle = read_bundle(out)
    reasons = [f["reason"] for c in ("oci-specs", "sandboxes") for f in bundle.collector(c)["items_failed"]]
    assert any("not a regular file" in r for r in reasons), reasons
    assert bundle.collector("kata-config")["status"] == "ok"


def bind_unix(path: Path) -> socket.socket:
    """A listening Unix socket at `path`, however deep (via a /proc/self/fd alias)."""
    address, dirfd = short_unix_path(path)
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(address)
    finally:
        if dirfd is not None:
            os.close(dirfd)
    s.listen(16)
    return s


def _hanging_socket(path: Path) -> socket.socket:
    """A shim monitor that accepts connections and never answers (a wedged shim)."""
    return bind_unix(path)


async def test_a_hanging_collector_times_out_and_the_bundle_is_still_complete(tmp_path: Path) -> None:
    root = kata_node(tmp_path / "host")
    hang = _hanging_socket(root / "run/vc/sbs/sb0123456789/shim-monitor.sock")
    try:
        result, bundle = await _collect(root, tmp_path / "b.tar.gz", timeout=1.0, collectors=["sandboxes", "oci-specs"])
    finally:
        hang.close()
    sandboxes = bundle.collector("sandboxes")
    assert sandboxes["status"] == "timeout"
    assert sandboxes["error"] == "did not finish within --timeout 1s"
    # what it gathered before hanging is kept
    assert "sandboxes/sb0123456789/run-vc-sbs-persist.json" in sandboxes["files"]
    assert "sandboxes/sb0123456789/run-vc-sbs-persist.json" in bundle.members
    assert bundle.collector("oci-specs")["status"] == "ok"
    assert result.exit_code == 3


def test_sigint_mid_collection_still_ends_in_a_valid_bundle(tmp_path: Path) -> None:
    root = kata_node(tmp_path / "host")
    hang = _hanging_socket(root / "run/vc/sbs/sb0123456789/shim-monitor.sock")
    # A monitor that never answers keeps `sandboxes` busy; scrape timeout is 3s per path.
    out = tmp_path / "b.tar.gz"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kata_debug",
            "collect",
            "--host-root",
            str(root),
            "--output",
            str(out),
            "--collector",
            "sandboxes",
            "--collector",
            "oci-specs",
            "--format",
            "json",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        partial = Path(str(out) + ".partial")
        deadline = time.monotonic() + 30
        while not partial.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        # `sandboxes` is stuck on the monitor (3 s per scraped path, two paths); oci-specs needs
        # well under a second even on a loaded machine (0.5 s was not always enough there)
        time.sleep(2.5)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        hang.close()
    assert proc.returncode == 3, stderr
    bundle = read_bundle(out)
    assert bundle.manifest["interrupted"] == "interrupted by SIGINT"
    assert bundle.collector("sandboxes")["status"] == "timeout"
    assert bundle.collector("oci-specs")["status"] == "ok"
    assert json.loads(stdout)["exit_code"] == 3
    assert not Path(str(out) + ".partial").exists()


def test_global_deadline_marks_unfinished_collectors_timeout(tmp_path: Path) -> None:
    root = kata_node(tmp_path / "host")
    hang = _hanging_socket(root / "run/vc/sbs/sb0123456789/shim-monitor.sock")
    try:
        res = kata_debug(
            "collect",
            "--host-root",
            str(root),
            "--output",
            str(tmp_path / "b.tar"),
            "--compression",
            "none",
            "--deadline",
            "1",
            "-c",
            "sandboxes",
            "-c",
            "host",
        )
    finally:
        hang.close()
    assert res.returncode == 3, res.stderr
    bundle = read_bundle(tmp_path / "b.tar")
    assert bundle.manifest["interrupted"] == "global deadline of 1s reached"
    assert bundle.collector("sandboxes")["status"] == "timeout"
    assert bundle.collector("host")["status"] == "ok"
    assert bundle.collector("shim-logs")["status"] == "skipped"


def test_bad_input_gets_one_line_and_exit_2(tmp_path: Path) -> None:
    cases = [
        (["collect", "--host-root", str(tmp_path / "missing")], "--host-root"),
        (["collect", "--since", "yesterday"], "--since"),
        (["collect", "--collector", "nope"], "--collector nope"),
        (["collect", "--max-log-size", "lots"], "--max-log-size"),
        (["collect", "--max-log-size", "nan"], "--max-log-size 'nan': not a size"),
        (["collect", "--max-log-size", "inf"], "--max-log-size 'inf': not a size"),
        (["collect", "--max-log-size", "0.1"], "--max-log-size '0.1': must be at least 1 byte"),
        (["collect", "--timeout", "nan"], "--timeout nan"),
        (["collect", "--deadline", "nan"], "--deadline nan"),
        (["collect", "--compression", "lz4"], "'--compression': 'lz4' is not one of"),
        (["collect", "--bogus"], "No such option: --bogus"),
        (["collect", "--format", "xml"], "'--format'"),
    ]
    for args, needle in cases:
        res = kata_debug(*args, cwd=tmp_path)
        assert res.returncode == 2, (args, res.stderr)
        err = res.stderr.decode()
        assert needle in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_unwritable_output_is_exit_1_with_a_clear_message(tmp_path: Path) -> None:
    root = kata_node(tmp_path / "host")
    res = kata_debug("collect", "--host-root", str(root), "--output", str(tmp_path / "no/such/dir/b.tar.gz"))
    assert res.returncode == 1
    assert "does not exist" in res.stderr.decode() and "Traceback" not in res.stderr.decode()


def test_an_output_that_is_a_directory_is_refused_before_collecting(tmp_path: Path) -> None:
    root = kata_node(tmp_path / "host")
    (tmp_path / "out").mkdir()
    res = kata_debug("collect", "--host-root", str(root), "--output", str(tmp_path / "out"))
    err = res.stderr.decode()
    assert res.returncode == 1 and f"--output {tmp_path / 'out'}: is a directory" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out.partial").exists()


def test_a_full_disk_is_one_line_not_an_internal_error(tmp_path: Path) -> None:
    root = kata_node(tmp_path / "host")
    with open("/dev/full", "wb") as full:  # every write: ENOSPC
        res = subprocess.run(
            [sys.executable, "-m", "kata_debug", "collect", "--host-root", str(root), "-o", "-", "-c", "oci-specs"],
            stdout=full,
            stderr=subprocess.PIPE,
            timeout=120,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    err = res.stderr.decode()
    assert res.returncode == 1 and "cannot write the bundle: No space left on device" in err
    assert "internal error" not in err and "Traceback" not in err


def test_a_bundle_is_not_written_to_a_terminal(tmp_path: Path) -> None:
    import pty

    root = kata_node(tmp_path / "host")
    controller, terminal = pty.openpty()
    try:
        res = subprocess.run(
            [sys.executable, "-m", "kata_debug", "collect", "--host-root", str(root), "-o", "-", "-c", "oci-specs"],
            stdout=terminal,
            stderr=subprocess.PIPE,
            timeout=60,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    finally:
        os.close(terminal)
        os.close(controller)
    assert res.returncode == 1 and "standard output is a terminal" in res.stderr.decode()


def test_the_bundle_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    root = kata_node(tmp_path / "host")
    res = kata_debug("collect", "--host-root", str(root), "-o", str(tmp_path / "b.tar.gz"), "-c", "oci-specs")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "b.tar.gz").stat().st_mode & 0o777 == 0o600


def test_a_collector_named_twice_runs_once(tmp_path: Path) -> None:
    root = kata_node(tmp_path / "host")
    res = kata_debug(
        "collect", "--host-root", str(root), "-o", str(tmp_path / "b.tar.gz"), "-c", "oci-specs", "-c", "oci-specs"
    )
    assert res.returncode == 0, res.stderr
    names = [c["name"] for c in read_bundle(tmp_path / "b.tar.gz").manifest["collectors"]]
    assert names.count("oci-specs") == 1


def test_output_dash_streams_the_bundle_to_stdout(tmp_path: Path) -> None:
    root = kata_node(tmp_path / "host")
    res = kata_debug("collect", "--host-root", str(root), "--output", "-", "-c", "oci-specs", "--format", "json")
    assert res.returncode == 0, res.stderr
    bundle = read_bundle(res.stdout)
    assert "oci-specs/index.json" in bundle.members
    assert json.loads(res.stderr[res.stderr.index(b"{") :])["exit_code"] == 0


def test_zstd_bundle(tmp_path: Path) -> None:
    root = kata_node(tmp_path / "host")
    res = kata_debug(
        "collect",
        "--host-root",
        str(root),
        "--output",
        str(tmp_path / "b.tar.zst"),
        "--compression",
        "zstd",
        "-c",
        "kata-config",
    )
    assert res.returncode == 0, res.stderr
    assert read_bundle(tmp_path / "b.tar.zst").json("kata-config/summary.json")["in_effect"]


def test_no_redact_warns_and_keeps_values(tmp_path: Path) -> None:
    root = kata_node(tmp_path / "host")
    res = kata_debug(
        "collect", "--host-root", str(root), "--output", str(tmp_path / "b.tgz"), "--no-redact", "-c", "oci-specs"
    )
    assert res.returncode == 0
    assert "--no-redact" in res.stderr.decode()
    assert (
        b"hunter2" in read_bundle(tmp_path / "b.tgz").members["oci-specs/containerd/k8s.io/ctr0123456789/config.json"]
    )


def test_log_files_are_capped_keeping_the_newest_lines_and_indexed_per_sandbox(tmp_path: Path) -> None:
    root = kata_node(tmp_path / "host")
    log = root / "var/lib/rancher/k3s/agent/containerd/containerd.log"
    log.parent.mkdir(parents=True)
    with log.open("w") as fh:
        for i in range(40000):
            fh.write(
                f'time="2026-11-28T00:00:00Z" level=info msg="event {i:06d}" sandbox=sb0123456789 source=virtcontainers\n'
            )
        fh.write('time="2026-11-28T00:00:01Z" level=error msg="last words token=abc123"\n')
    res = kata_debug(
        "collect",
        "--host-root",
        str(root),
        "--output",
        str(tmp_path / "b.tgz"),
        "-c",
        "shim-logs",
        "--max-log-size",
        "1M",
        "--since",
        "36500d",
    )  # fixed dates stay in the window
    assert res.returncode == 0, res.stderr
    bundle = read_bundle(tmp_path / "b.tgz")
    name = "shim-logs/files/var/lib/rancher/k3s/agent/containerd/containerd.log"
    kept = bundle.members[name]
    assert len(kept) <= 2**20
    assert kept.endswith(b'msg="last words token=***"\n')
    assert kept.startswith(b'time="')  # whole lines only
    # the manifest records how many bytes of the source were left out (the oldest ones)
    assert bundle.collector("shim-logs")["truncated"][name] == log.read_bytes().index(kept[:200])
    at = bundle.json("shim-logs/sandboxes.json")["sandboxes"]["sb0123456789"][f"shim-logs/{name[len('shim-logs/') :]}"]
    lines = kept.split(b"\n")
    assert (
        lines[at["last_line"] - 1]
        == b'time="2026-11-28T00:00:00Z" level=info msg="event 039999" sandbox=sb0123456789 source=virtcontainers'
    )
    assert at["lines"] == kept.count(b"sandbox=sb0123456789")
    assert bundle.json("shim-logs/summary.json")["missing"] == [
        "no journal files under /var/log/journal or /run/log/journal"
    ]
