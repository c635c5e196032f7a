"""Collectors against the real containerd and journald running on this machine."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bundles import read_bundle
from tests.conftest import kata_debug

NS = "kata-debug-test"


@pytest.fixture
def container(containerd: str, rootfs: Path) -> Iterator[str]:
    """A real runc container with limits, a secret env value and CRI annotations."""
    cid = f"kd-{uuid.uuid4().hex[:10]}"
    subprocess.run(
        [
            containerd,
            "-n",
            NS,
            "run",
            "-d",
            "--memory-limit",
            str(256 * 2**20),
            "--cpus",
            "1.5",
            "--env",
            "DB_PASSWORD=s3cret-value",
            "--env",
            "MODE=test",
            "--annotation",
            "io.kubernetes.cri.container-type=sandbox",
            "--annotation",
            f"io.kubernetes.cri.sandbox-id={cid}",
            "--annotation",
            "io.kubernetes.cri.sandbox-name=web-0",
            "--annotation",
            "io.kubernetes.cri.sandbox-namespace=shop",
            "--annotation",
            "io.kubernetes.cri.sandbox-uid=0b5ff2d4-1111-4222-8333-444455556666",
            "--rootfs",
            str(rootfs),
            cid,
            "/bin/sleep",
            "300",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    try:
        yield cid
    finally:
        subprocess.run([containerd, "-n", NS, "task", "kill", "-s", "KILL", cid], capture_output=True, timeout=30)
        for _ in range(50):
            if (
                subprocess.run([containerd, "-n", NS, "task", "rm", cid], capture_output=True, timeout=30).returncode
                == 0
            ):
                break
            subprocess.run(["sleep", "0.1"])
        subprocess.run([containerd, "-n", NS, "container", "rm", cid], capture_output=True, timeout=30)


def test_oci_specs_reports_a_real_containers_limits_and_redacts_its_env(container: str, tmp_path: Path) -> None:
    out = tmp_path / "b.tar.gz"
    res = kata_debug("collect", "--output", str(out), "-c", "oci-specs", "--all-runtimes")
    assert res.returncode == 0, res.stderr
    bundle = read_bundle(out)
    entry = next(e for e in bundle.json("oci-specs/index.json")["entries"] if e["id"] == container)
    assert entry["engine"] == "containerd" and entry["namespace"] == NS
    assert entry["runtime"] == "io.containerd.runc.v2" and entry["kata"] is False
    assert entry["type"] == "sandbox" and entry["sandbox_id"] == container
    assert (entry["pod_name"], entry["pod_namespace"]) == ("web-0", "shop")
    assert entry["pod_uid"] == "0b5ff2d4-1111-4222-8333-444455556666"
    res_ = entry["resources"]
    assert (res_["cpu_quota"], res_["cpu_period"], res_["memory_limit"]) == (150000, 100000, 256 * 2**20)
    spec = bundle.json(f"oci-specs/containerd/{NS}/{container}/config.json")
    assert "DB_PASSWORD=***" in spec["process"]["env"] and "MODE=***" in spec["process"]["env"]
    assert b"s3cret-value" not in b"".join(bundle.members.values())


def test_runc_containers_are_not_collected_by_default(container: str, tmp_path: Path) -> None:
    out = tmp_path / "b.tar.gz"
    res = kata_debug("collect", "--output", str(out), "-c", "oci-specs")
    assert res.returncode == 0, res.stderr
    index = read_bundle(out).json("oci-specs/index.json")
    assert container not in {e["id"] for e in index["entries"]}
    assert index["non_kata_tasks_skipped"].get("io.containerd.runc.v2", 0) >= 1


def test_shim_logs_from_the_journal_are_stored_once_indexed_per_sandbox_and_redacted(
    journald: None, tmp_path: Path
) -> None:
    sid = uuid.uuid4().hex
    other = uuid.uuid4().hex
    lines = [
        f'time="2026-11-28T00:00:01Z" level=info msg="starting sandbox" pid=42 sandbox={sid} source=virtcontainers subsystem=sandbox',
        f'time="2026-11-28T00:00:02Z" level=debug msg="reading guest console" pid=42 sandbox={sid} source=virtcontainers subsystem=sandbox vmconsole="{{\\"msg\\":\\"agent started\\",\\"level\\":\\"INFO\\",\\"name\\":\\"kata-agent\\"}}"',
        f'time="2026-11-28T00:00:03Z" level=error msg="pull failed: Authorization: Bearer tok-{sid[:8]}" pid=42 sandbox={sid} source=virtcontainers',
        f'time="2026-11-28T00:00:04Z" level=info msg="other pod" pid=43 sandbox={other} source=virtcontainers',
    ]
    subprocess.run(["systemd-cat", "-t", "kata"], input="\n".join(lines).encode() + b"\n", check=True, timeout=10)
    out = tmp_path / "b.tar.zst"
    for _ in range(20):  # journald indexes asynchronously
        res = kata_debug("collect", "--output", str(out), "-c", "shim-logs", "--since", "10m")
        assert res.returncode == 0, res.stderr
        bundle = read_bundle(out)
        if other in bundle.json("shim-logs/sandboxes.json")["sandboxes"]:
            break
    assert out.read_bytes()[:4] == b"\x28\xb5\x2f\xfd", "zstd by default"
    journal = bundle.members["shim-logs/journal/journal.log"].decode().split("\n")
    index = bundle.json("shim-logs/sandboxes.json")["sandboxes"]
    at = index[sid]["shim-logs/journal/journal.log"]
    assert at["lines"] == 3 and at["last_line"] - at["first_line"] == 2
    mine = journal[at["first_line"] - 1 : at["last_line"]]
    assert "starting sandbox" in mine[0] and "reading guest console" in mine[1] and "pull failed" in mine[2]
    assert " kata[" in mine[0], "journalctl's own line: time, host, identifier[pid]"
    assert "other pod" in journal[index[other]["shim-logs/journal/journal.log"]["first_line"] - 1]
    raw = b"".join(bundle.members.values())
    assert f"tok-{sid[:8]}".encode() not in raw
    assert not any(m.endswith(".parsed.jsonl") or "/sandboxes/" in m for m in bundle.members), "each line stored once"
    summary = bundle.json("shim-logs/summary.json")
    assert sid in summary["sandboxes"]
    assert any(s["source"].startswith("journal:kata,") and s["lines"] >= 4 for s in summary["sources"])


def test_shim_logs_read_the_journal_of_the_host_root_not_the_collectors_own(journald: None, tmp_path: Path) -> None:
    """In the DaemonSet the node's journal is under /host; journalctl must read that one."""
    sid = uuid.uuid4().hex
    line = (
        f'time="2026-11-28T00:00:01Z" level=warning msg="vcpu hotplug failed" pid=7 sandbox={sid} source=virtcontainers'
    )
    subprocess.run(["systemd-cat", "-t", "kata"], input=line.encode() + b"\n", check=True, timeout=10)
    subprocess.run(["journalctl", "--sync"], capture_output=True, timeout=30)
    root = tmp_path / "host"
    journal_src = next(d for d in (Path("/run/log/journal"), Path("/var/log/journal")) if any(d.glob("*/*.journal")))
    for f in journal_src.glob("*/*.journal"):
        dest = root / "var/log/journal" / f.parent.name / f.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(f.read_bytes())
    later = uuid.uuid4().hex  # logged on this machine after the copy: not on the "node"
    subprocess.run(["systemd-cat", "-t", "kata"], input=f"msg=late sandbox={later}\n".encode(), check=True, timeout=10)
    subprocess.run(["journalctl", "--sync"], capture_output=True, timeout=30)
    res = kata_debug(
        "collect", "--host-root", str(root), "--output", str(tmp_path / "b.tgz"), "-c", "shim-logs", "--since", "10m"
    )
    assert res.returncode == 0, res.stderr
    bundle = read_bundle(tmp_path / "b.tgz")
    journal = bundle.members["shim-logs/journal/journal.log"].decode()
    assert "vcpu hotplug failed" in journal and sid in bundle.json("shim-logs/sandboxes.json")["sandboxes"]
    assert later not in journal
    assert bundle.json("shim-logs/summary.json")["journal_dirs"] == ["/var/log/journal"]
