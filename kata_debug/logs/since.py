"""Where, in a log file, the lines of the last `--since` begin.

containerd and CRI-O log files (where a distribution writes them instead of the journal)
are appended in time order, each entry starting `time="2026-11-28T00:00:01.123456789Z"`
(logrus) or `2026-11-28T00:00:01Z` / `{"time":"..."}` . A binary search over the file on
those timestamps finds the first line at or after `since` in a few dozen small reads, so a
multi-gigabyte log is bounded by time as the journal is, without reading what is skipped.
Lines without a timestamp (continuations, panics) belong to the entry before them. A file
with no timestamp we can read is not cut at all: better too much than a silent gap.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import BinaryIO

#: Reads the timestamp a line starts with (None: the line has none). The default reads the
#: runtimes' own stamps; `kata_debug.logs.nodelogs` has syslog's, klog's and audit's.
Stamp = Callable[[bytes], datetime | None]

# The first timestamp of a line, in the forms the runtimes' loggers write.
_STAMP = re.compile(
    rb'^(?:time="?|\{"time":"|\{"ts":")?'
    rb"(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:?\d{2})?"
)
_PROBE = 64 * 1024  # bytes read at each step to find the next line with a timestamp
_LINEAR = 256 * 1024  # below this span the search reads forward


def line_time(line: bytes) -> datetime | None:
    """The timestamp a log line starts with (UTC when it names no zone), or None."""
    m = _STAMP.match(line)
    if m is None:
        return None
    base, frac, zone = m.groups()
    text = base.decode().replace(" ", "T") + (f".{frac.decode()[:6]:0<6}" if frac else "")
    if zone and zone != b"Z":
        z = zone.decode()
        text += z if ":" in z else f"{z[:3]}:{z[3:]}"
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        return None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t


def _next_stamp(fh: BinaryIO, offset: int, end: int, stamp: Stamp) -> tuple[int, datetime] | None:
    """The first line starting after `offset` (or at 0) that has a timestamp, before `end`."""
    fh.seek(offset)
    if offset:
        fh.readline()  # the rest of the line `offset` falls in
    while True:
        start = fh.tell()
        if start >= end:
            return None
        line = fh.readline(_PROBE)
        if not line:
            return None
        t = stamp(line)
        if t is not None:
            return start, t


def first_offset_since(fh: BinaryIO, size: int, since: datetime, stamp: Stamp = line_time) -> int:
    """Offset of the first entry at or after `since`; `size` when every entry is older.

    0 when the file has no timestamp we can read, or starts inside the window.
    """
    first = _next_stamp(fh, 0, size, stamp)
    if first is None or first[1] >= since:
        return 0
    lo, hi = first[0], size  # the entry at lo is older than since; the answer is in (lo, hi]
    while hi - lo > _LINEAR:
        mid = (lo + hi) // 2
        found = _next_stamp(fh, mid, hi, stamp)
        if found is None:
            hi = mid
        elif found[1] < since:
            lo = found[0]
        else:
            hi = mid
    fh.seek(lo)
    pos = lo
    while pos < size:
        line = fh.readline()
        if not line:
            break
        t = stamp(line)
        if t is not None and t >= since:
            return pos
        pos += len(line)
    return size
