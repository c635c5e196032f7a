"""`kata-debug report`: one self-contained HTML page a maintainer reads instead of a tarball.

`gather` reads a bundle once into a typed `Report`; `render` turns it into the page;
`write_report` does both and writes the file (blocking: run it in a worker thread).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kata_debug.errors import OutputError, UsageError
from kata_debug.report.gather import gather
from kata_debug.report.html import render
from kata_debug.report.model import Report

__all__ = ["Report", "ReportWritten", "gather", "render", "write_report"]


@dataclass(frozen=True)
class ReportWritten:
    path: Path
    bytes: int
    sandboxes: int
    findings: int
    entries: int
    #: Sandboxes with a section of their own (the rest are listed by id past the cap).
    sandbox_sections: int = 0
    captures: int = 0


def write_report(bundle: Path, output: Path, *, force: bool = False) -> ReportWritten:
    """Read `bundle` once and write its page to `output` (replaced only with `force`).

    Written to a temporary file next to `output` and renamed, so a reader never sees half a
    page and a failed run leaves an existing report as it was.
    """
    if output.exists() and not force:
        raise UsageError(f"{output}: already exists (use --force to replace it)")
    if output.is_dir():
        raise UsageError(f"{output}: is a directory")
    report = gather(bundle, label=str(bundle))
    parent = output.parent if str(output.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".partial", dir=parent)
    except OSError as exc:
        raise OutputError(f"{output}: cannot write: {exc.strerror}") from None
    size = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for piece in render(report):
                fh.write(piece)
                size += len(piece.encode("utf-8"))
        os.chmod(tmp, 0o644)
        os.replace(tmp, output)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"{output}: cannot write: {exc.strerror}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    sandboxes = [sb for n in report.nodes for sb in n.sandboxes]
    in_captures = [sb for n in report.nodes for c in n.captures for sb in c.sandboxes]
    return ReportWritten(
        path=output,
        bytes=size,
        sandboxes=len(sandboxes) + sum(len(n.sandboxes_omitted) for n in report.nodes),
        findings=len(report.findings),
        entries=sum(len(sb.entries) + len(sb.spans) for sb in sandboxes + in_captures),
        sandbox_sections=len(sandboxes),
        captures=sum(len(n.captures) + len(n.captures_omitted) for n in report.nodes),
    )
