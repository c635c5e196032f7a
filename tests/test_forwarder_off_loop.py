"""The forwarder and the node agent never touch the filesystem on the event-loop thread.

The loop carries every agent connection of the node: one `stat` of a hung `/host` mount or
one blocking `open` of the spool on it stalls all of them. The guard of
`tests/test_collectors_off_loop.py` watches a real `forward` run (hybrid vsock Unix socket
listener, file export) and a real node-agent run (discovery, spool, state file).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
from pathlib import Path

import pytest

from kata_debug.agent.service import AgentConfig, main
from kata_debug.forwarder.server import Forwarder, ForwarderConfig
from kata_debug.forwarder.targets import parse_export
from tests.agent_wire import frames, sample_span, to_bincode, to_json
from tests.hostroots import kata_node
from tests.test_collectors_off_loop import watch_loop_fs
from tests.test_forwarder import SID, short_tmp  # noqa: F401  (fixture)

_OURS = ("/forwarder/", "/kata_debug/agent/", "/kata_debug/node/")


def lines_in(path: Path) -> int:
    try:
        return sum(
            len(rs["scopeSpans"][0]["spans"])
            for ln in path.read_text().splitlines()
            for rs in json.loads(ln)["resourceSpans"]
        )
    except FileNotFoundError:
        return 0


async def spans_in(path: Path, n: int, timeout: float = 20.0) -> None:
    async def wait() -> None:
        while await asyncio.to_thread(lines_in, path) < n:
            await asyncio.sleep(0.05)

    await asyncio.wait_for(wait(), timeout)


async def guest_sends(path: Path, data: bytes) -> None:
    async def wait() -> None:
        while not await asyncio.to_thread(path.exists):
            await asyncio.sleep(0.05)

    await asyncio.wait_for(wait(), 20)
    _, writer = await asyncio.open_unix_connection(str(path))
    writer.write(data)
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def test_a_forward_run_does_its_filesystem_work_in_worker_threads(
    short_tmp: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = await asyncio.to_thread(kata_node, short_tmp / "h")
    out = short_tmp / "out" / "spans.jsonl"
    calls = watch_loop_fs(monkeypatch, _OURS)
    # Built off the loop, as `forward` builds it (before the loop) and the node agent does (in a thread).
    fwd = await asyncio.to_thread(
        Forwarder,
        ForwarderConfig(
            listen=[f"hvsock:///run/vc/vm/{SID}/clh.sock"],
            exports=[parse_export(f"file://{out}?max_bytes=4096&backups=2")],
            host_root=str(root),
            stats_interval=0,
            batch_delay=0.05,
        ),
    )
    task = asyncio.create_task(fwd.run())
    try:
        await asyncio.wait_for(fwd.wait_started(), 10)
        await guest_sends(root / f"run/vc/vm/{SID}/clh.sock_10240", frames(to_json(sample_span(i)) for i in range(40)))
        await spans_in(out, 1)
    finally:
        fwd.stop()
        await asyncio.wait_for(task, 30)
    assert fwd.stats.spans == 40
    assert calls == [], "\n".join(sorted(set(calls)))


async def test_a_node_agent_run_does_its_filesystem_work_in_worker_threads(
    short_tmp: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = await asyncio.to_thread(kata_node, short_tmp / "h")
    clh = root / f"run/vc/vm/{SID}/clh.sock"
    state = short_tmp / "state.json"
    cfg = AgentConfig(
        host_root=root,
        state_file=state,
        vsock_port=0xFFFF_0000 + os.getpid() % 0xFFFF,
        stats_interval=0,
        discover_interval=0.05,
        environ={},
    )
    calls = watch_loop_fs(monkeypatch, _OURS, loop_threads=("capture",))  # capturing has a loop of its own
    vmm = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    task = asyncio.create_task(main(cfg))
    try:
        await asyncio.to_thread(clh.parent.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(vmm.bind, str(clh))
        vmm.listen()
        await guest_sends(Path(f"{clh}_10240"), frames(to_bincode(sample_span(i)) for i in range(30)))
        await spans_in(root / "var/lib/kata-debug/traces/spans.jsonl", 30)
    finally:
        os.kill(os.getpid(), signal.SIGTERM)  # what the kubelet sends: `main` stops the agent
        stats = await asyncio.wait_for(task, 30)
        vmm.close()
        with contextlib.suppress(OSError):
            await asyncio.to_thread(os.unlink, clh)
    assert stats.spans == 30
    assert calls == [], "\n".join(sorted(set(calls)))
