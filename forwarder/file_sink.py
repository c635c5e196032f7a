"""OTLP/JSON lines in a size-capped, rotated file (`file:///path.jsonl`, and the node agent's spool).

Blocking: `export` runs on a pipeline worker thread, never on the event loop.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from kata_debug.forwarder.otlp_json import batch_line
from kata_debug.forwarder.spans import QueuedSpan
from kata_debug.forwarder.targets import DEFAULT_FILE_BACKUPS, DEFAULT_FILE_MAX_BYTES

log = logging.getLogger("kata_debug.forwarder")


class FileSink:
    """OTLP/JSON lines in a size-capped file, rotated to `NAME.1` .. `NAME.<backups>`.

    The cap bounds the disk a node spends on traces: at most `(backups + 1) * max_bytes`
    (plus one request line). Rotated files keep the newest spans; the oldest file goes.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_bytes: int = DEFAULT_FILE_MAX_BYTES,
        backups: int = DEFAULT_FILE_BACKUPS,
        name: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.name = name or f"file://{self.path}"
        self.max_bytes = max_bytes
        self.backups = backups
        self._fh: BinaryIO | None = None
        self._size = 0
        self._lock = threading.Lock()

    def _open(self) -> BinaryIO:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = self._fh = open(self.path, "ab")
        self._size = os.fstat(fh.fileno()).st_size
        return fh

    def _rotate(self) -> BinaryIO:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            for i in range(self.backups - 1, 0, -1):
                src = self.path.with_name(f"{self.path.name}.{i}")
                if src.exists():
                    os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
            if self.path.exists():
                os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        return self._open()

    def write_line(self, data: bytes) -> None:
        with self._lock:
            fh = self._fh if self._fh is not None else self._open()
            if self._size and self._size + len(data) > self.max_bytes:
                fh = self._rotate()
            fh.write(data)
            fh.flush()
            self._size += len(data)

    def export(self, batch: Sequence[QueuedSpan]) -> int:
        try:
            self.write_line(batch_line(batch).encode())
        except OSError as exc:
            log.warning("exporter %s: cannot write: %s", self.name, exc.strerror or exc)
            with self._lock:
                if self._fh is not None:
                    self._fh.close()
                    self._fh = None
            return 0
        return len(batch)

    def shutdown(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None
