"""Copy a log file redacted and index its lines per sandbox: the CPU-heavy half of shim-logs.

This is pure Python work on bytes that holds the GIL, so it is kept free of asyncio and of
the bundle writer: the shim-logs collector runs it in a thread for small inputs and in a
separate scanner process (`logscan_worker`) for large ones, where it cannot starve the
threads that compress the bundle. Both run this very code, so their output is identical.

A sandbox's lines are not copied again: the index says, per log member, how many lines
name it and where the first and last are (`grep -n -F <id>` finds them all). Indexing
avoids Python work per byte: the chunk is split into lines and a literal-prefixed regex is
mapped over them in C.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from kata_debug.logs.logfmt import parse_line, sandbox_of
from kata_debug.redact.redactor import StreamRedactor

BATCH = 1 << 20
#: The most read past the measured end to finish the last line copied.
LINE_TAIL_MAX = 1 << 20
MAX_SANDBOXES = 512
_SANDBOX_FIELD = re.compile(rb'sandbox="?([A-Za-z0-9][A-Za-z0-9_.-]*)')


class Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...


@dataclass
class SourceStats:
    """What one log source yielded; goes into shim-logs/summary.json as is."""

    source: str
    lines: int = 0
    bytes: int = 0
    error: str | None = None


#: A sandbox id as it may name a bundle member or an index key: Kata's are 64 hex digits,
#: tests and other runtimes use shorter names. Anything else (`../x`, a path, 10 KiB of junk
#: from a mangled line) is not a sandbox id: it is counted, never used.
_VALID_SID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*")
_MAX_SID = 128


def valid_sandbox_id(sid: str) -> bool:
    return len(sid) <= _MAX_SID and _VALID_SID.fullmatch(sid) is not None


@dataclass
class SandboxLines:
    """Where one sandbox's lines are in one log member: how many, first and last line (1-based)."""

    lines: int
    first_line: int
    last_line: int


class SandboxIndex:
    """Per sandbox, per log member, where its lines are: the per-sandbox view, stored once.

    At most MAX_SANDBOXES sandboxes are indexed; lines of further ones are counted in
    `overflow`, lines naming an id that is not a valid sandbox id in `rejected`. `known` is
    the set of sandboxes indexed so far, which may be shared: an index continuing another
    (a scanner process's, per file, after the collector's journal) admits exactly the
    sandboxes one index over everything would.
    """

    def __init__(self, known: set[str] | None = None) -> None:
        self.sandboxes: dict[str, dict[str, SandboxLines]] = {}
        self.known = set() if known is None else known
        self.overflow = 0
        self.rejected = 0

    def add(self, sid: str, member: str, count: int, first: int, last: int) -> None:
        if not valid_sandbox_id(sid):
            self.rejected += count
            return
        members = self.sandboxes.get(sid)
        if members is None:
            if sid not in self.known:
                if len(self.known) >= MAX_SANDBOXES:
                    self.overflow += count
                    return
                self.known.add(sid)
            members = self.sandboxes[sid] = {}
        seen = members.get(member)
        if seen is None:
            members[member] = SandboxLines(count, first, last)
        else:
            seen.lines += count
            seen.last_line = last

    def merge(self, other: SandboxIndex) -> None:
        """Fold in another index (a scanner process's), as if one index had seen both."""
        for sid, members in other.sandboxes.items():
            for member, at in members.items():
                self.add(sid, member, at.lines, at.first_line, at.last_line)
        self.overflow += other.overflow
        self.rejected += other.rejected

    def to_json(self) -> dict[str, dict[str, dict[str, int]]]:
        return {
            sid: {m: {"lines": a.lines, "first_line": a.first_line, "last_line": a.last_line} for m, a in ms.items()}
            for sid, ms in sorted(self.sandboxes.items())
        }

    @classmethod
    def from_json(
        cls, data: dict[str, dict[str, dict[str, int]]], overflow: int = 0, rejected: int = 0
    ) -> SandboxIndex:
        index = cls()
        for sid, members in data.items():
            for member, a in members.items():
                index.add(sid, member, a["lines"], a["first_line"], a["last_line"])
        index.overflow += overflow
        index.rejected += rejected
        return index


def sandbox_lines(chunk: bytes) -> tuple[int, dict[str, tuple[int, int, int]]]:
    """The newlines in `chunk`, and per sandbox id named in it: (lines, first, last) line index (0-based).

    Go shim lines carry `sandbox=<id>` (the first occurrence on a line wins), found by a
    regex mapped over the lines in C. Only chunks with runtime-rs/JSON shapes pay for the
    full line parser, on the lines that have no `sandbox=`.
    """
    lines = chunk.split(b"\n")
    found: dict[bytes, list[int]] = {}
    for i, m in enumerate(map(_SANDBOX_FIELD.search, lines)):
        if m is not None:
            at = found.get(m[1])
            if at is None:
                found[m[1]] = [1, i, i]
            else:
                at[0] += 1
                at[2] = i
    out = {sid.decode("utf-8", "replace"): (n, a, b) for sid, (n, a, b) in found.items()}
    if b"kata-runtime" in chunk or b'"sandbox"' in chunk:
        for i, line in enumerate(lines):
            if b"sandbox=" not in line and (b"kata-runtime" in line or b'"sandbox"' in line):
                brace = line.find(b"{")  # a journal line: the message after the `ident[pid]: ` prefix
                text = line[brace:] if brace > 0 and line[:brace].rstrip().endswith(b":") else line
                named = sandbox_of(parse_line(text.decode("utf-8", "replace")))
                if named:
                    n, a, b = out.get(named, (0, i, i))
                    out[named] = (n + 1, min(a, i), max(b, i))
    return len(lines) - 1, out


def copy_log(
    src: BinaryIO,
    cap: int,
    out: Sink,
    index: SandboxIndex,
    member: str,
    redact: StreamRedactor,
    stats: SourceStats,
    after_chunk: Callable[[], None] | None = None,
) -> int:
    """Copy the newest `cap` bytes of log file `src`, redacted, indexing its sandbox lines under `member`.

    `src` is the file as it was opened and measured (a node file: opened once, component by
    component inside the host root): it is read from wherever its position is left, never
    reopened by path, so a log swapped for a symlink since cannot lead the copy elsewhere.
    The caller closes it.

    Starts on a line boundary and reads whole lines, so redaction and indexing never see a
    line cut in two. `stats` is updated as chunks go, so a read error part-way still reports
    what was copied; `after_chunk` runs after each chunk is written out. Returns the bytes
    skipped at the start.
    """
    skipped = 0
    size = os.fstat(src.fileno()).st_size
    if size > cap:
        src.seek(size - cap - 1)
        src.readline()
        skipped = src.tell()
    else:
        src.seek(0)
    # Up to the size measured, plus the rest of the line it ends in: a log still being
    # written (or a newline-less line appended meanwhile) cannot keep the copy going.
    # A line longer than a chunk is cut where no secret straddles the cut (`redact.cut`).
    left = size - skipped
    carry = b""
    while left > 0 and (chunk := src.read(min(BATCH, left))):
        chunk += src.readline(LINE_TAIL_MAX)
        left -= len(chunk)
        chunk, carry = carry + chunk, b""
        if left > 0 and not chunk.endswith(b"\n"):
            chunk, carry = redact.cut(chunk)
        chunk = redact.feed(chunk)
        write_indexed(chunk, out, index, member, stats)
        if after_chunk is not None:
            after_chunk()
    if carry:
        write_indexed(redact.feed(carry), out, index, member, stats)
    return skipped


def write_indexed(chunk: bytes, out: Sink, index: SandboxIndex, member: str, stats: SourceStats) -> None:
    """Write redacted whole lines to `out`, indexing the sandboxes they name; `stats` counts them."""
    out.write(chunk)
    newlines, found = sandbox_lines(chunk)
    base = stats.lines + 1  # line numbers are 1-based, as `sed -n` and `grep -n` count
    for sid, (n, first, last) in found.items():
        index.add(sid, member, n, base + first, base + last)
    stats.bytes += len(chunk)
    stats.lines += newlines
