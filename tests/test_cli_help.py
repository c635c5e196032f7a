"""`--help` wraps, it never cuts: at 60 and 80 columns no text is ellipsized and every option's
help appears whole (long example URIs fold onto the next line instead of losing their end)."""

from __future__ import annotations

from typing import Any

import pytest
import typer
from rich.text import Text

from kata_debug.cli.app import app
from tests.conftest import kata_debug

COMMANDS = [[], ["collect"], ["limits"], ["upload"], ["forward"], ["node-agent"], ["trace", "decode"], ["diagnose"]]


def _command(path: list[str]) -> Any:
    """The command object typer builds (its own click): params in the order help shows them."""
    cmd: Any = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]
    return cmd


def _squeezed(text: str) -> str:
    return "".join(text.split())


def _panels(help_text: str) -> dict[str, list[str]]:
    """Each boxed panel's lines (between its top and bottom border), by title."""
    panels: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in help_text.splitlines():
        if line.startswith("╭─ "):
            current = panels.setdefault(line[3:].split(" ─", 1)[0], [])
        elif line.startswith("╰"):
            current = None
        elif current is not None:
            current.append(line)
    return panels


def _help_column(lines: list[str], first_help: str) -> str:
    """The last column of a panel (the help), read top to bottom without whitespace."""
    first_word = first_help.split()[0]
    x = lines[0].find(" " + first_word + " ")
    if x < 0:
        x = lines[0].find(" " + first_word)
    assert x > 0, (first_word, lines[0])
    return _squeezed("".join(line[x + 1 :].rstrip().removesuffix("│") for line in lines))


@pytest.mark.parametrize("width", ["60", "80"])
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "kata-debug")
def test_help_wraps_and_never_cuts(command: list[str], width: str) -> None:
    proc = kata_debug(*command, "--help", env={"COLUMNS": width})
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout.decode()
    assert "…" not in text, text
    assert max(len(line) for line in text.splitlines()) <= int(width), text

    cmd = _command(command)
    first_paragraph = (cmd.help or "").split("\n\n")[0]
    assert _squeezed(Text.from_markup(first_paragraph).plain) in _squeezed(text)

    panels = _panels(text)
    by_panel: dict[str, list[Any]] = {}
    for param in cmd.params:
        if getattr(param, "hidden", False) or not getattr(param, "help", None):
            continue
        default = "Arguments" if param.param_type_name == "argument" else "Options"
        by_panel.setdefault(getattr(param, "rich_help_panel", None) or default, []).append(param)
    assert by_panel, "a command with options"
    for title, params in by_panel.items():
        lines = panels[title]
        helps = [Text.from_markup(str(getattr(p, "help", ""))).plain for p in params]
        shown = _help_column(lines, helps[0])
        for param, help_text in zip(params, helps, strict=True):
            assert _squeezed(help_text) in shown, f"{param.name}: {help_text!r} not whole at {width} columns"
        # The first column, read top to bottom: names may fold on a narrow terminal, never lose characters.
        names = "".join(line[2:].split()[0] for line in lines if len(line) > 2 and line[2] != " ")
        for param in params:
            long_names = [o for o in param.opts if o.startswith("--")] if param.param_type_name == "option" else []
            for opt in long_names:
                assert opt in names, f"{opt} not whole at {width} columns"
