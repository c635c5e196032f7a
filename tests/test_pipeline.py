"""ExportPipeline: the per-exporter queue, bounded in spans and in bytes, drop-oldest.

`put_many` (one call per received chunk) must behave exactly like `put` per span, and the
byte accounting must stay exact through every move a span makes: queued, taken for
export, put back after a failure (all of it or the undelivered rest), dropped, abandoned.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kata_debug.forwarder.pipeline import ExportPipeline
from kata_debug.forwarder.spans import Origin, QueuedSpan
from kata_debug.forwarder.stdout_sink import StdoutSink
from tests.agent_wire import sample_span

ORIGIN = Origin.make("sb", "test", (("service.name", "kata-agent"),), ())
ITEMS = [(sample_span(i), ORIGIN) for i in range(60)]
SIZES = [100 + 37 * i for i in range(60)]  # distinct, so a size paired with the wrong span shows


def span_ids(items: Sequence[QueuedSpan]) -> list[int]:
    return [span.span_id - 0x1000 for span, _ in items]


def assert_accounting_exact(p: ExportPipeline) -> None:
    """Sizes stay paired with their spans and the byte total is their sum, within both caps."""
    assert len(p._sizes) == len(p._q)
    assert [SIZES[i] for i in span_ids(list(p._q))] == list(p._sizes)
    assert p.queued_bytes == sum(p._sizes) <= p.queue_bytes
    assert len(p._q) <= p.queue_size


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 25), st.integers(1, 3000), st.lists(st.integers(0, 30), min_size=1, max_size=8))
async def test_put_many_keeps_the_same_spans_sizes_and_counts_as_put_one_by_one(
    queue_size: int, queue_bytes: int, chunks: list[int]
) -> None:
    one = ExportPipeline(StdoutSink(io.StringIO()), queue_size=queue_size, queue_bytes=queue_bytes, batch_size=8)
    many = ExportPipeline(StdoutSink(io.StringIO()), queue_size=queue_size, queue_bytes=queue_bytes, batch_size=8)
    try:
        pos = 0
        for size in chunks:
            start = pos % 60
            chunk, sizes = ITEMS[start : start + size], SIZES[start : start + size]
            pos += size
            for item, n in zip(chunk, sizes):
                one.put(item, n)
            if chunk:
                many.put_many(chunk, sizes)
            assert list(many._q) == list(one._q)
            assert list(many._sizes) == list(one._sizes)
            assert (many.queued_bytes, many.stats.queued, many.stats.dropped) == (
                one.queued_bytes,
                one.stats.queued,
                one.stats.dropped,
            )
            # No lost wake-up (nothing here clears it, as the export loop would).
            assert many._wake.is_set() or not many._q
            assert one._wake.is_set() or not one._q
            assert_accounting_exact(many)
            # Nothing left the queue but by a counted drop.
            assert many.stats.queued == len(many) + many.stats.dropped
    finally:
        one.finish()
        many.finish()


async def test_spans_beyond_queue_bytes_drop_the_oldest_and_count_them() -> None:
    """Few spans but big ones: the byte cap applies long before the span cap."""
    p = ExportPipeline(StdoutSink(io.StringIO()), queue_size=10_000, queue_bytes=1000)
    try:
        p.put_many(ITEMS[:5], [300] * 5)  # 1500 bytes: the two oldest go
        assert span_ids(list(p._q)) == [2, 3, 4]
        assert (p.queued_bytes, p.stats.dropped, len(p)) == (900, 2, 3)
        p.put(ITEMS[5], 1000)  # exactly the cap: everything older goes
        assert span_ids(list(p._q)) == [5]
        assert (p.queued_bytes, p.stats.dropped, len(p)) == (1000, 5, 1)
        p.put(ITEMS[6], 1)
        assert span_ids(list(p._q)) == [6] and p.queued_bytes == 1 and p.stats.dropped == 6
    finally:
        p.finish()


class ScriptedSink:
    """A backend whose every export waits for the test to release it, then delivers as told.

    `script[k]` is what the k-th export returns: how many spans from the start of its batch
    were delivered (0 = the backend is down). Past the script, everything is delivered.
    """

    name = "scripted"

    def __init__(self, script: list[int]) -> None:
        self.script = script
        self.batches: list[list[int]] = []
        self.delivered: list[int] = []
        self._release = threading.Semaphore(0)

    def export(self, batch: Sequence[QueuedSpan]) -> int:
        call = len(self.batches)
        self.batches.append(span_ids(batch))
        self._release.acquire()
        n = self.script[call] if call < len(self.script) else len(batch)
        self.delivered += span_ids(batch)[:n]
        return n

    def release(self) -> None:
        self._release.release()

    def shutdown(self) -> None:
        pass


async def until(predicate: Any, timeout: float = 10.0) -> None:
    async def _poll() -> None:
        while not predicate():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(_poll(), timeout)


@contextlib.asynccontextmanager
async def running(p: ExportPipeline, sink: ScriptedSink) -> AsyncIterator[None]:
    """`p.run()` as a task; afterwards close, release any export still waiting, and finish."""
    task = asyncio.create_task(p.run())
    try:
        yield
    finally:
        p.close()
        for _ in range(4):
            sink.release()
        await asyncio.wait_for(task, 10)
        p.finish()


async def test_partial_delivery_requeues_the_rest_with_exact_bytes_and_the_caps_drop_the_oldest() -> None:
    sink = ScriptedSink(script=[1])  # first export: one span through, then the backend fails
    p = ExportPipeline(
        sink, queue_size=100, queue_bytes=1000, batch_size=4, batch_delay=0.0, retry_initial=0.01, retry_max=0.01
    )
    sizes = {0: 100, 1: 200, 2: 300, 3: 400, 4: 250, 5: 250}
    async with running(p, sink):
        p.put_many(ITEMS[:4], [sizes[i] for i in range(4)])
        await until(lambda: len(sink.batches) == 1)
        # The batch being exported has left the queue but is still held, and reported.
        assert sink.batches[0] == [0, 1, 2, 3]
        assert (len(p), p.queued_bytes, p.held_bytes) == (4, 0, 1000)
        p.put_many(ITEMS[4:6], [sizes[4], sizes[5]])
        assert (len(p), p.queued_bytes, p.held_bytes) == (6, 500, 1500)
        sink.release()
        # Span 0 got through; 1, 2, 3 go back to the head: [1 2 3 4 5] = 1400 bytes > 1000,
        # so the oldest, 1 and 2, are dropped.
        await until(lambda: len(sink.batches) == 2)
        assert p.stats.exported == 1 and p.stats.failed_exports == 1 and p.stats.dropped == 2
        assert sink.batches[1] == [3, 4, 5]
        assert (len(p), p.held_bytes) == (3, 400 + 250 + 250)
        sink.release()
        await until(lambda: p.stats.exported == 4)
        assert sink.delivered == [0, 3, 4, 5]
        assert (len(p), p.queued_bytes, p.held_bytes, p.stats.dropped) == (0, 0, 0, 2)
        assert len(p._sizes) == 0


async def test_a_failed_batch_goes_back_whole_and_a_retry_sees_the_same_bytes() -> None:
    sink = ScriptedSink(script=[0, 0])  # backend down twice, then up
    p = ExportPipeline(
        sink, queue_size=100, queue_bytes=10_000, batch_size=3, batch_delay=0.0, retry_initial=0.01, retry_max=0.01
    )
    async with running(p, sink):
        p.put_many(ITEMS[:5], SIZES[:5])
        for call in range(3):
            await until(lambda call=call: len(sink.batches) == call + 1)
            assert len(p) == 5 and p.held_bytes == sum(SIZES[:5])
            assert_accounting_exact(p)
            sink.release()
        await until(lambda: p.stats.exported == 3)
        assert sink.batches[:3] == [[0, 1, 2], [0, 1, 2], [0, 1, 2]]
        await until(lambda: len(sink.batches) == 4)
        sink.release()
        await until(lambda: p.stats.exported == 5)
        assert (len(p), p.held_bytes, p.stats.dropped, p.stats.failed_exports) == (0, 0, 0, 2)


async def test_abandon_counts_queued_and_in_flight_spans_and_releases_their_bytes() -> None:
    sink = ScriptedSink(script=[0])
    p = ExportPipeline(sink, queue_size=100, queue_bytes=10_000, batch_size=2, batch_delay=0.0)
    task = asyncio.create_task(p.run())
    try:
        p.put_many(ITEMS[:5], SIZES[:5])
        await until(lambda: len(sink.batches) == 1)
        assert (len(p), p.held_bytes) == (5, sum(SIZES[:5]))
        task.cancel()
        assert p.abandon() == 5
        assert (len(p), p.queued_bytes, p.held_bytes, p.stats.dropped) == (0, 0, 0, 5)
        assert len(p._sizes) == 0
    finally:
        sink.release()
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.to_thread(p._worker._thread.join, 5)  # before the loop it reports to closes


async def test_queue_bytes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="queue_bytes"):
        ExportPipeline(StdoutSink(io.StringIO()), queue_bytes=0)
