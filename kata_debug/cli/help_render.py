"""Help text wraps, it is never cut.

Typer renders `--help` with rich: options in a table whose cells (and the `Columns` that
holds an option's help and its `[default: ...]`) overflow with an ellipsis. A word wider than
its column (an example path such as `hvsock:///run/vc/vm/<sid>/clh.sock[?port=N]` at 80
columns) then loses its end, which is the part a new user needs. Text whose own overflow is
"fold" overrides the table's setting, so every help text typer builds is made to fold: a
long word continues on the next line, nothing is dropped.

Typer has no public setting for this; the two builders wrapped here are the ones every help
text goes through (typer 0.12 to 0.29). If a typer release renames them, help is rendered
as typer does by default and tests/test_cli_help.py fails.

Nothing here imports rich until help is actually rendered: `install` only wraps typer's
`format_help`, so a `collect` run keeps its start-up free of rich (tests/test_cli_startup.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions, RenderResult
    from rich.measure import Measurement
    from rich.text import Text

#: typer's help builders, and whether what they build goes into a table cell.
_BUILDERS = {"_make_rich_text": False, "_get_parameter_help": True, "_make_command_help": True}


class _Narrowable:
    """A help cell that may be made as narrow as a few characters.

    Rich gives a table column at least its longest word; one long example URL in an option's
    help then claims most of a narrow terminal and the option names beside it are cut
    instead. Measured this way, the help column is the one that gives way (and folds).
    """

    def __init__(self, renderable: Any) -> None:
        self.renderable = renderable

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        from rich.measure import Measurement

        m = Measurement.get(console, options, self.renderable)
        return Measurement(min(m.minimum, _NARROWEST), m.maximum)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.renderable


#: The width a help cell may be squeezed to before the names beside it are.
_NARROWEST = 12


def _fold(renderable: Any) -> Any:
    from rich.columns import Columns
    from rich.text import Text

    if isinstance(renderable, Text):
        renderable.overflow = "fold"
    elif isinstance(renderable, Columns):
        for item in renderable.renderables:
            _fold(item)
    return renderable


def _folding(builder: Callable[..., Any], *, in_table: bool) -> Callable[..., Any]:
    @functools.wraps(builder)
    def build(*args: Any, **kwargs: Any) -> Any:
        built = _fold(builder(*args, **kwargs))
        return _Narrowable(built) if in_table else built

    build.__dict__["_kata_debug_folds"] = True
    return build


class _FoldingHighlighter:
    """typer styles option names through module-level highlighters: the names fold too (on a
    terminal too narrow for the table's columns rich would otherwise shorten them to "--spool-si…")."""

    _kata_debug_folds = True

    def __init__(self, highlighter: Callable[[Any], Text]) -> None:
        self._highlighter = highlighter

    def __call__(self, text: Any) -> Text:
        folded: Text = _fold(self._highlighter(text))
        return folded


_HIGHLIGHTERS = ("highlighter", "negative_highlighter", "types_highlighter")


def install() -> None:
    """Make typer's help fold long words instead of ellipsizing them (idempotent).

    Wraps typer's `format_help` of commands and groups: the rich builders are patched the
    first time help is rendered, so rich is imported only by a run that prints help.
    """
    from typer import core

    for cls in (core.TyperCommand, core.TyperGroup):
        format_help = cls.format_help
        if getattr(format_help, "_kata_debug_folds", False):
            continue

        def folding_help(self: Any, ctx: Any, formatter: Any, _format_help: Any = format_help) -> None:
            _patch_rich_utils()
            _format_help(self, ctx, formatter)

        folding_help.__dict__["_kata_debug_folds"] = True
        cls.format_help = folding_help  # type: ignore[method-assign]


def _patch_rich_utils() -> None:
    try:
        from typer import rich_utils
    except ImportError:  # typer without rich: click's formatter wraps and never cuts
        return
    for name, in_table in _BUILDERS.items():
        builder = getattr(rich_utils, name, None)
        if callable(builder) and not getattr(builder, "_kata_debug_folds", False):
            setattr(rich_utils, name, _folding(builder, in_table=in_table))
    for name in _HIGHLIGHTERS:
        highlighter = getattr(rich_utils, name, None)
        if callable(highlighter) and not getattr(highlighter, "_kata_debug_folds", False):
            setattr(rich_utils, name, _FoldingHighlighter(highlighter))
