"""What the CLI imports before it works, and how it converts option values.

Start-up is part of every collection's cost (bench/bundle.py compares a whole `collect`
with `tar czf`): `kata-debug --version` and a `collect` run import neither rich (a run that
prints no rich text), nor pydantic (option values are converted by `cli.coercion`), nor
the cluster, upload and trace libraries. The converter must give what typer's own would:
the same values, the same one-line errors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from enum import Enum
from pathlib import Path
from typing import Any

import pytest
import typer
import typer.main

from kata_debug.cli import coercion
from tests.conftest import REPO
from tests.hostroots import kata_node

#: Never needed to collect one node or print the version.
HEAVY = {"rich", "pydantic", "pydantic_core", "aiohttp", "kubernetes", "opentelemetry", "markdown_it"}

_RUN = """
import json, runpy, sys
out = sys.argv.pop(1)
sys.argv[0] = "kata-debug"
try:
    runpy.run_module("kata_debug", run_name="__main__")
except SystemExit:
    pass
finally:
    with open(out, "w") as fh:
        json.dump(sorted({m.split(".")[0] for m in sys.modules}), fh)
"""


def _imported(tmp_path: Path, *args: str) -> set[str]:
    """Top-level modules loaded by the real CLI in its own process, run with `args`."""
    out = tmp_path / "modules.json"
    proc = subprocess.run(
        [sys.executable, "-c", _RUN, str(out), *args],
        capture_output=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert out.exists(), proc.stderr.decode()
    return set(json.loads(out.read_text()))


def test_version_imports_nothing_heavy(tmp_path: Path) -> None:
    assert _imported(tmp_path, "--version") & HEAVY == set()


def test_a_collect_run_imports_nothing_heavy(tmp_path: Path) -> None:
    root = kata_node(tmp_path / "host")
    bundle = tmp_path / "b.tar.zst"
    mods = _imported(
        tmp_path, "collect", "--host-root", str(root), "-o", str(bundle), "-c", "oci-specs", "--format", "json"
    )
    assert bundle.is_file()  # it did collect
    assert "kata_debug" in mods and "typer" in mods
    assert mods & HEAVY == set()


def test_collect_help_needs_rich_only_to_render_itself(tmp_path: Path) -> None:
    assert _imported(tmp_path, "collect", "--help") & (HEAVY - {"rich", "markdown_it"}) == set()


# ---- the converter gives what typer's own gives ---------------------------------------------


class Colour(str, Enum):
    red = "red"
    blue = "blue"


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.command()
    def run(
        name: str = typer.Option("x", "--name"),
        count: int = typer.Option(1, "--count", min=1),
        ratio: float = typer.Option(0.5, "--ratio"),
        flag: bool = typer.Option(False, "--flag"),
        where: Path = typer.Option(Path("/"), "--where"),
        colour: Colour = typer.Option(Colour.red, "--colour"),
        many: list[str] | None = typer.Option(None, "--many"),
        maybe: float | None = typer.Option(None, "--maybe"),
    ) -> None:
        print(json.dumps([name, count, ratio, flag, str(where), colour.value, many, maybe]))

    @app.command()
    def other() -> None:
        """A second command, so `run` is a subcommand as in kata-debug."""

    return app


def _outcome(args: list[str], fast: bool, capsys: pytest.CaptureFixture[str]) -> Any:
    command = typer.main.get_command(_app())
    if fast:
        coercion.install(command)
    try:
        command.main(args=["run", *args], standalone_mode=False)
    except typer.TyperException as exc:
        return ("error", " ".join(exc.format_message().replace("Value error, ", "").split()))
    return ("ok", json.loads(capsys.readouterr().out))


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--name", "a b", "--count", "3", "--ratio", "2", "--where", "rel/dir", "--colour", "blue"],
        ["--count", " 12 "],
        ["--count", "1_000"],
        ["--count", "+3"],
        ["--count", "2.0"],
        ["--count", "1.5"],
        ["--count", "0x10"],
        ["--count", "\u0663"],  # a non-ASCII digit: int() takes it, typer does not
        ["--count", "0"],
        ["--ratio", "1e3"],
        ["--ratio", "inf"],
        ["--ratio", "abc"],
        ["--ratio", ""],
        ["--maybe", "7"],
        ["--colour", "green"],
        ["--many", "a", "--many", "b"],
        ["--flag"],
        ["--where", ""],
    ],
)
def test_converted_values_and_errors_match_typer(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    expected = _outcome(args, fast=False, capsys=capsys)
    assert _outcome(args, fast=True, capsys=capsys) == expected


def test_every_kata_debug_option_gets_the_fast_converter() -> None:
    """A new option of an unusual type would bring pydantic back: it must be a plain one."""
    from typer.core import _TyperParameter

    from kata_debug.cli.app import app

    command = typer.main.get_command(app)
    coercion.install(command)
    slow: list[str] = []

    def walk(cmd: Any, path: str) -> None:
        for p in cmd.params:
            if isinstance(p, _TyperParameter) and not isinstance(p._runtime_param, coercion._Plain):
                slow.append(f"{path} {p.name}")
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, f"{path} {name}")

    walk(command, "kata-debug")
    assert slow == []
