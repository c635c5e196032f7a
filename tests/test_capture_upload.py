"""`node-agent --capture-upload URL`: each capture is sent to a real loopback endpoint, in the background.

The endpoint is `tests/upload_server.py` (aiohttp, reads bodies as streams, fails on
request); captures are real ones (the vanish rule, or a trigger handed to the service), the
journal is this machine's journald.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from kata_debug.agent.capture import CaptureService
from kata_debug.agent.uploads import done_marker, parse_capture_target, pending_marker
from kata_debug.agent.watch import failure_in_line
from kata_debug.collectors.captures import list_captures
from kata_debug.upload import TOKEN_ENV, UploadTarget
from tests.test_capture import runtime_removes, sandbox_only, service, sid_, stop, wait_captures
from tests.test_node_agent import REPO, short_tmp, start_agent, until, vsock_port
from tests.upload_server import UploadServer

__all__ = ["short_tmp"]  # the fixture, used by name


def target(url: str, token: str | None = "s3cr3t-token") -> UploadTarget:
    return parse_capture_target(url, environ={TOKEN_ENV: token} if token else {})


def uploading(root: Path, url: str, **kw: Any) -> CaptureService:
    return service(root, upload=target(url), upload_backoff=0.2, **kw)


def fail(svc: CaptureService, sid: str) -> None:
    """The runtime logged an error naming the sandbox (what the journal follower hands over)."""
    f = failure_in_line(f'level=error msg="create sandbox failed" sandbox={sid}', datetime.now(UTC), {})
    assert f is not None
    svc.trigger(f)


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nobody listens once it is closed: connection refused


async def uploaded(svc: CaptureService, n: int, timeout: float = 30) -> None:
    assert svc.uploader is not None
    up = svc.uploader
    await until(lambda: up.counters.uploaded >= n and not up.pending, timeout)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.asyncio
async def test_each_capture_arrives_once_with_the_token_under_its_own_name(tmp_path: Path) -> None:
    server = await UploadServer().start()
    svc = uploading(tmp_path / "node", server.url("/captures/{name}"))
    runner = asyncio.create_task(svc.run())
    try:
        await asyncio.sleep(0.5)
        sids = [sid_(), sid_()]
        for sid in sids:
            fail(svc, sid)
        found = await wait_captures(svc, 2)
        await uploaded(svc, 2)
        await asyncio.sleep(1.0)  # nothing is sent a second time
    finally:
        await stop(runner)
        await server.stop()
    assert server.attempts == 2 and len(server.received) == 2
    by_path = {r.path: r for r in server.received}
    for record in found:
        got = by_path[f"/captures/{record.id}"]
        assert got.method == "PUT" and got.headers["Authorization"] == "Bearer s3cr3t-token"
        assert got.sha256 == sha256(svc.dir / record.id), "the capture on disk is what arrived"
        assert done_marker(svc.dir / record.id).exists() and not pending_marker(svc.dir / record.id).exists()
    assert svc.counters.as_dict(svc.uploader)["upload"] == {
        "uploaded": 2,
        "failed_attempts": 0,
        "dropped": 0,
        "pending": 0,
    }


@pytest.mark.asyncio
async def test_a_url_without_name_gets_each_capture_by_post_named_in_content_disposition(tmp_path: Path) -> None:
    server = await UploadServer().start()
    svc = uploading(tmp_path / "node", server.url("/intake"))
    runner = asyncio.create_task(svc.run())
    try:
        await asyncio.sleep(0.5)
        fail(svc, sid_())
        [record] = await wait_captures(svc, 1)
        await uploaded(svc, 1)
    finally:
        await stop(runner)
        await server.stop()
    [got] = server.received
    assert got.method == "POST" and got.path == "/intake"
    assert got.headers["Content-Disposition"] == f'attachment; filename="{record.id}"'


@pytest.mark.asyncio
async def test_an_endpoint_failing_twice_gets_the_capture_on_the_third_attempt_and_only_then(tmp_path: Path) -> None:
    server = await UploadServer(script=[503, 500]).start()
    svc = uploading(tmp_path / "node", server.url("/c/{name}"))
    runner = asyncio.create_task(svc.run())
    try:
        await asyncio.sleep(0.5)
        fail(svc, sid_())
        [record] = await wait_captures(svc, 1)
        await uploaded(svc, 1)
        await asyncio.sleep(1.5)  # well past the backoff: no further attempt
    finally:
        await stop(runner)
        await server.stop()
    assert server.attempts == 3, "two failures, then the one that was accepted"
    assert svc.uploader is not None and svc.uploader.counters.failed_attempts == 2
    assert all(r.sha256 == sha256(svc.dir / record.id) for r in server.received)


@pytest.mark.asyncio
async def test_a_restarted_agent_sends_what_was_pending_and_never_resends_what_arrived(tmp_path: Path) -> None:
    root = tmp_path / "node"
    down = f"http://127.0.0.1:{dead_port()}/c/{{name}}"
    svc = uploading(root, down)
    runner = asyncio.create_task(svc.run())
    try:
        await asyncio.sleep(0.5)
        fail(svc, sid_())
        [record] = await wait_captures(svc, 1)
        assert svc.uploader is not None
        up = svc.uploader
        await until(lambda: up.counters.failed_attempts >= 2)
    finally:
        await stop(runner)
    capture = svc.dir / record.id
    assert pending_marker(capture).exists(), "the queue is on disk"
    assert "attempts" in pending_marker(capture).read_text()

    server = await UploadServer().start()
    try:
        for _ in range(2):  # the first restart sends it; the second finds it sent
            again = uploading(root, server.url("/c/{name}"))
            runner = asyncio.create_task(again.run())
            try:
                await asyncio.sleep(1.0)
            finally:
                await stop(runner)
    finally:
        await server.stop()
    assert [r.path for r in server.received] == [f"/c/{record.id}"]
    assert server.received[0].sha256 == sha256(capture)
    assert done_marker(capture).exists() and not pending_marker(capture).exists()


@pytest.mark.asyncio
async def test_a_capture_the_size_ring_removes_leaves_the_queue_with_its_markers(tmp_path: Path) -> None:
    svc = uploading(tmp_path / "node", f"http://127.0.0.1:{dead_port()}/c/{{name}}", size=1)
    runner = asyncio.create_task(svc.run())
    try:
        await asyncio.sleep(0.5)
        fail(svc, sid_())
        await wait_captures(svc, 1)
        fail(svc, sid_())
        await until(lambda: svc.counters.removed_by_size == 1 and not svc._inflight)
    finally:
        await stop(runner)
    assert svc.uploader is not None
    [kept] = list_captures(svc.dir)
    assert list(svc.uploader.pending) == [kept.id] and svc.uploader.counters.dropped == 1
    left = sorted(n for n in os.listdir(svc.dir) if not n.startswith("."))
    stem = kept.id.removesuffix(".tar.gz")
    assert left == [f"{stem}.json", kept.id, f"{stem}.upload"], "nothing of the removed capture is left"


async def _latencies(root: Path, upload: UploadTarget | None, n: int = 3) -> list[float]:
    svc = service(root, upload=upload, upload_backoff=0.05)
    runner = asyncio.create_task(svc.run())
    try:
        await asyncio.sleep(0.5)
        for _ in range(n):
            sid = sid_()
            sandbox_only(root, sid)
            await asyncio.sleep(0.5)  # the watcher has seen it
            runtime_removes(root, sid)
            await wait_captures(svc, 1, sandbox=sid)
    finally:
        await stop(runner)
    assert svc.counters.captured == n
    return svc.counters.latency_s


@pytest.mark.asyncio
async def test_an_endpoint_down_or_hanging_does_not_slow_capturing(tmp_path: Path) -> None:
    # A hanging endpoint: the TCP handshake completes (the kernel's backlog), then nothing answers.
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(64)
    try:
        alone = await _latencies(tmp_path / "a", None)
        refused = await _latencies(tmp_path / "b", target(f"http://127.0.0.1:{dead_port()}/c/{{name}}"))
        hanging = await _latencies(tmp_path / "c", target(f"http://127.0.0.1:{hang.getsockname()[1]}/c/{{name}}"))
    finally:
        hang.close()
    base = statistics.median(alone)
    for label, got in (("refused", refused), ("hanging", hanging)):
        assert statistics.median(got) < base + 0.5, f"{label}: {got} vs no upload {alone}"


@pytest.mark.asyncio
async def test_the_agent_process_uploads_with_the_token_from_its_environment(short_tmp: Path) -> None:
    root = short_tmp / "node"
    root.mkdir()
    sid = sid_()
    sandbox_only(root, sid)
    server = await UploadServer().start()
    agent = await start_agent(
        root,
        short_tmp / "state.json",
        "--vsock-port",
        str(vsock_port()),
        "--capture-after",
        "0s",
        "--capture-upload",
        server.url("/node/{name}"),
        env={TOKEN_ENV: "from-a-secret"},
    )
    try:
        await agent.ready()
        await asyncio.sleep(1.0)
        runtime_removes(root, sid)
        await until(lambda: len(server.received) == 1, 60)
    finally:
        await agent.kill() if agent.proc.returncode is not None else await agent.stop()
        await server.stop()
    [got] = server.received
    assert got.path.startswith("/node/") and sid[:12] in got.path
    assert got.headers["Authorization"] == "Bearer from-a-secret"
    assert "from-a-secret" not in agent.stderr.decode(), "the token is never logged"
    assert "uploaded to http://127.0.0.1" in agent.stderr.decode()


@pytest.mark.asyncio
async def test_upload_url_problems_are_one_line_and_exit_2(short_tmp: Path) -> None:
    for args, env, message in [
        (
            ["--capture-upload", "https://user:pw@support.example/c/{name}"],
            {},
            "--capture-upload https://support.example/c/{name}: has credentials in the URL",
        ),
        (["--capture-upload", "ftp://support.example/c"], {}, "--capture-upload"),
        (["--no-capture", "--capture-upload", "https://support.example/c"], {}, "--capture-upload: not valid with"),
    ]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "kata_debug",
            "node-agent",
            "--host-root",
            str(short_tmp),
            *args,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), **env},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 2, err.decode()
        lines = err.decode().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"kata-debug: error: {message}"), err.decode()
        assert "pw" not in err.decode()


def test_time_and_attempts_bound_the_retry_delay() -> None:
    from kata_debug.agent.uploads import CaptureUploader

    up = CaptureUploader(Path("/nonexistent"), target("http://127.0.0.1:1/c"), backoff_initial=10, backoff_max=900)
    assert 8 <= up.backoff(1) <= 12 and 16 <= up.backoff(2) <= 24
    assert all(up.backoff(n) <= 900 * 1.2 for n in (10, 50, 1000)), "capped, never overflowing"
    start = time.monotonic()
    assert up.backoff(10_000) > 0 and time.monotonic() - start < 0.1
