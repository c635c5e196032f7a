"""An OOM kill explains a sandbox failure only when it came shortly before it.

The kernel log (syslog file, year-less wall clock in the node's zone) and containerd's log
(RFC 3339 UTC) are lined up in time: a kill of the VM within `OOM_WINDOW` before the
runtime's failure is one finding with evidence from both; a kill after the failure, or hours
before it, rules nothing out (kata-containers#7470 lines, re-stamped).
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from kata_debug.analyze.diagnose import Diagnosis
from kata_debug.analyze.vm_start import OOM_WINDOW
from tests.diagnose_nodes import CONTAINERD_LOG, add_log, collect_and_diagnose, healthy_node

SID = "50fa1d953317941d87bf1ee1e0b3a278d8f0c0f882aa80ed57508fbce4956822"
#: The node is in Asia/Kolkata (UTC+5:30, no daylight saving time, so the offset the
#: collector records holds for any day). Syslog stamps carry no year: the incident is put two days before the test runs (a fixed
#: date would be read as next year's once the test runs after its anniversary).
DAY = (datetime.now(UTC) - timedelta(days=2)).replace(hour=10, minute=0, second=0, microsecond=0)


def node_clock(utc: datetime, zone: str = "Asia/Kolkata") -> str:
    """`Nov 28 11:00:00`: how rsyslog stamps a UTC instant on a node in `zone`."""
    return utc.astimezone(ZoneInfo(zone)).strftime("%b %e %H:%M:%S")


def utc(seconds: int) -> str:
    """An RFC 3339 stamp `seconds` after the incident's 10:00:00Z."""
    return (DAY + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")


KILL_AT_NODE_CLOCK = node_clock(DAY)


def _kill(clock: str, comm: str = "qemu-system-x86") -> list[str]:
    return [
        f"{clock} node1 kernel: [40743.903374] oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=cri-containerd-{SID}.scope,mems_allowed=0,oom_memcg=/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pode682fb95.slice,task_memcg=/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pode682fb95.slice/cri-containerd-{SID}.scope,task={comm},pid=1162211,uid=0",
        f"{clock} node1 kernel: [40743.903412] Memory cgroup out of memory: Killed process 1162211 ({comm}) total-vm:2804836kB, anon-rss:20456kB, file-rss:61968kB, shmem-rss:100848kB, UID:0 pgtables:692kB oom_score_adj:-999",
    ]


def _dial_failure(utc: str) -> str:
    return (
        f'time="{utc}" level=error msg="RunPodSandbox for &PodSandboxMetadata{{Name:web,Uid:1,Namespace:default,'
        'Attempt:0,} failed, error" error="failed to create containerd task: failed to create shim task: Failed to '
        f'Check if grpc server is working: ttrpc: closed: unknown" sandbox={SID}'
    )


async def _diagnose(tmp: Path, kill_clock: str, failure_utc: str, *, zone: str | None = "Asia/Kolkata") -> Diagnosis:
    root = healthy_node(tmp / "host")
    if zone:
        shutil.copy(f"/usr/share/zoneinfo/{zone}", root / "etc/localtime")
    add_log(root, "var/log/kern.log", *_kill(kill_clock))
    add_log(root, CONTAINERD_LOG, _dial_failure(failure_utc))
    d, _ = await collect_and_diagnose(root, tmp)
    return d


def _by_id(d: Diagnosis) -> dict[str, object]:
    return {f.id: f for f in d.findings}


async def test_kill_shortly_before_the_failure_explains_it_in_one_finding(tmp_path: Path) -> None:
    d = await _diagnose(tmp_path, KILL_AT_NODE_CLOCK, utc(12))
    top = d.findings[0]
    assert (top.id, top.severity, top.sandbox) == ("vm-oom-killed", "error", SID)
    paths = {e.path.rsplit("/", 1)[-1] for e in top.evidence if e.line is not None}
    assert {"kern.log", "containerd.log"} <= paths  # evidence from both logs
    assert "12 s before the runtime's failure" in top.explanation
    assert "not agent-unreachable" in top.explanation
    agent = next(f for f in d.findings if f.id == "agent-unreachable")
    assert agent.severity == "info" and "vm-oom-killed" in agent.explanation


async def test_the_node_zone_decides_the_pairing(tmp_path: Path) -> None:
    """The same kernel line read on a UTC node is 15:30:00Z, 5.5 h after the failure."""
    d = await _diagnose(tmp_path, KILL_AT_NODE_CLOCK, utc(12), zone=None)
    assert (d.findings[0].id, d.findings[0].severity) == ("agent-unreachable", "error")
    oom = _by_id(d)["vm-oom-killed"]
    assert "5.5 h after" in oom.explanation  # type: ignore[attr-defined]


async def test_kill_after_the_failure_does_not_explain_it(tmp_path: Path) -> None:
    d = await _diagnose(tmp_path, KILL_AT_NODE_CLOCK, utc(-10))
    found = _by_id(d)
    assert d.findings[0].id == "agent-unreachable" and d.findings[0].severity == "error"
    oom = found["vm-oom-killed"]
    assert oom.severity == "warning" and "10 s after the runtime's failure" in oom.explanation  # type: ignore[attr-defined]


async def test_kill_hours_earlier_does_not_explain_it(tmp_path: Path) -> None:
    d = await _diagnose(tmp_path, node_clock(DAY - timedelta(hours=3)), utc(12))
    found = _by_id(d)
    top = d.findings[0]
    assert (top.id, top.severity) == ("agent-unreachable", "error")
    assert "ruled out by time" in top.explanation
    oom = found["vm-oom-killed"]
    assert oom.severity == "warning" and "3.0 h before" in oom.explanation  # type: ignore[attr-defined]


async def test_kill_just_past_the_window_does_not_explain_it(tmp_path: Path) -> None:
    d = await _diagnose(tmp_path, KILL_AT_NODE_CLOCK, utc(int(OOM_WINDOW.total_seconds()) + 5))
    assert d.findings[0].id == "agent-unreachable" and d.findings[0].severity == "error"


async def test_virtiofsd_killed_shortly_before_the_vhost_user_failure(tmp_path: Path) -> None:
    root = healthy_node(tmp_path / "host")
    add_log(root, "var/log/kern.log", *_kill(node_clock(DAY, "UTC"), comm="virtiofsd"))
    add_log(
        root,
        CONTAINERD_LOG,
        f'time="{utc(3)}" level=error msg="qemu-system-x86_64: -chardev socket,id=char-1,path=/run/vc/vm/'
        f"{SID}/vhost-fs.sock: Failed to connect to '/run/vc/vm/{SID}/vhost-fs.sock': Connection refused\" sandbox={SID}",
    )
    d, _ = await collect_and_diagnose(root, tmp_path)
    assert (d.findings[0].id, d.findings[0].severity) == ("vm-oom-killed", "error")
    assert "3 s before" in d.findings[0].explanation
    fs = next(f for f in d.findings if f.id == "virtiofsd-failed")
    assert fs.severity == "info"
