"""What every command shares about options: durations, sizes, and whether an option was given.

`parse_duration` (`--since`, timeouts) and `parse_size` (`--max-log-size`) turn bad text
into one `UsageError` line naming the option, never a traceback. `given` asks click where
a value came from: an option typed with its default value (`--parallel 8`) was still given,
which comparing the value with the default cannot tell.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

import typer

from kata_debug.errors import UsageError

_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def given(ctx: typer.Context, name: str) -> bool:
    """Whether the option with parameter name `name` was set by the user (command line or its
    environment variable), as opposed to left at its default.

    The source is compared by name: newer typer releases carry their own copy of click, whose
    `ParameterSource` is not click's.
    """
    source = ctx.get_parameter_source(name)
    if source is None:
        raise ValueError(f"{ctx.command_path}: no parameter named {name!r}")  # a typo in the caller
    return source.name not in ("DEFAULT", "DEFAULT_MAP")


def parse_duration(text: str, option: str = "--since") -> timedelta:
    """`90`, `30m`, `24h`, `7d`, `1h30m` -> a timedelta (a bare number is seconds)."""
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
    try:
        return timedelta(seconds=total)
    except OverflowError:
        raise UsageError(f"{option} {text!r}: too long a duration") from None


def parse_since(text: str) -> timedelta:
    """`--since`: a duration that does not reach before 1900 (checked here, before any work)."""
    from kata_debug.collect.runner import check_since

    since = parse_duration(text, "--since")
    check_since(since)
    return since


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
