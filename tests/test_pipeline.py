"""ExportPipeline.put_many: one call per received chunk must behave exactly like `put` per span."""

from __future__ import annotations

import io

from hypothesis import given, settings, strategies as st

from forwarder.exporters import Origin, StdoutSink
from forwarder.pipeline import ExportPipeline
from tests.agent_wire import sample_span

ORIGIN = Origin.make("sb", "test", (("service.name", "kata-agent"),), ())
ITEMS = [(sample_span(i), ORIGIN) for i in range(60)]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 25), st.lists(st.integers(0, 30), min_size=1, max_size=8))
async def test_put_many_keeps_the_same_spans_and_counts_as_put_one_by_one(queue_size: int, chunks: list[int]) -> None:
    one = ExportPipeline(StdoutSink(io.StringIO()), queue_size=queue_size, batch_size=8)
    many = ExportPipeline(StdoutSink(io.StringIO()), queue_size=queue_size, batch_size=8)
    try:
        pos = 0
        for size in chunks:
            chunk = ITEMS[pos % 60 : pos % 60 + size]
            pos += size
            for item in chunk:
                one.put(item)
            if chunk:
                many.put_many(chunk)
            assert list(many._q) == list(one._q)
            assert (many.stats.queued, many.stats.dropped) == (one.stats.queued, one.stats.dropped)
            assert many._wake.is_set() == one._wake.is_set()
    finally:
        one.finish()
        many.finish()
