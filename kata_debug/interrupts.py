"""Wait for a set of tasks, but let SIGINT/SIGTERM or a deadline end the wait cleanly.

Node and cluster collection share one rule: an interruption cancels the unfinished work and
still writes the manifest. This is the single place that knows how.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Collection


async def run_interruptible(tasks: Collection[asyncio.Task[object]], deadline: float | None = None) -> str | None:
    """Wait for `tasks`; on a signal or after `deadline` seconds cancel the rest.

    Returns why the wait was cut short ("interrupted by SIGINT", "global deadline of 5s
    reached"), or None when every task finished on its own.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reason: list[str] = []

    def _on_signal(sig: signal.Signals) -> None:
        if not reason:
            reason.append(f"interrupted by {sig.name}")
        stop.set()

    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, _on_signal, sig)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            pass
    stopper = asyncio.create_task(stop.wait())
    deadline_at = None if deadline is None else loop.time() + deadline
    try:
        pending = {t for t in tasks if not t.done()}
        while pending and not stop.is_set():
            wait_for = None if deadline_at is None else deadline_at - loop.time()
            if wait_for is not None and wait_for <= 0:
                reason.append(f"global deadline of {deadline:g}s reached")
                break
            await asyncio.wait(pending | {stopper}, timeout=wait_for, return_when=asyncio.FIRST_COMPLETED)
            pending = {t for t in tasks if not t.done()}
        unfinished = [t for t in tasks if not t.done()]
        for t in unfinished:
            t.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)
    finally:
        stopper.cancel()
        for sig in installed:
            loop.remove_signal_handler(sig)
    return reason[0] if reason else None
