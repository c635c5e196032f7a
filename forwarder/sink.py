"""The one interface every destination of spans implements (`forwarder.pipeline` drives it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from kata_debug.forwarder.spans import QueuedSpan


class SpanSink(Protocol):
    """A destination. `export` blocks and runs on a worker thread.

    It returns how many spans of the batch, from its start, were delivered: fewer than
    `len(batch)` means the rest is to be retried later (a sink that sends one batch as
    several requests may get part of the way).
    """

    name: str

    def export(self, batch: Sequence[QueuedSpan]) -> int: ...

    def shutdown(self) -> None: ...
