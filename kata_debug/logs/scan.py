"""Copy a log file redacted and gather its lines per sandbox: the CPU-heavy half of shim-logs.

This is pure Python work on bytes that holds the GIL, so it is kept free of asyncio and of
the bundle writer: the shim-logs collector runs it in a thread for small inputs and in a
separate scanner process (`logscan_worker`) for large ones, where it cannot starve the
threads that compress the bundle. Both run this very code, so their output is identical.

Per-sandbox splitting avoids Python work per byte: the chunk is split into lines and a
literal-prefixed regex is mapped over them in C; Python only touches lines that name a
sandbox, and writes once per sandbox per chunk.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from kata_debug.logs.logfmt import parse_line, sandbox_of
from kata_debug.node.hostroot import open_regular
from kata_debug.redact.redactor import StreamRedactor

BATCH = 1 << 20
MAX_SANDBOXES = 512
_SANDBOX_FIELD = re.compile(rb'sandbox="?([A-Za-z0-9][A-Za-z0-9_.-]*)')


class Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...


_S = TypeVar("_S", bound=Sink)


@dataclass
class SourceStats:
    """What one log source yielded; goes into shim-logs/summary.json as is."""

    source: str
    lines: int = 0
    bytes: int = 0
    error: str | None = None


class PerSandbox(Generic[_S]):
    """One sink per sandbox, at most MAX_SANDBOXES; writes for further sandboxes are counted.

    `present` names sandboxes that already have a sink elsewhere (a scanner process continues
    what the collector's journal sources started): they count towards the limit and always
    get a sink here, exactly as if both had written into one PerSandbox.
    """

    def __init__(self, open_sink: Callable[[str], _S], present: Iterable[str] = ()) -> None:
        self._open = open_sink
        self._present = set(present)
        self.sinks: dict[str, _S] = {}
        self.overflow = 0

    def write(self, sid: str, lines: bytes) -> None:
        sink = self.sinks.get(sid)
        if sink is None:
            if sid not in self._present:
                if len(self._present) >= MAX_SANDBOXES:
                    self.overflow += 1
                    return
                self._present.add(sid)
            sink = self.sinks[sid] = self._open(sid)
        sink.write(lines if lines.endswith(b"\n") else lines + b"\n")


def sandbox_groups(chunk: bytes) -> tuple[int, dict[bytes, bytes]]:
    """The newlines in `chunk`, and its lines that name a sandbox joined per sandbox id (first-seen order).

    Go shim lines carry `sandbox=<id>` (the first occurrence on a line wins). Only chunks
    with runtime-rs/JSON shapes pay for the full line parser; such lines follow the logfmt
    ones of their sandbox. A group ends with a newline unless it ends with the chunk's
    unterminated last line (end of a file without a final newline).
    """
    lines = chunk.split(b"\n")
    groups: dict[bytes, list[bytes]] = {}
    for m in filter(None, map(_SANDBOX_FIELD.search, lines)):
        group = groups.get(m[1])
        if group is None:
            groups[m[1]] = [m.string]
        else:
            group.append(m.string)
    extra: dict[bytes, list[bytes]] = {}
    if b"kata-runtime" in chunk or b'"sandbox"' in chunk:
        for line in chunk.splitlines(keepends=True):
            if b"sandbox=" not in line and (b"kata-runtime" in line or b'"sandbox"' in line):
                named = sandbox_of(parse_line(line.decode("utf-8", "replace")))
                if named:
                    extra.setdefault(named.encode(), []).append(line)
                    groups.setdefault(named.encode(), [])
    unterminated = lines[-1] or None  # `is` below: the very object split() returned
    out: dict[bytes, bytes] = {}
    for sid, group in groups.items():
        ends_open = bool(group) and group[-1] is unterminated
        if group and not ends_open:
            group.append(b"")  # join() then ends with the newline
        joined = b"\n".join(group)
        more = extra.get(sid)
        out[sid] = joined + b"".join(more) if more else joined
    return len(lines) - 1, out


def copy_log(
    real_path: str,
    cap: int,
    out: Sink,
    per_sandbox: PerSandbox[Any],
    redact: StreamRedactor,
    stats: SourceStats,
    after_chunk: Callable[[], None] | None = None,
) -> int:
    """Copy the newest `cap` bytes of a log file, redacted, gathering sandbox lines.

    Starts on a line boundary and reads whole lines, so redaction and splitting never see a
    line cut in two. `stats` is updated as chunks go, so a read error part-way still reports
    what was copied; `after_chunk` runs after each chunk is written out. Returns the bytes
    skipped at the start.
    """
    skipped = 0
    with open_regular(real_path) as src:  # a FIFO swapped in since it was measured: an error, not a hang
        size = os.fstat(src.fileno()).st_size
        if size > cap:
            src.seek(size - cap - 1)
            src.readline()
            skipped = src.tell()
        while chunk := src.read(BATCH):
            chunk += src.readline()
            chunk = redact.feed(chunk)
            out.write(chunk)
            newlines, groups = sandbox_groups(chunk)
            stats.bytes += len(chunk)
            stats.lines += newlines
            for sid, lines in groups.items():
                per_sandbox.write(sid.decode("utf-8", "replace"), lines)
            if after_chunk is not None:
                after_chunk()
    return skipped
