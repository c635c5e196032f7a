"""`kata-debug report BUNDLE [-o FILE] [--force] [--format text|json]`: the bundle as one HTML page.

Options and output only: `kata_debug.report` reads the bundle and writes the page. The work
is blocking file I/O (a tar stream, megabytes of HTML), so it runs in a worker thread under
an event loop like every other command. Exit codes: 0 written, 2 bad input (not a bundle,
output exists without --force), 1 the page could not be written.
"""

from __future__ import annotations

import asyncio
import json
import re
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from kata_debug.errors import UsageError

if TYPE_CHECKING:
    from kata_debug.report import ReportWritten


def register(app: typer.Typer) -> None:
    app.command("report")(report)


def default_output(bundle: Path) -> Path:
    """`kata-debug-node-1-….tar.zst` -> `kata-debug-node-1-….html`, in the current directory."""
    name = re.sub(r"(\.tar(\.gz|\.zst)?|\.tgz)$", "", bundle.name.rstrip("/")) or "kata-debug"
    return Path(f"{name}.html")


class ReportFormat(str, Enum):
    text = "text"
    json = "json"


def report(
    ctx: typer.Context,
    bundle: Path = typer.Argument(..., help="A node or cluster bundle: .tar.gz, .tar.zst, .tar or a directory."),
    output: Path | None = typer.Option(
        None, "--output", "-o", metavar="FILE", help="The HTML file (default: the bundle's name with .html, here)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace the output file if it exists."),
    output_format: ReportFormat = typer.Option(ReportFormat.text, "--format", help="The summary printed."),
    output_format_old: ReportFormat | None = typer.Option(None, "--output-format", hidden=True),
) -> None:
    """Write one self-contained HTML page (findings, nodes, a timeline per sandbox) from a bundle."""
    from kata_debug.cli.options import deprecated_alias

    if deprecated_alias(ctx, "--format", "output_format", "--output-format", output_format_old):
        assert output_format_old is not None
        output_format = output_format_old
    if not bundle.exists():
        raise UsageError(f"{bundle}: no such file or directory")
    target = output or default_output(bundle)
    done = asyncio.run(_run(bundle, target, force))
    summary = {
        "output": str(done.path),
        "bytes": done.bytes,
        "sandboxes": done.sandboxes,
        "sandbox_sections": done.sandbox_sections,
        "captures": done.captures,
        "findings": done.findings,
        "entries": done.entries,
    }
    if output_format is ReportFormat.json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(
            f"wrote {done.path} ({done.bytes / (1 << 20):.1f} MiB): {done.sandboxes} sandbox(es)"
            f"{f' ({done.sandbox_sections} with a section)' if done.sandbox_sections < done.sandboxes else ''}, "
            f"{done.captures} capture(s), {done.findings} finding(s), {done.entries} timeline entries"
        )


async def _run(bundle: Path, target: Path, force: bool) -> ReportWritten:
    from kata_debug.report import write_report

    return await asyncio.to_thread(write_report, bundle, target, force=force)
