"""Wait for a set of tasks, but let SIGINT/SIGTERM or a deadline end the wait cleanly.

Node and cluster collection share one rule: an interruption cancels the unfinished work and
still writes the manifest. This is the single place that knows how, and how a command that
has written its bundle exits even when a worker thread is stuck in a read.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from collections.abc import Collection, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn, TypeVar

from kata_debug.collect import signals

_T = TypeVar("_T")


async def run_interruptible(tasks: Collection[asyncio.Task[object]], deadline: float | None = None) -> str | None:
    """Wait for `tasks`; on a signal or after `deadline` seconds cancel the rest.

    Returns why the wait was cut short ("interrupted by SIGINT", "global deadline of 5s
    reached"), or None when every task finished on its own.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reason: list[str] = []

    def _stop(name: str) -> None:
        if not reason:
            reason.append(f"interrupted by {name}")
        stop.set()

    installed: list[signal.Signals] = []
    if signals.installed():
        # The process records signals from its first instant (kata_debug.cli.entry): one that
        # came before this wait stops it at once, and none is lost after it returns.
        def _from_handler(name: str) -> None:  # runs in the signal handler: hand over to the loop
            loop.call_soon_threadsafe(_stop, name)

        signals.listen(_from_handler)
        if (early := signals.received()) is not None:
            _stop(early)
    else:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, _stop, sig.name)
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
        signals.listen(None)
        for sig in installed:
            loop.remove_signal_handler(sig)
    return reason[0] if reason else None


def run_leaving_stuck_threads(main: Coroutine[Any, Any, _T]) -> _T:
    """`asyncio.run`, except that it never waits for worker threads that are stuck.

    A read from a hung mount (NFS, FUSE, a wedged `/run/vc`) blocks its worker thread in the
    kernel; the collector is marked `timeout` and the bundle is written, but `asyncio.run`
    then joins the default executor's threads and the process never exits. Here the executor
    is shut down without waiting; `exit_process` then ends the process even if a thread is
    still blocked.
    """
    loop = asyncio.new_event_loop()
    executor = ThreadPoolExecutor(thread_name_prefix="kata-debug-io")
    loop.set_default_executor(executor)
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(main)
    finally:
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            executor.shutdown(wait=False, cancel_futures=True)
            asyncio.set_event_loop(None)
            loop.close()


def exit_process(code: int) -> NoReturn:
    """Exit with `code`; immediately (after flushing) if a worker thread is stuck in I/O.

    The interpreter's exit joins every executor thread, so one blocked read would hang the
    command after it has printed its result.
    """
    signals.ignore_from_now()
    stuck = [t for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive() and not t.daemon]
    if stuck:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
