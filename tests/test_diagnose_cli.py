"""`kata-debug diagnose` as a user runs it: inputs, output formats, exit codes."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from kata_debug.analyze.diagnose import diagnose
from kata_debug.collect.runner import CollectOptions, run_collection
from tests.bundles import read_bundle
from tests.conftest import kata_debug
from tests.diagnose_nodes import CONTAINERD_LOG, SINCE_EVERYTHING, add_log, collect, healthy_node

SHIM_MISSING = 'ctr: failed to start shim: failed to resolve runtime path: runtime "io.containerd.kata.v2" binary not installed "containerd-shim-kata-v2": file does not exist: unknown'


def failing_node(root: Path) -> Path:
    healthy_node(root)
    add_log(root, CONTAINERD_LOG, SHIM_MISSING)
    return root


async def test_json_is_one_object_with_findings_and_analyzers_and_exit_1(tmp_path: Path) -> None:
    bundle = await collect(failing_node(tmp_path / "host"), tmp_path / "b.tar.gz")
    proc = kata_debug("diagnose", str(bundle), "--format", "json")
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    assert set(out) == {"bundle", "node", "findings", "analyzers"}
    assert out["node"] == "kata-node-1" and out["bundle"] == str(bundle)
    top = out["findings"][0]
    assert top["id"] == "shim-not-found" and top["severity"] == "error"
    assert {"id", "severity", "title", "sandbox", "pod", "evidence", "explanation", "fix"} <= set(top)
    assert top["evidence"][0] == {"path": "shim-logs/files/var/log/containerd.log", "line": 1, "text": SHIM_MISSING}
    assert {a["id"] for a in out["analyzers"]} >= {"cri-config", "vm-start", "host-capability"}
    assert all(a["status"] == "ok" and a["error"] is None for a in out["analyzers"])


async def test_text_names_the_cause_quotes_the_line_and_gives_the_fix(tmp_path: Path) -> None:
    bundle = await collect(failing_node(tmp_path / "host"), tmp_path / "b.tar.gz")
    proc = kata_debug("diagnose", str(bundle))
    text = proc.stdout.decode()
    assert proc.returncode == 1
    assert "1. ERROR shim-not-found:" in text
    assert "> shim-logs/files/var/log/containerd.log:1: ctr: failed to start shim" in text
    assert "fix: " in text and "issues/9256" in text


async def test_healthy_bundle_exits_0(tmp_path: Path) -> None:
    bundle = await collect(healthy_node(tmp_path / "host"), tmp_path / "b.tar.gz")
    proc = kata_debug("diagnose", str(bundle))
    assert proc.returncode == 0, proc.stdout
    assert "0 error(s), 0 warning(s)" in proc.stdout.decode()


def test_not_a_bundle_is_one_line_and_exit_2(tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("hello\n")
    tar_without_manifest = tmp_path / "x.tar"
    with tarfile.open(tar_without_manifest, "w") as tar:
        info = tarfile.TarInfo("top/a.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"a"))
    for bad, why in (
        (junk, "not a bundle"),
        (tmp_path / "missing.tar.gz", "cannot read"),
        (tar_without_manifest, "no manifest.json"),
    ):
        proc = kata_debug("diagnose", str(bad))
        err = proc.stderr.decode()
        assert proc.returncode == 2, (bad, err)
        assert err.count("\n") == 1 and str(bad) in err and why in err and "Traceback" not in err


def test_a_tar_member_pointing_outside_the_bundle_is_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        info = tarfile.TarInfo("../../etc/passwd")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    proc = kata_debug("diagnose", str(evil))
    assert proc.returncode == 2 and b"points outside the bundle" in proc.stderr


async def test_zstd_plain_tar_and_directory_bundles_give_the_same_findings(tmp_path: Path) -> None:
    root = failing_node(tmp_path / "host")
    zst = tmp_path / "b.tar.zst"
    await run_collection(CollectOptions(host_root=root, output=str(zst), compression="zstd", since=SINCE_EVERYTHING))
    plain = tmp_path / "b.tar"
    await run_collection(CollectOptions(host_root=root, output=str(plain), compression="none", since=SINCE_EVERYTHING))
    extracted = tmp_path / "dir"
    with tarfile.open(plain) as tar:
        tar.extractall(extracted, filter="data")
    results = [diagnose(str(p)) for p in (zst, plain, extracted)]
    assert [[(f.id, [e.to_json() for e in f.evidence]) for f in d.findings] for d in results] == [
        [(f.id, [e.to_json() for e in f.evidence]) for f in results[0].findings]
    ] * 3
    assert results[0].findings[0].id == "shim-not-found"


def _cluster_bundle(path: Path, node_bundle: Path, runtimeclasses: list[dict], pods: dict[str, dict]) -> None:
    """A cluster bundle as `collect --cluster` lays it out: API objects, nested node bundles."""
    top = "kata-debug-cluster-test-20260101T000000Z"

    def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(f"{top}/{name}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    with tarfile.open(path, "w:gz") as tar:
        add(tar, "cluster/runtimeclasses.json", json.dumps(runtimeclasses).encode())
        for name, record in pods.items():
            add(tar, f"cluster/pods/{name}.json", json.dumps(record).encode())
        add(tar, "nodes/kata-node-1/bundle.tar.gz", node_bundle.read_bytes())
        add(tar, "manifest.json", json.dumps({"schema_version": 1, "cluster": True}).encode())


async def test_cluster_bundle_reads_nested_node_bundles_and_the_api_objects(tmp_path: Path) -> None:
    """kata-containers#3633: the pod names RuntimeClass kata-qemu, only kata exists."""
    node_bundle = await collect(failing_node(tmp_path / "host"), tmp_path / "node.tar.gz")
    cluster = tmp_path / "cluster.tar.gz"
    pod = {
        "pod": {"metadata": {"namespace": "default", "name": "web-1"}, "spec": {"runtimeClassName": "kata-qemu"}},
        "owners": [],
        "events": [
            {
                "type": "Warning",
                "reason": "FailedCreate",
                "message": 'pods "web-1" is forbidden: pod rejected: RuntimeClass "kata-qemu" not found',
            }
        ],
    }
    _cluster_bundle(
        cluster, node_bundle, [{"metadata": {"name": "kata"}, "handler": "kata-qemu"}], {"default/web-1": pod}
    )
    proc = kata_debug("diagnose", str(cluster), "--format", "json")
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    assert set(out) == {"bundle", "nodes", "findings", "analyzers"} and out["nodes"] == ["kata-node-1"]
    by_id = {f["id"]: f for f in out["findings"]}
    rc = by_id["runtimeclass-not-found"]
    assert rc["pod"] == "default/web-1" and rc["node"] is None
    assert "a RuntimeClass named 'kata' has handler 'kata-qemu'" in rc["explanation"]
    assert any(e["path"] == "cluster/pods/default/web-1.json" for e in rc["evidence"])
    shim = by_id["shim-not-found"]
    assert shim["node"] == "kata-node-1"
    assert shim["evidence"][0]["path"] == "nodes/kata-node-1/bundle.tar.gz!/shim-logs/files/var/log/containerd.log"


async def test_without_bundle_it_collects_this_node_and_output_keeps_the_bundle(tmp_path: Path) -> None:
    root = failing_node(tmp_path / "host")
    kept = tmp_path / "kept.tar.gz"
    proc = kata_debug(
        "diagnose", "--host-root", str(root), "--since", "87600h", "--output", str(kept), "--format", "json"
    )
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    assert out["bundle"] == str(kept) and out["findings"][0]["id"] == "shim-not-found"
    members = read_bundle(kept).members
    for e in out["findings"][0]["evidence"]:
        assert e["path"] in members


def test_collect_only_options_with_a_bundle_are_refused(tmp_path: Path) -> None:
    proc = kata_debug("diagnose", str(tmp_path), "--output", str(tmp_path / "x.tar.gz"))
    assert proc.returncode == 2 and b"--output: only valid without BUNDLE" in proc.stderr


async def test_collect_writes_findings_before_the_manifest_and_keeps_its_exit_code(tmp_path: Path) -> None:
    root = failing_node(tmp_path / "host")
    out = tmp_path / "b.tar.gz"
    proc = kata_debug("collect", "--host-root", str(root), "--since", "87600h", "-o", str(out))
    assert proc.returncode == 0, proc.stderr  # findings never change collect's exit code
    text = proc.stdout.decode()
    assert "error shim-not-found" in text and "fix: Put containerd-shim-kata-v2" in text
    bundle = read_bundle(out)  # checks the manifest is last and lists every member
    written = bundle.json("analysis/findings.json")
    assert written["bundle"] == "." and written["node"] == "kata-node-1"
    assert written["findings"][0]["id"] == "shim-not-found"
    read_back = diagnose(str(out)).to_json()
    assert [f["id"] for f in written["findings"]] == [f["id"] for f in read_back["findings"]]
    assert written["findings"][0]["evidence"] == read_back["findings"][0]["evidence"]


async def test_collect_analyses_logs_the_scanner_process_deflated_ahead(tmp_path: Path) -> None:
    """Logs past SCANNER_MIN_BYTES are redacted and deflated in another process and spliced
    in as gzip members: the analysis sees their inflated text, line numbers intact."""
    root = healthy_node(tmp_path / "host")
    filler = 'time="2024-01-01T00:00:00Z" level=info msg="starting signal loop" namespace=k8s.io\n' * 260_000
    (root / CONTAINERD_LOG).parent.mkdir(parents=True, exist_ok=True)
    (root / CONTAINERD_LOG).write_text(filler + SHIM_MISSING + "\n")
    out = tmp_path / "b.tar.gz"
    result = await run_collection(CollectOptions(host_root=root, output=str(out), since=SINCE_EVERYTHING))
    assert result.diagnosis is not None
    top = result.diagnosis.findings[0]
    assert top.id == "shim-not-found" and top.evidence[0].line == 260_001
    assert read_bundle(out).json("analysis/findings.json")["findings"][0]["evidence"][0]["line"] == 260_001


async def test_a_truncated_bundle_is_an_input_error_naming_the_member(tmp_path: Path) -> None:
    bundle = tmp_path / "b.tar"
    await run_collection(
        CollectOptions(
            host_root=failing_node(tmp_path / "host"), output=str(bundle), compression="none", since=SINCE_EVERYTHING
        )
    )
    cut = tmp_path / "cut.tar"
    data = bundle.read_bytes()
    marker = data.index(b"ctr: failed to start shim")  # inside the log member's data
    cut.write_bytes(data[: marker + 10])
    proc = kata_debug("diagnose", str(cut))
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "damaged bundle" in err and "containerd.log" in err and "Traceback" not in err


def test_the_top_findings_under_collect_keep_bracketed_ids_and_wrap_under_their_finding() -> None:
    """A sandbox id is node data: printed as `[sb-1]`, never swallowed as rich markup; every
    wrapped line stays indented under its finding at any width, and URLs are never split."""
    import io

    from rich.console import Console

    from kata_debug.analyze.base import Evidence, Finding
    from kata_debug.analyze.diagnose import Diagnosis
    from kata_debug.cli.diagnose import print_top_findings

    url = "https://github.com/kata-containers/kata-containers/blob/main/docs/install/README.md"
    finding = Finding(
        id="kvm-unavailable",
        severity="error",
        title="/dev/kvm is missing or unusable: the hypervisor cannot create a VM",
        explanation="...",
        fix=f"Enable VT-x in the firmware and load kvm_intel. Refs: {url}",
        evidence=[Evidence("shim-logs/journal/journal.log", 3, "Could not access KVM kernel module")],
        sandbox="sb-1",
    )
    out = io.StringIO()
    console = Console(file=out, width=40, force_terminal=False)
    print_top_findings(Diagnosis("b.tar.zst", False, ["n1"], [finding], []), "b.tar.zst", console)
    lines = out.getvalue().splitlines()
    first = next(i for i, line in enumerate(lines) if "kvm-unavailable" in line)
    assert lines[first].startswith("  error kvm-unavailable [sb-1]: ")
    assert all(line.startswith("  ") for line in lines[first:])
    assert f"    {url}" in lines and all(len(line) <= 40 for line in lines[first:] if url not in line)
