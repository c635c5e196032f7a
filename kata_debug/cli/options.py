"""What every command shares about options: durations, sizes, and whether an option was given.

`parse_duration` (`--since`, timeouts) and `parse_size` (`--max-log-size`) turn bad text
into one `UsageError` line naming the option, never a traceback. `given` asks click where
a value came from: an option typed with its default value (`--parallel 8`) was still given,
which comparing the value with the default cannot tell.
"""

from __future__ import annotations

import inspect
import math
import re
import sys
from datetime import UTC, datetime, timedelta
from functools import partial
from types import SimpleNamespace
from typing import Any, Literal

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


def parse_since(text: str, option: str = "--since", now: datetime | None = None) -> timedelta:
    """How far back `--since` reaches: a duration with a unit (`30m`, `1h30m`) or an absolute
    RFC 3339 time (`2026-12-05T10:00:00Z`), turned into the span up to `now`.

    A bare number is refused: `--since 90` reads as minutes to some and seconds to others,
    and journalctl would take it as a date. A span reaching before 1900 is refused too
    (`collect.runner.check_since`): here, before any work, not as an overflow mid-run.
    """
    from kata_debug.collect.runner import check_since

    span = _since_span(text, option, now)
    check_since(span, text)
    return span


def _since_span(text: str, option: str, now: datetime | None) -> timedelta:
    s = text.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", s):
        raise UsageError(f"{option} {text!r}: a bare number has no unit (use e.g. {s}s, {s}m, {s}h)")
    if re.match(r"\d{4}-\d{2}-\d{2}[Tt ]", s):
        try:
            when = datetime.fromisoformat(s.replace("z", "Z").replace("Z", "+00:00"))
        except ValueError:
            raise UsageError(f"{option} {text!r}: not an RFC 3339 time (e.g. 2026-12-05T10:00:00Z)") from None
        if when.tzinfo is None:
            raise UsageError(f"{option} {text!r}: the time needs a UTC offset (Z or +01:00)")
        span = (now or datetime.now(UTC)) - when
        if span.total_seconds() <= 0:
            raise UsageError(f"{option} {text!r}: is in the future")
        return span
    try:
        return parse_duration(text, option)
    except UsageError:
        raise UsageError(
            f"{option} {text!r}: not a duration or time (use e.g. 30m, 24h, 7d, 1h30m, 2026-12-05T10:00:00Z)"
        ) from None


def human_size(n: int) -> str:
    """Bytes as people read them: `512 B`, `3.4 KiB`, `12.0 MiB`, `1.2 GiB` (binary units, like --max-log-size)."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def deprecated_alias(ctx: typer.Context, new_flag: str, new_name: str, old_flag: str, old_value: Any) -> bool:
    """Whether a deprecated spelling (`old_flag`) was used; prints one note saying what replaces it.

    Refuses the old and new spelling together: which one should win is a guess. Returns
    False when the old spelling was not given, so the caller keeps the new option's value.
    """
    if old_value is None or old_value == [] or old_value == ():
        return False
    if given(ctx, new_name):
        raise UsageError(f"{old_flag}: the old name of {new_flag}; give only {new_flag}")
    print(f"kata-debug: note: {old_flag} is deprecated; use {new_flag}", file=sys.stderr)
    return True


CompressionName = Literal["gzip", "zstd", "none"]  # bundle.writer.Compression, without importing the writer
#: Compression each bundle name implies, longest suffix first.
_COMPRESSION_SUFFIXES: tuple[tuple[str, CompressionName], ...] = (
    (".tar.zst", "zstd"),
    (".tzst", "zstd"),
    (".tar.gz", "gzip"),
    (".tgz", "gzip"),
    (".zst", "zstd"),
    (".gz", "gzip"),
    (".tar", "none"),
)


def bundle_compression(
    output: str | None, compression: CompressionName | None, default: CompressionName = "zstd"
) -> CompressionName:
    """The compression a bundle is written with: `--compression` if given, else what the
    output's name says (`.tar.zst` -> zstd), else `default`. A `--compression` that contradicts
    the name is refused: a `.tar.zst` file holding gzip fools every tool that opens it.
    """
    implied = None
    if output and output != "-":
        low = output.lower()
        implied = next((c for suffix, c in _COMPRESSION_SUFFIXES if low.endswith(suffix)), None)
    if compression is None:
        return implied or default
    if implied is not None and implied != compression:
        raise UsageError(f"--compression {compression}: conflicts with --output {output} (a {implied} name)")
    return compression


def real_metavars(command: Any) -> None:
    """Give every option of `command` and its subcommands a metavar people read, not a Python type.

    Flags take no value and show none; choices show `[a|b]`; other options keep the metavar
    their command gave (`--collector NAME`) or get one from their name (`--since` -> SINCE).
    Applied to the click command tree once, in `main`, so no command can forget it.
    """
    if getattr(command, "help", None):
        command.help = _join_paragraph_lines(command.help)
    params = list(getattr(command, "params", ()))
    if hasattr(command, "get_help_option"):  # created on first use; made (and cached) here to fix its metavar too
        help_option = command.get_help_option(SimpleNamespace(help_option_names=["--help"]))
        params += [help_option] if help_option is not None else []
    for param in params:
        if getattr(param, "param_type_name", "") == "argument":
            # An argument's name column already says what it is (BUNDLE, [PATH ...|-]); typer's
            # rich help adds a type column (<path>, <list[str]>) that only repeats it in Python.
            param.metavar = param.metavar or param.name.upper()
            param.display_type_rich = lambda ctx: None
            # Typer's usage line braces a required argument (`{BUNDLE}`) and brackets an optional
            # one even when its metavar already does (`[[PATH ...|-]]...`): show it as written.
            param._usage_display_name = partial(_usage_name, param.metavar, param.required, param.nargs)
            continue
        if getattr(param, "param_type_name", "") != "option":
            continue
        if isinstance(param.default, float) and param.default.is_integer():
            param.default = int(param.default)  # help says `[default: 60]`; click still passes 60.0
        if param.metavar is not None:
            continue
        if param.is_flag or param.count:
            param.metavar = ""
        elif (choices := _choices(param)) is not None:
            param.metavar = "[" + "|".join(str(getattr(c, "value", c)) for c in choices) + "]"
        else:
            long = max(param.opts, key=len).lstrip("-")
            param.metavar = long.rsplit("-", 1)[-1].upper()
    for sub in getattr(command, "commands", {}).values():
        real_metavars(sub)


def _usage_name(metavar: str, required: bool, nargs: int) -> str:
    """An argument as the usage line shows it: `BUNDLE`, `[BUNDLE]`, `[PATH ...|-]`."""
    name = metavar if required or metavar.startswith("[") else f"[{metavar}]"
    return name if nargs == 1 or "..." in name else f"{name}..."


def _join_paragraph_lines(text: str) -> str:
    """A docstring's paragraphs as one line each, so help wraps them to the terminal.

    Typer joins the lines of the first paragraph only; the later ones kept the docstring's
    own line breaks, which at 80 columns left a word or two alone on a line.
    """
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(p if p.startswith("\b") else " ".join(p.split()) for p in paragraphs)


def _choices(param: Any) -> list[Any] | None:
    """An option's choices: typer keeps them on its type descriptor, click on the param type."""
    for holder in (getattr(param, "type_descriptor", None), getattr(param, "type", None)):
        choices = getattr(holder, "choices", None)
        if choices is not None:
            return list(choices)
    return None


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
