"""Option types every command shares: durations (`--since`, timeouts) and sizes (`--max-log-size`).

Each parser turns bad text into one `UsageError` line naming the option, never a traceback.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

from kata_debug.errors import UsageError

_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str, option: str = "--since") -> timedelta:
    s = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", s):
        return timedelta(seconds=float(s))
    pos, total = 0, 0.0
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s:
        raise UsageError(f"{option} {text!r}: not a duration (use e.g. 30m, 24h, 7d, 1h30m)")
    return timedelta(seconds=total)


def parse_size(text: str, option: str) -> int:
    """`50M`, `1G`, `512K`, `1048576` -> bytes (binary units: logs are measured in MiB)."""
    units = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    s = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = s[-1] if s and s[-1] in "kmg" else ""
    try:
        value = float(s[: len(s) - len(unit)])
    except ValueError:
        raise UsageError(f"{option} {text!r}: not a size (use e.g. 50M, 1G)") from None
    if not math.isfinite(value):
        raise UsageError(f"{option} {text!r}: not a size (use e.g. 50M, 1G)")
    if value <= 0:
        raise UsageError(f"{option} {text!r}: must be positive")
    size = int(value * units[unit])
    if size < 1:
        raise UsageError(f"{option} {text!r}: must be at least 1 byte")
    return size
