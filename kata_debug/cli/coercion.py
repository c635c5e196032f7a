"""Option values converted without pydantic: the CLI's start-up is part of every collection.

Recent typer versions convert every parameter of the command being run through a pydantic
TypeAdapter: importing pydantic and building ~35 adapters for `collect` costs about a tenth
of a CPU-second, about a tenth of what writing a 50 MiB bundle costs (the `tar czf` bar in
bench/bundle.py). Our options use a handful of plain types (str, bool, int, float, Path,
str enums, lists of str); `install` gives each such parameter a converter that gives the
same values and the same error messages, and leaves anything else to typer.

This relies on typer internals (`_TyperParameter._runtime_param`, `RuntimeParam`); when
they are not there (an older typer converts through click, without pydantic; a newer one
may differ) it does nothing and typer converts as usual.
"""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from types import SimpleNamespace
from typing import Any

try:  # typer >= 0.2x with pydantic coercion; otherwise there is nothing to replace
    from typer._click.exceptions import BadParameter
    from typer._coercion import RuntimeParam
    from typer._param_types import coerce_cli_choice, coerce_cli_path
    from typer.core import _TyperParameter
except ImportError:  # pragma: no cover - depends on the installed typer
    RuntimeParam = None  # type: ignore[assignment,misc]

_INT = re.compile(r"\s*[+-]?[0-9](?:_?[0-9])*(?:\.0*)?\s*")
_TRUE = {"1", "on", "t", "true", "y", "yes"}
_FALSE = {"0", "off", "f", "false", "n", "no"}


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _to_int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = _text(value)
    if not text.isascii() or _INT.fullmatch(text) is None:
        raise ValueError("Input should be a valid integer, unable to parse string as an integer")
    return int(text.strip().split(".")[0])


def _to_float(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = _text(value)
    try:
        if not text.isascii():
            raise ValueError
        return float(text)
    except ValueError:
        raise ValueError("Input should be a valid number, unable to parse string as a number") from None


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = _text(value).strip().lower()
    if text == "" or text in _FALSE:
        return False
    if text in _TRUE:
        return True
    raise ValueError("Input should be a valid boolean, unable to interpret input")


if RuntimeParam is not None:

    class _Plain(RuntimeParam):
        """One parameter of a plain type, converted in a line of Python."""

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            if isinstance(value, (list, tuple)):
                return [self._one(v, param, ctx) for v in value]
            return self._one(value, param, ctx)

        def _one(self, value: Any, param: Any, ctx: Any) -> Any:
            kind = self.annotation
            if kind is list or getattr(kind, "__origin__", None) is list:
                kind = kind.__args__[0]
            info = self.parameter_info
            try:
                if kind is str:
                    return _text(value)
                if kind is bool:
                    return _to_bool(value)
                if kind is int or kind is float:
                    number: float = _to_int(value) if kind is int else _to_float(value)
                    return _bounded(number, info.min, info.max, bool(info.clamp), kind)
                if isinstance(kind, type) and issubclass(kind, Enum):
                    return coerce_cli_choice(value, choices=list(kind), case_sensitive=info.case_sensitive, ctx=ctx)
                # Path: typer's own checks (exists, dir_okay...), given a Path so it needs no pydantic.
                given = Path(_text(value)) if isinstance(value, (str, bytes)) else value
                return coerce_cli_path(given, info, path_type=info.path_type or kind, param=param, ctx=ctx)
            except ValueError as exc:
                raise BadParameter(str(exc), ctx=ctx, param=param) from None


def _bounded(number: float, low: float | None, high: float | None, clamp: bool, kind: type) -> float:
    if low is not None and number < low:
        if not clamp:
            raise ValueError(f"Input should be greater than or equal to {low}")
        number = kind(low)
    if high is not None and number > high:
        if not clamp:
            raise ValueError(f"Input should be less than or equal to {high}")
        number = kind(high)
    return number


def _plain(annotation: Any, info: Any) -> bool:
    """Whether `_Plain` converts this parameter exactly as typer would."""
    if getattr(annotation, "__origin__", None) is list:
        args: tuple[Any, ...] = getattr(annotation, "__args__", ())
        return args == (str,)
    if info.parser is not None or getattr(info, "formats", None):
        return False
    if annotation in (str, bool, int, float):
        return True
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return True
    return annotation is Path and info.path_type in (None, Path)


def install(command: Any) -> None:
    """Give every plain parameter of `command` and its subcommands the pydantic-free converter."""
    if RuntimeParam is None:
        return
    params = list(getattr(command, "params", ()))
    if hasattr(command, "get_help_option"):  # made on first use and cached: --help is a parameter too
        params.append(command.get_help_option(SimpleNamespace(help_option_names=["--help"])))
    for param in params:
        if not isinstance(param, _TyperParameter) or getattr(param, "_runtime_param", "absent") is not None:
            continue
        desc = param.type_descriptor
        if desc.file_annotation is None and _plain(desc.annotation, desc.parameter_info):
            param._runtime_param = _Plain(parameter_info=desc.parameter_info, annotation=desc.annotation)
    for sub in getattr(command, "commands", {}).values():
        install(sub)
