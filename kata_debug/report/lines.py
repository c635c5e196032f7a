"""Log lines for the timeline: which sandbox a line is about, and (for the lines kept) its time,
level, source and kind.

A bundle can hold a gigabyte of logs and the page keeps a few hundred lines per sandbox, so
the expensive part (decoding, timestamps, levels) runs only on lines that survive the caps.
What runs on every byte is `LogScanner.feed`: one bytes regex over 1 MiB blocks finds the
sandbox ids lines name (the forms Kata, containerd and the kubelet write them in), and only
those lines are looked at further.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from kata_debug.report.model import Entry, EntryKind, Level

#: A line longer than this is kept cut (a timeline quotes, it does not copy logs).
MAX_TEXT = 2000
#: Lines of one source kept per sandbox while reading: the first few and the newest.
HEAD, TAIL = 30, 240
#: Error lines past the head kept besides the tail, so an early failure is not lost.
ERRORS = 100
#: Distinct ids followed; past this a line naming a new id is only counted.
MAX_IDS = 4096

# How a line names its sandbox: Go logfmt `sandbox=`, runtime-rs `sid=`, JSON `"sandbox":`,
# containerd task paths, Kata state dirs, CRI "sandbox id" / `podSandboxID=` forms.
_SANDBOX_REF = re.compile(
    rb'(?:\bsandbox=|\bsid=|\bsandbox_id=|"sandbox":|"sandbox_id":|podSandboxID=|sandbox id |'
    rb"io\.containerd\.runtime\.v2\.task/[A-Za-z0-9_.-]+/|/run/vc/(?:vm|sbs)/|/run/kata/)"
    rb'(?:\\*")?([A-Za-z0-9][A-Za-z0-9_.-]{2,127})'
)
_ID_AT = re.compile(rb'(?:\\*")?([A-Za-z0-9][A-Za-z0-9_.-]{2,127})')

_TS = re.compile(r"(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d{2}:?\d{2})?")
_LEVEL = re.compile(r'\blevel=\\*"?([A-Za-z]+)|"level":\s*"([A-Za-z]+)"')
_KLOG = re.compile(r"^([EWIF])\d{4} \d{2}:\d{2}:\d{2}\.\d+")
_JOURNAL_IDENT = re.compile(r"^\S+ \S+ ([A-Za-z0-9_.@-]+?)(?:\[\d+\])?: ")
_VMCONSOLE = re.compile(r'vmconsole=\\*"((?:[^"\\]|\\.)*)\\*"|vmconsole=(\S+)')
_LEVELS: dict[str, Level] = {
    "trace": "debug",
    "trce": "debug",
    "debug": "debug",
    "debg": "debug",
    "info": "info",
    "notice": "info",
    "warn": "warning",
    "warning": "warning",
    "error": "error",
    "erro": "error",
    "fatal": "error",
    "panic": "error",
    "crit": "error",
}
_KLOG_LEVELS: dict[str, Level] = {"E": "error", "F": "error", "W": "warning", "I": "info"}
_KATA_MARKERS = ("containerd-shim-v2", "source=virtcontainers", "name=kata", "kata-agent", "kata-runtime")
_EVENT_IDENTS = {"containerd", "kubelet", "crio", "kernel"}


def parse_ts(text: str) -> datetime | None:
    """The first RFC 3339-like timestamp on a line, as UTC (no zone given: read as UTC)."""
    m = _TS.search(text)
    if m is None:
        return None
    date, clock, frac, zone = m.groups()
    frac = (frac or "")[:7]  # datetime keeps microseconds; logs carry nanoseconds
    zone = "+00:00" if zone in (None, "Z") else zone
    try:
        parsed = datetime.fromisoformat(f"{date}T{clock}{frac}{zone}")
    except ValueError:
        return None
    return parsed.astimezone(UTC)


def parse_level(text: str) -> Level:
    m = _LEVEL.search(text)
    if m:
        return _LEVELS.get((m.group(1) or m.group(2)).lower(), "info")
    k = _KLOG.search(text[text.find(": ") + 2 :] if _JOURNAL_IDENT.match(text) else text)
    if k:
        return _KLOG_LEVELS[k.group(1)]
    return "info"


def source_of(text: str, member_source: str) -> str:
    """The program that wrote a line: the journal identifier when the line has one."""
    m = _JOURNAL_IDENT.match(text)
    return m.group(1) if m else member_source


def member_source(path: str) -> str:
    """A label for lines of a member with no identifier of their own (`containerd.log`)."""
    name = path.rsplit("/", 1)[-1]
    if path.startswith("shim-logs/journal/") and name.endswith(".log"):
        return name[: -len(".log")]
    return name


def entry_from_line(raw: bytes, path: str, line: int, default_source: str) -> Entry:
    text = raw.decode("utf-8", "replace").rstrip("\r")
    if len(text) > MAX_TEXT:
        text = text[: MAX_TEXT - 1] + "…"
    source = source_of(text, default_source)
    ts, level = parse_ts(text), parse_level(text)
    kind: EntryKind
    console = _VMCONSOLE.search(text) if "vmconsole=" in text else None
    if console is not None:
        kind = "console"
        shown = console.group(1) if console.group(1) is not None else console.group(2)
        text = shown.replace('\\"', '"').replace("\\\\", "\\")
    elif source in ("kata", "kata-runtime") or any(k in text for k in _KATA_MARKERS):
        kind = "log"
    elif source in _EVENT_IDENTS or source.startswith(("containerd", "crio", "kubelet", "kern")):
        kind = "event"
    else:
        kind = "log"
    return Entry(kind, ts, source, level, text, path, line)


@dataclass
class Bucket:
    """The lines of one member that name one sandbox: bounded whatever the member's size.

    Keeps the first `HEAD` lines, the newest `TAIL`, and up to `ERRORS` error lines that fell
    out of the tail (so an early failure survives a flood of later noise), and a count.
    """

    path: str
    source: str
    count: int = 0
    head: list[tuple[int, bytes]] = field(default_factory=list)
    tail: deque[tuple[int, bytes, bool]] = field(default_factory=lambda: deque(maxlen=TAIL))
    errors: deque[tuple[int, bytes]] = field(default_factory=lambda: deque(maxlen=ERRORS))

    def add(self, lineno: int, raw: bytes, error: bool) -> None:
        self.count += 1
        if self.count <= HEAD:
            self.head.append((lineno, raw))
            return
        tail = self.tail
        if len(tail) == TAIL and tail[0][2]:
            self.errors.append(tail[0][:2])
        tail.append((lineno, raw, error))

    def kept(self) -> list[tuple[int, bytes]]:
        """Head, errors dropped from the middle, tail: in line order, each line once."""
        seen: dict[int, bytes] = {}
        for n, raw in self.head:
            seen[n] = raw
        for n, raw in self.errors:
            seen[n] = raw
        for n, raw, _ in self.tail:
            seen[n] = raw
        return sorted(seen.items())


class ByteSource(Protocol):
    """What a log member is read from: a bundle member's stream, or one teed to the analyzers."""

    def read(self, size: int = -1, /) -> bytes: ...


class LogScanner:
    """Lines naming sandboxes, per (sandbox, member), from log members read once in blocks."""

    def __init__(self) -> None:
        self.buckets: dict[str, dict[str, Bucket]] = {}
        self.lines = 0
        self.unfollowed = 0

    def scan(self, path: str, stream: ByteSource, block_size: int = 1 << 20) -> int:
        """Every line of one log member; returns its number of lines."""
        source = member_source(path)
        carry = b""
        lineno = 0
        local: dict[str, Bucket | None] = {}
        while chunk := stream.read(block_size):
            block = carry + chunk if carry else chunk
            cut = block.rfind(b"\n") + 1
            if cut == 0 and len(block) < (4 << 20):
                carry = block
                continue
            cut = cut or len(block)
            carry = block[cut:]
            lineno = self._block(path, source, block[:cut], lineno, local)
        if carry:
            lineno = self._block(path, source, carry + b"\n", lineno, local)
        self.lines += lineno
        return lineno

    def _block(self, path: str, source: str, block: bytes, lineno: int, local: dict[str, Bucket | None]) -> int:
        """Lines of a block (ending at a line end). Plain substring tests first: a regex
        scanning every byte position costs ~100x more than `bytes.find` over the same text
        (the error regexes start with a literal, which `re` searches for as fast as `find`)."""
        lines = block.split(b"\n")
        if lines and not lines[-1]:
            lines.pop()
        errors = _error_lines(block)
        for i, line in enumerate(lines):
            j = line.find(b"sandbox=")
            if j >= 0:
                m = _ID_AT.match(line, j + 8)
            elif b"andbox" in line or b"sid=" in line or b"/run/" in line or b"task/" in line:
                m = _SANDBOX_REF.search(line)
            else:
                continue
            if m is None:
                continue
            sid = m.group(1).decode("ascii")
            bucket = local.get(sid, False)
            if bucket is False:
                bucket = local[sid] = self._bucket(sid.rstrip("."), path, source)
            if bucket is None:
                self.unfollowed += 1
                continue
            bucket.add(lineno + i + 1, line, i in errors)  # type: ignore[union-attr]
        return lineno + len(lines)

    def _bucket(self, sid: str, path: str, source: str) -> Bucket | None:
        per = self.buckets.get(sid)
        if per is None:
            if len(self.buckets) >= MAX_IDS:
                return None
            per = self.buckets[sid] = {}
        return per.setdefault(path, Bucket(path, source))


_ERROR_MARKS = (
    re.compile(rb'level=\\*"?(?:[Ee][Rr][Rr]|[Ff]atal|FATAL|[Pp]anic|PANIC|[Cc]rit|CRIT)'),
    re.compile(rb'"level":\s*"(?:[Ee][Rr][Rr]|[Ff]atal|FATAL|[Pp]anic|PANIC|[Cc]rit|CRIT)'),
)


def _error_lines(block: bytes) -> set[int]:
    """Indexes (0-based) of the lines of a block that log at error level or worse."""
    starts = sorted(m.start() for pattern in _ERROR_MARKS for m in pattern.finditer(block))
    out: set[int] = set()
    line = pos = 0
    for start in starts:
        line += block.count(b"\n", pos, start)
        pos = start
        out.add(line)
    return out
