"""OTLP/JSON lines on standard output (`--export stdout`); logs go to standard error."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import TextIO

from kata_debug.forwarder.otlp_json import batch_line
from kata_debug.forwarder.spans import QueuedSpan

log = logging.getLogger("kata_debug.forwarder")


class StdoutSink:
    """OTLP/JSON lines on standard output (logs go to standard error)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.name = "stdout"
        self._stream = stream

    def export(self, batch: Sequence[QueuedSpan]) -> int:
        stream = self._stream or sys.stdout
        try:
            stream.write(batch_line(batch))
            stream.flush()
        except (OSError, ValueError) as exc:
            log.warning("exporter stdout: cannot write: %s", exc)
            return 0
        return len(batch)

    def shutdown(self) -> None:
        pass
