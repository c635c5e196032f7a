"""Parse `--since` style durations (`90s`, `30m`, `24h`, `7d`, `1h30m`)."""

from __future__ import annotations

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
