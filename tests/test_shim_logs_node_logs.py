"""shim-logs reads the node's own logs: kern.log, syslog/messages, kubelet.log and audit AVCs.

Each within `--since`, syslog and klog stamps read on the node's wall clock (its
`/etc/localtime`, under the host root), syslog filtered to the kernel and the runtimes'
identifiers, audit to AVC events with their command line decoded and redacted; each stored
once under `files/<node path>` and indexed per sandbox like the runtimes' logs.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from kata_debug.collect.runner import CollectOptions, run_collection
from kata_debug.logs.nodelogs import AuditEvents, decode_proctitle
from tests.bundles import Bundle, read_bundle
from tests.hostroots import kata_node

LA = "America/Los_Angeles"  # far from UTC (and from the collector's own zone): a zone mix-up moves lines hours
SID = "5a0d2b0c4f3e4d2a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a"


def _node(tmp_path: Path, zone: str | None = LA) -> Path:
    """A Kata node whose /etc/localtime links to `zone` inside the host root (as on a real node)."""
    root = kata_node(tmp_path / "host")
    (root / "etc").mkdir(exist_ok=True)
    (root / "var/log/audit").mkdir(parents=True)
    if zone is not None:
        target = root / "usr/share/zoneinfo" / zone
        target.parent.mkdir(parents=True)
        shutil.copy(Path("/usr/share/zoneinfo") / zone, target)
        (root / "etc/localtime").symlink_to(f"/usr/share/zoneinfo/{zone}")
    return root


def _wall(ago: timedelta, zone: str = LA) -> datetime:
    """The node's wall clock `ago` before now."""
    return (datetime.now(UTC) - ago).astimezone(ZoneInfo(zone))


def _syslog(ago: timedelta, rest: str, zone: str = LA) -> str:
    t = _wall(ago, zone)
    return f"{t:%b} {t.day:2d} {t:%H:%M:%S} node1 {rest}\n"


def _klog(ago: timedelta, rest: str) -> str:
    t = _wall(ago)
    return f"I{t:%m%d %H:%M:%S}.{t.microsecond:06d}    2345 {rest}\n"


async def _collect(root: Path, out: Path, since: timedelta = timedelta(hours=3)) -> Bundle:
    await run_collection(CollectOptions(host_root=root, output=str(out), collectors=["shim-logs"], since=since))
    return read_bundle(out)


async def test_kern_log_is_read_on_the_nodes_wall_clock_within_since(tmp_path: Path) -> None:
    root = _node(tmp_path)
    (root / "var/log/kern.log").write_text(
        _syslog(timedelta(hours=5), "kernel: [  1.0] before the window")
        + _syslog(timedelta(hours=2), "kernel: [ 99.0] kvm: vcpu0 unhandled rdmsr")
        + _syslog(timedelta(minutes=1), "kernel: [120.0] vhost-vsock: probe failed")
    )
    bundle = await _collect(root, tmp_path / "b.tgz")
    kern = bundle.members["shim-logs/files/var/log/kern.log"].decode()
    # Read as UTC, Los Angeles' wall clock is 7-8 hours in the past: all three lines would be dropped.
    assert "unhandled rdmsr" in kern and "probe failed" in kern and "before the window" not in kern
    summary = bundle.json("shim-logs/summary.json")
    assert summary["node_time_zone"] == LA
    assert "shim-logs/files/var/log/kern.log" not in bundle.collector("shim-logs")["truncated"], "not asked for"


async def test_syslog_and_messages_keep_only_the_kernels_and_our_identifiers_lines(tmp_path: Path) -> None:
    root = _node(tmp_path)
    ago = timedelta(minutes=30)
    (root / "var/log/syslog").write_text(
        _syslog(timedelta(hours=6), "containerd[5]: too old")
        + _syslog(ago, "sshd[812]: Accepted publickey for admin from 10.0.0.9")
        + _syslog(ago, f'kata[4242]: level=error msg="hotplug failed" sandbox={SID}')
        + _syslog(ago, "kernel: [ 12.5] kvm: disabled by bios")
        + _syslog(ago, "katamaran[7]: a look-alike name")
        + _syslog(ago, "CRON[99]: (root) CMD (backup)")
        + _syslog(ago, "kubelet[3]: E1128 pod_workers.go:1300] Error syncing pod")
    )
    stamp = (datetime.now(UTC) - ago).astimezone(ZoneInfo(LA)).isoformat()
    (root / "var/log/messages").write_text(
        f'{stamp} node1 containerd[5]: level=info msg="shim started" sandbox={SID}\n'
        f"{stamp} node1 NetworkManager[6]: dhcp4 lease renewed\n"
        f'{stamp} node1 crio[8]: level=warn msg="x"\n'
    )
    bundle = await _collect(root, tmp_path / "b.tgz")
    syslog = bundle.members["shim-logs/files/var/log/syslog"].decode().splitlines()
    assert [line.split(" node1 ", 1)[1].split(":")[0] for line in syslog] == ["kata[4242]", "kernel", "kubelet[3]"]
    messages = bundle.members["shim-logs/files/var/log/messages"].decode()
    assert "shim started" in messages and "crio[8]" in messages and "NetworkManager" not in messages
    at = bundle.json("shim-logs/sandboxes.json")["sandboxes"][SID]
    assert at["shim-logs/files/var/log/syslog"] == {"lines": 1, "first_line": 1, "last_line": 1}
    assert at["shim-logs/files/var/log/messages"] == {"lines": 1, "first_line": 1, "last_line": 1}


async def test_a_syslog_with_nothing_of_ours_is_not_stored(tmp_path: Path) -> None:
    root = _node(tmp_path)
    (root / "var/log/syslog").write_text(_syslog(timedelta(minutes=5), "sshd[1]: session opened"))
    bundle = await _collect(root, tmp_path / "b.tgz")
    assert "shim-logs/files/var/log/syslog" not in bundle.members
    assert bundle.collector("shim-logs")["status"] == "ok"


async def test_kubelet_log_klog_stamps_are_the_nodes_wall_clock(tmp_path: Path) -> None:
    root = _node(tmp_path)
    (root / "var/log/kubelet.log").write_text(
        _klog(timedelta(hours=4), "kubelet.go:100] started long ago")
        + _klog(timedelta(minutes=20), f'kuberuntime_sandbox.go:72] "Failed to create sandbox" podSandboxID="{SID}"')
        + "\tgoroutine 1 [running]: continuation of the line above\n"
    )
    bundle = await _collect(root, tmp_path / "b.tgz")
    kubelet = bundle.members["shim-logs/files/var/log/kubelet.log"].decode()
    assert kubelet.startswith("I") and "Failed to create sandbox" in kubelet and "long ago" not in kubelet
    assert kubelet.endswith("continuation of the line above\n")


def _hex(argv: list[str]) -> str:
    return "\0".join(argv).encode().hex().upper()


async def test_audit_keeps_avc_events_whole_with_the_command_line_decoded_and_redacted(tmp_path: Path) -> None:
    root = _node(tmp_path, zone=None)  # audit stamps are epoch seconds: no zone needed
    now = datetime.now(UTC).timestamp()
    secret = "hunter2-in-argv"
    argv = ["/usr/bin/qemu-system-x86_64", "-name", f"sandbox-{SID}", "--password", secret]
    old, avc, login = f"{now - 4 * 3600:.3f}:100", f"{now - 60:.3f}:4567", f"{now - 30:.3f}:4568"
    (root / "var/log/audit/audit.log").write_text(
        f'type=AVC msg=audit({old}): avc:  denied  {{ read }} for pid=1 comm="old"\n'
        f"type=EOE msg=audit({old}): \n"
        f'type=AVC msg=audit({avc}): avc:  denied  {{ open }} for  pid=4242 comm="qemu-system-x86" '
        f'path="/dev/vhost-vsock" scontext=system_u:system_r:container_t:s0 tclass=chr_file permissive=0\n'
        f'type=SYSCALL msg=audit({avc}): arch=c000003e syscall=257 success=no exit=-13 comm="qemu-system-x86"\n'
        f"type=USER_LOGIN msg=audit({login}): pid=9 uid=0 msg='op=login acct=\"root\" res=success'\n"
        f"type=PROCTITLE msg=audit({avc}): proctitle={_hex(argv)}\n"
        f"type=EOE msg=audit({avc}): \n"
        f"type=EOE msg=audit({login}): \n"
    )
    bundle = await _collect(root, tmp_path / "b.tgz")
    audit = bundle.members["shim-logs/files/var/log/audit/audit.log"].decode()
    lines = audit.splitlines()
    assert [line.split(" ", 1)[0] for line in lines] == ["type=AVC", "type=SYSCALL", "type=PROCTITLE"]
    assert "denied  { read }" not in audit, "older than --since"
    assert f"proctitle=/usr/bin/qemu-system-x86_64 -name sandbox-{SID} --password" in lines[2]
    assert secret not in audit and secret.encode().hex().upper() not in audit, "masked, not shipped as hex"
    assert bundle.json("shim-logs/summary.json")["node_time_zone"] == "UTC (no /etc/localtime)"


def test_interleaved_audit_events_are_each_kept_or_dropped_whole() -> None:
    events = AuditEvents()
    out = events.feed(
        [
            b"type=SYSCALL msg=audit(1.0:1): syscall=2",
            b"type=SYSCALL msg=audit(1.0:2): syscall=3",
            b"type=AVC msg=audit(1.0:2): avc: denied",
            b"type=CWD msg=audit(1.0:1): cwd=/",
            b"type=EOE msg=audit(1.0:1): ",
        ]
    )
    assert out == []
    assert events.flush() == [b"type=SYSCALL msg=audit(1.0:2): syscall=3", b"type=AVC msg=audit(1.0:2): avc: denied"]


@pytest.mark.parametrize(
    ("record", "decoded"),
    [
        (f"proctitle={_hex(['sh', '-c', 'x'])}", "proctitle=sh -c x"),
        ('proctitle="bash"', 'proctitle="bash"'),  # printable without spaces: auditd writes it quoted
        ("proctitle=" + b"a\nb".hex().upper(), "proctitle=a\\x0ab"),  # stays one line
    ],
)
def test_proctitle_is_decoded_to_one_line(record: str, decoded: str) -> None:
    assert decode_proctitle(b"type=PROCTITLE msg=audit(1.0:1): " + record.encode()).decode().endswith(decoded)
