"""One bounded queue and one export worker per sink.

A node forwards spans from every sandbox while its backend may be down for minutes. Each
sink therefore gets its own queue (a slow OTLP backend must not hold up the local spool
file), capped at `queue_size` spans *and* `queue_bytes` bytes: when either is exceeded the
*oldest* spans are dropped and counted, so memory never grows and what finally reaches the
backend is the most recent activity. The byte cap is what bounds a hostile guest: a span
count alone lets 10,000 one-MiB frames hold 10 GB. A span is accounted with the size of the
frame payload it was decoded from (known for free when it arrives, a fair proxy for what
its decoded form holds), kept in a deque of ints beside the span deque so the queued items
themselves (`QueuedSpan`, what sinks consume) stay as they are.

Exports run on one daemon thread per sink: the SDK exporters block (HTTP, gRPC, retry
sleeps), and a daemon thread can never hold the process past its shutdown deadline.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat, starmap
from typing import Any, TypeVar

from kata_debug.forwarder.sink import SpanSink
from kata_debug.forwarder.spans import QueuedSpan

log = logging.getLogger("kata_debug.forwarder")
_T = TypeVar("_T")

#: Default byte cap per exporter queue: 64 times the default maximum frame.
DEFAULT_QUEUE_BYTES = 64 << 20


class _DaemonWorker:
    """Runs blocking calls one at a time on a daemon thread, awaitable from the loop."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[
            tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any], asyncio.AbstractEventLoop] | None
        ] = queue.SimpleQueue()
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


def _discard(items: Iterable[Any]) -> None:
    """Run an iterator to its end, keeping nothing (a zero-length deque consumes in C)."""
    deque(items, maxlen=0)


#: Dropped-span warnings logged per process: a guest can send poison spans without end;
#: past this they are only counted (`poisoned` in the stats), as undecodable frames are.
POISON_WARNINGS = 10
_poison_warned = itertools.count(1)


def _warn_poisoned(sink: str, exc: Exception) -> None:
    n = next(_poison_warned)  # atomic under the GIL: the export thread and tests may both call
    if n <= POISON_WARNINGS:
        more = "; further dropped spans are only counted" if n == POISON_WARNINGS else ""
        log.warning("exporter %s: dropping a span it cannot export: %s%s", sink, exc, more)


def export_isolating(sink: SpanSink, batch: Sequence[QueuedSpan]) -> tuple[int, int]:
    """Export `batch` in halves after the sink raised on it; return (spans consumed, poisoned).

    A sink that raises (rather than returning a short count, its way of saying "backend
    unavailable, retry") failed on what it was given: retrying the same batch would fail
    forever and hold up every span queued behind it, which is how one guest-supplied span
    used to stop a node's spool. Bisecting finds the spans the sink cannot take even alone
    (about 2*log2(len) extra calls per poison span); those are dropped and counted, the
    rest is delivered. Consumed spans are a prefix of `batch` (delivered or dropped); a
    short count from the sink stops the walk there so the rest is retried as usual.
    """
    consumed = poisoned = 0
    pending: list[Sequence[QueuedSpan]] = [batch]
    while pending:
        part = pending.pop()
        try:
            done = max(0, min(int(sink.export(part)), len(part)))
        except OSError:
            return consumed, poisoned  # the backend, not the data: retried with backoff
        except Exception as exc:  # noqa: BLE001 - any failure on the data isolates it
            if len(part) == 1:
                poisoned += 1
                consumed += 1
                _warn_poisoned(sink.name, exc)
                continue
            mid = len(part) // 2
            pending.append(part[mid:])
            pending.append(part[:mid])
            continue
        consumed += done
        if done < len(part):
            return consumed, poisoned
    return consumed, poisoned


def _set_result(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


@dataclass
class PipelineStats:
    queued: int = 0  # spans ever put in the queue (a running total, not the current length)
    exported: int = 0
    dropped: int = 0  # queue full (oldest dropped) or left over at shutdown
    failed_exports: int = 0  # export attempts that failed (each is retried)
    poisoned: int = 0  # spans the sink raised on even alone: dropped so the rest goes on


class ExportPipeline:
    """Bounded drop-oldest queue in front of one sink, drained in batches by `run()`.

    Invariants (every method that moves spans keeps them): `_sizes[i]` is the accounted
    size of `_q[i]`, and `_bytes == sum(_sizes)`. After `put`, `put_many` and `_requeue`
    the queue holds at most `queue_size` spans and `queue_bytes` bytes. The batch being
    exported (`_inflight`, `_inflight_bytes`) has left the queue but is counted in `len()`
    and `held_bytes`, so an outage never reports an empty pipeline while spans are held.
    The memory held per exporter is thus at most `queue_bytes` plus one batch taken from
    a queue that was itself within `queue_bytes`.
    """

    def __init__(
        self,
        sink: SpanSink,
        queue_size: int = 10_000,
        batch_size: int = 512,
        batch_delay: float = 0.2,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
        queue_bytes: int = DEFAULT_QUEUE_BYTES,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        if queue_bytes < 1:
            raise ValueError("queue_bytes must be at least 1")
        self.sink = sink
        self.queue_size = queue_size
        self.queue_bytes = queue_bytes
        self.batch_size = max(1, batch_size)
        self.batch_delay = batch_delay
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.stats = PipelineStats()
        self._q: deque[QueuedSpan] = deque()
        self._sizes: deque[int] = deque()  # in lock-step with `_q`
        self._bytes = 0  # sum(self._sizes)
        self._wake = asyncio.Event()
        self._closing = False
        self._down_since: float | None = None
        self._inflight = 0  # spans of the batch being exported (out of the queue)
        self._inflight_bytes = 0
        self._worker = _DaemonWorker(f"export-{sink.name}")

    @property
    def name(self) -> str:
        return self.sink.name

    def __len__(self) -> int:
        """Spans held: queued plus the batch being exported (a failed one goes back to the queue)."""
        return len(self._q) + self._inflight

    @property
    def queued_bytes(self) -> int:
        """Accounted bytes in the queue proper (the figure `queue_bytes` caps)."""
        return self._bytes

    @property
    def held_bytes(self) -> int:
        """Accounted bytes held: the queue plus the batch being exported."""
        return self._bytes + self._inflight_bytes

    def put(self, item: QueuedSpan, size: int) -> None:
        """Queue one span of `size` accounted bytes; never blocks. Drops the oldest when over a cap."""
        self.put_many([item], (size,))

    def put_many(self, items: list[QueuedSpan], sizes: Sequence[int]) -> None:
        """`put` for every item, in order (one call per received chunk, not per span).

        `sizes[i]` is the accounted size of `items[i]`. The common case (no cap reached)
        is two C-level `extend`s and a `sum`: no Python-level work per span.
        """
        q = self._q
        was_empty = not q
        q.extend(items)
        self._sizes.extend(sizes)
        self._bytes += sum(sizes)
        self.stats.queued += len(items)
        if len(q) > self.queue_size or self._bytes > self.queue_bytes:
            self._trim()
        if q and (was_empty or len(q) >= self.batch_size):  # q: a span over queue_bytes went at once
            self._wake.set()

    def _trim(self) -> None:
        """Drop (and count) the oldest spans until neither cap is exceeded.

        Costs one step per dropped span; each span is dropped at most once, so this is
        amortised O(1) per span put. The span-count excess (the usual case: many small
        spans) is popped in C (`starmap` calling `popleft`), as `put_many` did before sizes.
        """
        q = self._q
        sizes = self._sizes
        popleft = q.popleft
        size_popleft = sizes.popleft
        nbytes = self._bytes
        dropped = 0
        over = len(q) - self.queue_size
        if over > 0:
            _discard(starmap(popleft, repeat((), over)))
            nbytes -= sum(starmap(size_popleft, repeat((), over)))
            dropped = over
        cap = self.queue_bytes
        while nbytes > cap and q:
            popleft()
            nbytes -= size_popleft()
            dropped += 1
        self._bytes = nbytes
        self.stats.dropped += dropped

    def _take(self) -> tuple[list[QueuedSpan], list[int]]:
        """Move the next batch (and its sizes) from the head of the queue to in flight."""
        q = self._q
        sizes = self._sizes
        n = min(len(q), self.batch_size)
        if n == len(q):  # the usual case when the backend keeps up: no per-span pops
            batch = list(q)
            batch_sizes = list(sizes)
            nbytes = self._bytes
            q.clear()
            sizes.clear()
        else:  # `popleft` n times, called from C
            batch = list(starmap(q.popleft, repeat((), n)))
            batch_sizes = list(starmap(sizes.popleft, repeat((), n)))
            nbytes = sum(batch_sizes)
        self._bytes -= nbytes
        self._inflight = n
        self._inflight_bytes = nbytes
        return batch, batch_sizes

    def _requeue(self, batch: list[QueuedSpan], sizes: list[int]) -> None:
        """Put a failed batch (or its undelivered rest) back at the head, oldest first.

        If the queue filled meanwhile, the caps apply as for any put: the oldest spans,
        which are now this batch's, go first.
        """
        self._q.extendleft(reversed(batch))
        self._sizes.extendleft(reversed(sizes))
        self._bytes += sum(sizes)
        if len(self._q) > self.queue_size or self._bytes > self.queue_bytes:
            self._trim()

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
                except TimeoutError:
                    pass
            batch, sizes = self._take()
            poisoned = 0
            try:
                done = int(await self._worker.call(self.sink.export, batch))
            except OSError as exc:
                log.warning("exporter %s failed: %s", self.name, exc)
                done = 0
            except Exception as exc:  # noqa: BLE001 - a sink failing on the data must not stop the pipeline
                log.warning("exporter %s failed on a batch of %d: %s; isolating", self.name, len(batch), exc)
                done, poisoned = await self._worker.call(export_isolating, self.sink, batch)
            self._inflight = 0
            self._inflight_bytes = 0
            done = max(0, min(done, len(batch)))
            self.stats.exported += done - poisoned
            self.stats.poisoned += poisoned
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
            self._requeue(batch[done:], sizes[done:])
            if self._down_since is None:
                self._down_since = time.monotonic()
                log.warning(
                    "exporter %s: export failed; keeping up to %d spans (%d bytes) and retrying with backoff",
                    self.name,
                    self.queue_size,
                    self.queue_bytes,
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
        self._inflight_bytes = 0
        self.stats.dropped += left
        self._q.clear()
        self._sizes.clear()
        self._bytes = 0
        self.sink.shutdown()
        self._worker.stop()
        return left

    def finish(self) -> None:
        self.sink.shutdown()
        self._worker.stop()
