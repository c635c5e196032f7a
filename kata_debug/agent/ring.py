"""The bounds on capturing: a per-node rate limit and a size ring for the captures directory.

A node whose pods crash-loop can fail a sandbox every few seconds for hours; without a
bound, captures would fill the disk the kubelet needs. The rate limit decides whether a
failure is captured at all (the rest are counted, so an operator still sees how many there
were); the ring removes the oldest captures once the directory holds more than its cap.
"""

from __future__ import annotations

import os
import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from kata_debug.agent.uploads import markers
from kata_debug.errors import UsageError

_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass(frozen=True)
class Rate:
    """At most `count` captures in any `seconds`-long window."""

    count: int
    seconds: float

    @classmethod
    def parse(cls, text: str, option: str = "--capture-rate") -> Rate:
        """`6/10m`, `1/s`, `20/1h` -> a Rate; one UsageError line for anything else."""
        m = _RATE.match(text)
        if m is None:
            raise UsageError(f"{option} {text!r}: not a rate (use N/DURATION, e.g. 6/10m)")
        count, amount, unit = int(m.group(1)), m.group(2), m.group(3)
        seconds = (float(amount) if amount else 1.0) * _UNITS[unit]
        if count < 1 or seconds <= 0:
            raise UsageError(f"{option} {text!r}: count and duration must be positive")
        return cls(count, seconds)


class RateLimit:
    """A sliding window over the times captures were allowed; refusals are only counted."""

    def __init__(self, rate: Rate) -> None:
        self.rate = rate
        self._allowed: deque[float] = deque()
        self.refused = 0

    def allow(self, now: float) -> bool:
        """Whether a capture may start at monotonic time `now` (and, if so, count it)."""
        while self._allowed and now - self._allowed[0] >= self.rate.seconds:
            self._allowed.popleft()
        if len(self._allowed) >= self.rate.count:
            self.refused += 1
            return False
        self._allowed.append(now)
        return True


def capture_files(directory: Path) -> list[tuple[Path, int]]:
    """Finished captures (`*.tar.gz`) in `directory`, oldest first, with their sizes on disk.

    A capture's sidecar (`<name>.json`) counts with it. Names start with the UTC time, so
    name order is age order, whatever the files' mtimes say after a copy.
    """
    rows: list[tuple[Path, int]] = []
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    for name in names:
        if not name.endswith(".tar.gz") or name.startswith("."):
            continue
        path = directory / name
        try:
            size = path.stat().st_size
        except OSError:
            continue
        side = path.with_name(name.removesuffix(".tar.gz") + ".json")
        try:
            size += side.stat().st_size
        except OSError:
            pass
        rows.append((path, size))
    return rows


def enforce_size(directory: Path, cap: int) -> list[str]:
    """Remove the oldest captures until the directory's captures fit in `cap` bytes.

    The newest capture always stays, even alone above the cap: it is the one an operator is
    about to look for. Returns the names removed (blocking I/O: call it from a thread).
    """
    rows = capture_files(directory)
    total = sum(size for _, size in rows)
    removed: list[str] = []
    for path, size in rows[:-1]:
        if total <= cap:
            break
        # With its record and its upload markers: nothing of it is left, not even in the upload queue.
        for victim in (path, path.with_name(path.name.removesuffix(".tar.gz") + ".json"), *markers(path)):
            try:
                victim.unlink()
            except FileNotFoundError:
                pass
        total -= size
        removed.append(path.name)
    return removed
