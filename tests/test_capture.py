"""Capture on failure: the node agent keeps a failed sandbox's evidence before the runtime removes it.

Real journald (lines written with `systemd-cat -t kata`), real log files rotated mid-run,
and a synthetic host root whose sandbox state the test deletes, as the runtime would.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from kata_debug.agent.capture import CaptureConfig, CaptureService
from kata_debug.agent.ring import Rate, RateLimit, enforce_size
from kata_debug.agent.watch import FileFollower, StateWatcher, failure_in_line, follow_journal
from kata_debug.collectors.captures import list_captures
from kata_debug.errors import UsageError
from kata_debug.node.hostroot import HostRoot
from tests.bundles import read_bundle
from tests.hostroots import add_task, oci_spec
from tests.test_node_agent import start_agent, vsock_port


def sandbox_only(root: Path, sid: str) -> None:
    """A Kata sandbox starting: its task bundle and state, no app container yet."""
    add_task(root, "k8s.io", sid, oci_spec(ctype="sandbox", sandbox_id=sid, pod="crash-0", env=["TOKEN=s3cr3t"]))
    sbs = root / "run/vc/sbs" / sid
    sbs.mkdir(parents=True)
    (sbs / "persist.json").write_text(json.dumps({"SandboxContainer": sid, "HypervisorState": {"Pid": 999999}}))
    (root / "run/vc/vm" / sid).mkdir(parents=True)


def runtime_removes(root: Path, sid: str) -> None:
    shutil.rmtree(root / "run/vc/sbs" / sid, ignore_errors=True)
    shutil.rmtree(root / "run/vc/vm" / sid, ignore_errors=True)
    shutil.rmtree(root / "run/containerd/io.containerd.runtime.v2.task/k8s.io" / sid, ignore_errors=True)


def with_node_journal(root: Path) -> None:
    """The node's journal inside the synthetic root, as /host/run/log/journal is in the DaemonSet."""
    for d in ("run/log/journal", "var/log/journal"):
        if Path("/" + d).is_dir() and any(Path("/" + d).iterdir()):
            (root / d).parent.mkdir(parents=True, exist_ok=True)
            (root / d).symlink_to("/" + d)


async def stop(runner: asyncio.Task[None]) -> None:
    """Cancel a running service and collect what it dropped while this loop still runs
    (a subprocess transport finalised after the loop closed warns at a later test)."""
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    gc.collect()
    await asyncio.sleep(0)


def sid_() -> str:
    return "sb" + uuid.uuid4().hex[:20]


def service(root: Path, **kw: Any) -> CaptureService:
    cfg = CaptureConfig(**{"after": 1.0, "poll_interval": 0.2, **kw})
    spool = root / "var/lib/kata-debug/traces"
    spool.mkdir(parents=True, exist_ok=True)
    return CaptureService(HostRoot.at(root), spool, "kata-node-1", cfg)


async def wait_captures(svc: CaptureService, n: int, timeout: float = 30, sandbox: str | None = None) -> list[Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        idle = not svc._inflight
        found = await asyncio.to_thread(list_captures, svc.dir)
        mine = [r for r in found if sandbox is None or r.sandbox == sandbox]
        if len(mine) >= n and idle:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"{n} capture(s) expected, found {await asyncio.to_thread(list_captures, svc.dir)}")


def test_the_vanish_rule_flags_a_sandbox_gone_before_any_app_container_and_not_a_job_that_ran(tmp_path: Path) -> None:
    root = tmp_path / "node"
    failed, job = "sbfailed0001", "sbjobran0002"
    sandbox_only(root, failed)
    sandbox_only(root, job)
    add_task(root, "k8s.io", "ctrjob0002", oci_spec(ctype="container", sandbox_id=job))
    w = StateWatcher(HostRoot.at(root), window=120)
    assert w.poll() == []
    assert w.copy_of(failed) is not None and "/run/vc/sbs/sbfailed0001/persist.json" in w.copy_of(failed).files  # type: ignore[union-attr]
    runtime_removes(root, failed)
    runtime_removes(root, job)
    shutil.rmtree(root / "run/containerd/io.containerd.runtime.v2.task/k8s.io/ctrjob0002")
    gone = w.poll()
    assert [(f.reason, f.sandbox) for f in gone] == [("vanished", failed)]
    assert "/run/vc/sbs/sbfailed0001/persist.json" in w.copy_of(failed).files  # type: ignore[union-attr]
    assert any(d.endswith(failed) for d in w.specs_of(failed)), "the spec outlives its task dir until captured"
    w.forget(failed)
    assert w.copy_of(failed) is None and w.specs_of(failed) == {}


def test_a_sandbox_older_than_the_window_is_no_failed_start(tmp_path: Path) -> None:
    root = tmp_path / "node"
    sandbox_only(root, "sbold0000001")
    clock = [time.time()]
    w = StateWatcher(HostRoot.at(root), window=10, clock=lambda: clock[0])
    w.poll()
    clock[0] += 11
    w.poll()
    assert w.copy_of("sbold0000001").files == {}  # type: ignore[union-attr]
    runtime_removes(root, "sbold0000001")
    assert w.poll() == []


def test_error_lines_name_the_sandbox_or_one_of_its_containers_and_other_levels_are_not_failures() -> None:
    now = datetime.now(UTC)
    known = {"sbA00001": "sbA00001", "ctrB0001": "sbA00001"}
    f = failure_in_line('level=error msg="create VM failed" sandbox=sbA00001', now, known)
    assert f is not None and (f.reason, f.sandbox) == ("error-line", "sbA00001")
    assert failure_in_line('level=info msg="ok" sandbox=sbA00001', now, known) is None
    via_container = failure_in_line('level=error msg="start failed" container=ctrB0001', now, known)
    assert via_container is not None and via_container.sandbox == "sbA00001"
    assert failure_in_line('{"level":"error","msg":"x","sandbox":"sbZ"}', now, {}) is not None
    assert failure_in_line("plain text naming ctrB0001", now, known, priority=3) is not None
    assert failure_in_line("plain text naming ctrB0001", now, known, priority=6) is None
    assert failure_in_line('level=error msg="no sandbox here"', now, known) is None


async def test_a_journalctl_that_ends_on_its_own_is_reported_with_its_own_exit_code(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A host root without a journal: the real journalctl exits 1 at once. The agent says so
    with that exit code; it never kills the ended process (kill() polls, and can reap it under
    asyncio's child watcher, which then logs "Unknown child process" and reports 255)."""
    if shutil.which("journalctl") is None:
        pytest.skip("journalctl not installed")
    for _ in range(20):  # the race is a matter of microseconds: give it many chances
        caplog.clear()
        assert [e async for e in follow_journal(tmp_path)] == []
        messages = [r.getMessage() for r in caplog.records]
        assert not any("Unknown child process" in m for m in messages), messages
        assert any("journalctl --follow ended (exit 1)" in m for m in messages), messages


def test_rate_and_size_bounds(tmp_path: Path) -> None:
    assert Rate.parse("6/10m") == Rate(6, 600.0) and Rate.parse("1/s") == Rate(1, 1.0)
    with pytest.raises(UsageError, match="--capture-rate 'lots'"):
        Rate.parse("lots")
    limit = RateLimit(Rate(2, 10))
    assert [limit.allow(t) for t in (0, 1, 2, 9.9, 10.5)] == [True, True, False, False, True]
    assert limit.refused == 2
    for i in range(4):
        (tmp_path / f"2026010{i}T000000Z-sb{i}.tar.gz").write_bytes(b"x" * 1000)
        (tmp_path / f"2026010{i}T000000Z-sb{i}.json").write_text("{}")
    removed = enforce_size(tmp_path, 2100)
    assert removed == ["20260100T000000Z-sb0.tar.gz", "20260101T000000Z-sb1.tar.gz"]
    assert sorted(p.name for p in tmp_path.iterdir())[0] == "20260102T000000Z-sb2.json"


def test_log_files_are_followed_from_now_across_rotation(tmp_path: Path) -> None:
    root = tmp_path / "node"
    log = root / "var/log/containerd.log"
    log.parent.mkdir(parents=True)
    log.write_text("old line before the agent\n")
    follower = FileFollower(HostRoot.at(root), ["/var/log/containerd.log"])
    with open(log, "a") as fh:
        fh.write("one\n")
    assert follower.poll() == ["one"]
    with open(log, "a") as fh:
        fh.write("two before rotation\n")
    os.rename(log, str(log) + ".1")
    log.write_text("three after rotation\n")
    assert follower.poll() == ["two before rotation", "three after rotation"]
    follower.close()


@pytest.mark.asyncio
async def test_an_error_line_in_the_journal_captures_the_state_the_runtime_removed_a_second_later(
    journald: None, tmp_path: Path
) -> None:
    root = tmp_path / "node"
    sid = sid_()
    sandbox_only(root, sid)
    with_node_journal(root)
    svc = service(root)
    runner = asyncio.create_task(svc.run())
    try:
        await asyncio.sleep(1.0)  # the follower starts at "now"
        add_task(root, "k8s.io", "ctr" + sid[2:], oci_spec(ctype="container", sandbox_id=sid))  # not a vanish
        await asyncio.sleep(0.5)
        lines = [
            f'level=info msg="starting VM" sandbox={sid}',
            f'level=error msg="failed to create sandbox: hypervisor exited" sandbox={sid} TOKEN=s3cr3t',
        ]
        subprocess.run(["systemd-cat", "-t", "kata"], input="\n".join(lines).encode() + b"\n", check=True)
        await asyncio.sleep(1.0)
        runtime_removes(root, sid)
        found = await wait_captures(svc, 1, sandbox=sid)
    finally:
        await stop(runner)
    rec = next(r for r in found if r.sandbox == sid)  # the journal is shared: others may log errors too
    assert (rec.reason, rec.pod) == ("error-line", "default/crash-0")
    bundle = read_bundle(svc.dir / rec.id)
    trig = bundle.manifest["trigger"]
    assert trig["sandbox"] == sid and "hypervisor exited" in trig["line"]
    assert f"sandbox-state/run/vc/sbs/{sid}/persist.json" in bundle.members
    spec = next(v for k, v in bundle.members.items() if k.endswith(f"k8s.io/{sid}/config.json"))
    assert b"s3cr3t" not in spec, "the capture is redacted like any bundle"
    journal = bundle.members["logs/journal.log"].decode()
    assert "starting VM" in journal and "hypervisor exited" in journal and "s3cr3t" not in journal
    assert {c["name"] for c in bundle.manifest["collectors"]} >= {"sandbox-state", "logs", "host", "kata-config"}


@pytest.mark.asyncio
async def test_the_vanish_rule_captures_without_any_error_line_and_only_once_per_sandbox(tmp_path: Path) -> None:
    root = tmp_path / "node"
    sid = sid_()
    sandbox_only(root, sid)
    svc = service(root)
    runner = asyncio.create_task(svc.run())
    try:
        await asyncio.sleep(1.0)
        runtime_removes(root, sid)
        found = await wait_captures(svc, 1)
        svc.trigger(failure_in_line(f"level=error sandbox={sid}", datetime.now(UTC), {}))  # type: ignore[arg-type]
        await asyncio.sleep(0.3)
    finally:
        await stop(runner)
    assert len(found) == 1 and found[0].reason == "vanished" and svc.counters.duplicate == 1
    bundle = read_bundle(svc.dir / found[0].id)
    assert f"/run/vc/sbs/{sid}/persist.json" in bundle.manifest["trigger"]["from_copy"]
    assert f"sandbox-state/run/vc/sbs/{sid}/persist.json" in bundle.members
    # A restarted agent knows what it captured: no second capture of the same sandbox.
    again = service(root)
    runner = asyncio.create_task(again.run())
    await asyncio.sleep(0.5)
    again.trigger(failure_in_line(f"level=error sandbox={sid}", datetime.now(UTC), {}))  # type: ignore[arg-type]
    await stop(runner)
    assert again.counters.duplicate == 1 and len(list_captures(again.dir)) == 1


@pytest.mark.asyncio
async def test_a_burst_is_cut_by_the_rate_limit_and_the_rest_counted(tmp_path: Path) -> None:
    root = tmp_path / "node"
    sids = [sid_() for _ in range(5)]
    for sid in sids:
        sandbox_only(root, sid)
    svc = service(root, rate=Rate(2, 600))
    runner = asyncio.create_task(svc.run())
    try:
        await asyncio.sleep(1.0)
        for sid in sids:
            runtime_removes(root, sid)
        await asyncio.sleep(1.0)
        found = await wait_captures(svc, 2)
    finally:
        await stop(runner)
    assert len(found) == 2 and svc.counters.rate_limited == 3 and svc.counters.failures_seen == 5


@pytest.mark.asyncio
async def test_sigterm_mid_capture_leaves_no_capture_and_the_cli_lists_and_exports_finished_ones(
    tmp_path: Path,
) -> None:
    root = tmp_path / "node"
    root.mkdir()
    sid = sid_()
    sandbox_only(root, sid)
    agent = await start_agent(
        root, tmp_path / "state.json", "--capture-after", "30s", "--vsock-port", str(vsock_port())
    )
    captures = root / "var/lib/kata-debug/traces/captures"
    try:
        await agent.ready()
        await asyncio.sleep(2)
        runtime_removes(root, sid)
        deadline = time.monotonic() + 60  # the state file is rewritten every 10 s
        while json.loads((tmp_path / "state.json").read_text())["capture"]["failures_seen"] < 1:
            assert time.monotonic() < deadline, "the vanish was not seen"
            await asyncio.sleep(0.2)
    finally:
        code = await agent.stop()
    assert code == 0, agent.stderr.decode()
    assert os.listdir(captures) == [], "an unfinished capture is removed, never left as one"

    # A finished one, written by an agent that stays up until it is on disk.
    sid2 = sid_()
    sandbox_only(root, sid2)
    agent = await start_agent(root, tmp_path / "state.json", "--capture-after", "0s", "--vsock-port", str(vsock_port()))
    try:
        await agent.ready()
        await asyncio.sleep(2)  # the capture service has had its first look at the node
        runtime_removes(root, sid2)
        deadline = time.monotonic() + 60
        while not list_captures(captures):
            assert time.monotonic() < deadline, "no capture written"
            await asyncio.sleep(0.2)
    finally:
        await agent.stop()
    listing = subprocess.run(
        [sys.executable, "-m", "kata_debug", "captures", "--host-root", str(root)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    capture_id = list_captures(captures)[0].id
    assert capture_id in listing and sid2 in listing and "vanished" in listing and "default/crash-0" in listing
    out = tmp_path / "out.tar.gz"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "kata_debug",
            "captures",
            "export",
            capture_id,
            "-o",
            str(out),
            "--host-root",
            str(root),
        ],
        check=True,
    )
    assert read_bundle(out).manifest["trigger"]["sandbox"] == sid2
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "kata_debug",
            "captures",
            "export",
            "../etc/passwd",
            "-o",
            str(out),
            "--host-root",
            str(root),
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "not a capture ID" in bad.stderr and "Traceback" not in bad.stderr
    # `collect` carries them: the captures collector.
    bundle_path = tmp_path / "b.tar.gz"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "kata_debug",
            "collect",
            "--host-root",
            str(root),
            "-c",
            "captures",
            "-o",
            str(bundle_path),
        ],
        check=True,
        capture_output=True,
    )
    bundle = read_bundle(bundle_path)
    assert f"captures/{capture_id}" in bundle.members
    assert bundle.json("captures/index.json")["captures"][0]["sandbox"] == sid2


@pytest.mark.asyncio
async def test_an_error_line_in_a_log_file_rotated_mid_run_captures_the_sandbox(tmp_path: Path) -> None:
    root = tmp_path / "node"
    sid = sid_()
    sandbox_only(root, sid)
    add_task(root, "k8s.io", "ctr" + sid[2:], oci_spec(ctype="container", sandbox_id=sid))  # no vanish
    log = root / "var/log/containerd.log"
    log.parent.mkdir(parents=True)
    log.write_text(f'level=error msg="before the agent started" sandbox={sid}\n')  # not "now": ignored
    svc = service(root)
    runner = asyncio.create_task(svc.run())
    try:
        await asyncio.sleep(0.6)
        with open(log, "a") as fh:
            fh.write(f'level=info msg="creating sandbox" sandbox={sid}\n')
        os.rename(log, str(log) + ".1")
        log.write_text(f'level=error msg="QMP command failed: vhost-vsock" sandbox={sid}\n')
        await asyncio.sleep(0.5)
        runtime_removes(root, sid)
        found = await wait_captures(svc, 1)
    finally:
        await stop(runner)
    assert found[0].reason == "error-line" and "vhost-vsock" in (found[0].line or "")
    bundle = read_bundle(svc.dir / found[0].id)
    lines = bundle.members["logs/files/var_log_containerd.log"].decode()
    assert "creating sandbox" in lines and "vhost-vsock" in lines
    assert f"sandbox-state/run/vc/sbs/{sid}/persist.json" in bundle.members


def test_a_line_matching_a_diagnose_signature_is_a_failure_at_any_level() -> None:
    from kata_debug.agent.capture import _signatures
    from kata_debug.analyze.base import Signature

    assert _signatures(), "the agent loads the diagnose analyzers' per-line signatures"
    sig = Signature.of("vsock-busy", ["vhost-vsock"], r"vhost-vsock: .*busy")
    now = datetime.now(UTC)
    line = 'level=warning msg="vhost-vsock: device or resource busy" sandbox=sbW0000001'
    f = failure_in_line(line, now, {}, signatures=[sig])
    assert f is not None and (f.reason, f.sandbox) == ("diagnose", "sbW0000001")
    assert failure_in_line(line, now, {}) is None, "without the signature a warning is no failure"
    err = failure_in_line(line.replace("warning", "error"), now, {}, signatures=[sig])
    assert err is not None and err.reason == "error-line"


@pytest.mark.asyncio
async def test_the_capture_names_the_cause_its_own_log_lines_show(tmp_path: Path) -> None:
    """The top finding the agent records comes from the capture's `logs/` too, not only from
    its host facts: a capture is where the failing sandbox's lines are kept."""
    root = tmp_path / "node"
    sid = sid_()
    sandbox_only(root, sid)
    add_task(root, "k8s.io", "ctr" + sid[2:], oci_spec(ctype="container", sandbox_id=sid))  # no vanish
    log = root / "var/log/containerd.log"
    log.parent.mkdir(parents=True)
    log.write_text("")
    svc = service(root)
    runner = asyncio.create_task(svc.run())
    try:
        await asyncio.sleep(0.6)
        with open(log, "a") as fh:
            fh.write(
                'level=error msg="failed to create sandbox: open /dev/vhost-vsock: no such file or directory" '
                f"sandbox={sid}\n"
            )
        found = await wait_captures(svc, 1)
    finally:
        await stop(runner)
    assert "logs/files/var_log_containerd.log" in read_bundle(svc.dir / found[0].id).members
    assert found[0].top_finding is not None and "vhost-vsock-unavailable" in found[0].top_finding
