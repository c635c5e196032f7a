"""One bounded queue and one export worker per sink.

A node forwards spans from every sandbox while its backend may be down for minutes. Each
sink therefore gets its own queue (a slow OTLP backend must not hold up the local spool
file), capped at `queue_size` spans: when it is full the *oldest* span is dropped and
counted, so memory never grows and what finally reaches the backend is the most recent
activity. Exports run on one daemon thread per sink: the SDK exporters block (HTTP, gRPC,
retry sleeps), and a daemon thread can never hold the process past its shutdown deadline.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from .exporters import QueuedSpan, SpanSink

log = logging.getLogger("kata_debug.forwarder")
_T = TypeVar("_T")


class _DaemonWorker:
    """Runs blocking calls one at a time on a daemon thread, awaitable from the loop."""

    def __init__(self, name: str) -> None:
        self._jobs: "queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any], asyncio.AbstractEventLoop] | None]" = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, args, fut, loop = job
            try:
                result = fn(*args)
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                loop.call_soon_threadsafe(_set_exception, fut, exc)
            else:
                loop.call_soon_threadsafe(_set_result, fut, result)

    async def call(self, fn: Callable[..., _T], *args: Any) -> _T:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[_T] = loop.create_future()
        self._jobs.put((fn, args, fut, loop))
        return await fut

    def stop(self) -> None:
        self._jobs.put(None)


def _set_result(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


@dataclass
class PipelineStats:
    queued: int = 0
    exported: int = 0
    dropped: int = 0  # queue full (oldest dropped) or left over at shutdown
    failed_exports: int = 0  # export attempts that failed (each is retried)


class ExportPipeline:
    """Bounded drop-oldest queue in front of one sink, drained in batches by `run()`."""

    def __init__(
        self,
        sink: SpanSink,
        queue_size: int = 10_000,
        batch_size: int = 512,
        batch_delay: float = 0.2,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.sink = sink
        self.queue_size = queue_size
        self.batch_size = max(1, batch_size)
        self.batch_delay = batch_delay
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.stats = PipelineStats()
        self._q: deque[QueuedSpan] = deque()
        self._wake = asyncio.Event()
        self._closing = False
        self._down_since: float | None = None
        self._inflight = 0
        self._worker = _DaemonWorker(f"export-{sink.name}")

    @property
    def name(self) -> str:
        return self.sink.name

    def __len__(self) -> int:
        return len(self._q)

    def put(self, item: QueuedSpan) -> None:
        """Queue one span; never blocks. Drops (and counts) the oldest span when full."""
        q = self._q
        if len(q) >= self.queue_size:
            q.popleft()
            self.stats.dropped += 1
        q.append(item)
        self.stats.queued += 1
        if len(q) >= self.batch_size or len(q) == 1:
            self._wake.set()

    def put_many(self, items: list[QueuedSpan]) -> None:
        """`put` for every item, in order (one call per received chunk, not per span)."""
        q = self._q
        was_empty = not q
        q.extend(items)
        self.stats.queued += len(items)
        over = len(q) - self.queue_size
        if over > 0:
            popleft = q.popleft
            for _ in range(over):
                popleft()
            self.stats.dropped += over
        if was_empty or len(q) >= self.batch_size:
            self._wake.set()

    def _take(self) -> list[QueuedSpan]:
        q = self._q
        n = min(len(q), self.batch_size)
        return [q.popleft() for _ in range(n)]

    def _requeue(self, batch: list[QueuedSpan]) -> None:
        """Put a failed batch back at the head; if the queue filled meanwhile, its oldest go."""
        q = self._q
        room = self.queue_size - len(q)
        if room < len(batch):
            self.stats.dropped += len(batch) - max(room, 0)
            batch = batch[len(batch) - max(room, 0):]
        q.extendleft(reversed(batch))

    async def run(self) -> None:
        """Export until `close()` was called and the queue is empty."""
        attempt = 0
        while True:
            if not self._q:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if len(self._q) < self.batch_size and not self._closing and attempt == 0:
                # Let a batch fill up a little: fewer, larger requests.
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), self.batch_delay)
                except asyncio.TimeoutError:
                    pass
            batch = self._take()
            self._inflight = len(batch)
            try:
                done = int(await self._worker.call(self.sink.export, batch))
            except Exception as exc:  # noqa: BLE001 - a sink bug must not stop the pipeline
                log.warning("exporter %s failed: %s", self.name, exc)
                done = 0
            self._inflight = 0
            done = max(0, min(done, len(batch)))
            self.stats.exported += done
            if done == len(batch):
                if self._down_since is not None:
                    log.info(
                        "exporter %s: backend reachable again after %.0fs",
                        self.name,
                        time.monotonic() - self._down_since,
                    )
                    self._down_since = None
                attempt = 0
                continue
            self.stats.failed_exports += 1
            self._requeue(batch[done:])
            if self._down_since is None:
                self._down_since = time.monotonic()
                log.warning(
                    "exporter %s: export failed; keeping up to %d spans and retrying with backoff",
                    self.name,
                    self.queue_size,
                )
            delay = min(self.retry_max, self.retry_initial * (2 ** min(attempt, 16)))
            attempt += 1
            await asyncio.sleep(delay)

    def close(self) -> None:
        """No more spans will come: `run()` returns once the queue is empty."""
        self._closing = True
        self._wake.set()

    def abandon(self) -> int:
        """Shutdown deadline passed: count what is left as dropped and stop the sink."""
        left = len(self._q) + self._inflight
        self._inflight = 0
        self.stats.dropped += left
        self._q.clear()
        self.sink.shutdown()
        self._worker.stop()
        return left

    def finish(self) -> None:
        self.sink.shutdown()
        self._worker.stop()
