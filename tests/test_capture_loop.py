"""Capturing runs on an event loop of its own: a forwarder loop busy with a flood of spans does not delay it.

bench/capture.py measures the real case (spans fed into hybrid-vsock listeners); here the
agent's loop is made slow on purpose, every iteration taking 50 ms.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.test_capture import runtime_removes, sandbox_only, sid_
from tests.test_node_agent import short_tmp, until, vsock_port

__all__ = ["short_tmp"]  # the fixture, used by name


@pytest.mark.asyncio
async def test_a_capture_is_not_slowed_by_a_busy_forwarder_loop(short_tmp: Path) -> None:
    """Spans flooding in make the agent's loop run long iterations; capturing has a loop of its own."""
    from kata_debug.agent.capture import CaptureConfig
    from kata_debug.agent.service import AgentConfig, NodeAgent

    root = short_tmp / "node"
    root.mkdir()
    agent = NodeAgent(
        AgentConfig(
            host_root=root,
            vsock_port=vsock_port(),
            stats_interval=0,
            capture=CaptureConfig(after=0.0, poll_interval=0.2),
            environ={},
        )
    )

    async def busy() -> None:  # every iteration of the agent's loop takes 50 ms
        while True:
            time.sleep(0.05)
            await asyncio.sleep(0)

    runner = asyncio.create_task(agent.run())
    hog = asyncio.create_task(busy())
    try:
        await agent.forwarder.wait_started()
        sid = sid_()
        sandbox_only(root, sid)
        await asyncio.sleep(1.0)
        runtime_removes(root, sid)
        assert agent.capture is not None
        cap = agent.capture
        await until(lambda: cap.counters.captured == 1, 60)
    finally:
        hog.cancel()
        agent.stop()
        await asyncio.wait_for(runner, 30)
    assert cap.counters.latency_s[0] < 2.5, f"vanish -> capture on disk took {cap.counters.latency_s[0]:.2f}s"
