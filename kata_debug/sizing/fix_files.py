"""`limits --fix` on disk: read each file with fixable findings, edit it, write it back, re-analyse.

The text edits themselves are `fix.fix_text` (pure, per file). This module owns the parts
that touch the filesystem and decide what the command reports afterwards:

* a file is replaced in one rename with its permissions kept, so an interrupted fix never
  leaves half a manifest behind;
* after a real fix the report is recomputed from what the files now say, so the exit code
  tells whether warnings are left; a dry run changes nothing, so its report (and exit
  code) stays that of the files as they are.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from dataclasses import dataclass
from typing import Any

from kata_debug.sizing.fix import FileFix, fix_text
from kata_debug.sizing.inputs import parse_text
from kata_debug.sizing.limits import Document, Finding, Options, Report, analyse


@dataclass
class FixRun:
    """What `--fix` did (or, with `dry_run`, would do) and the report to show afterwards."""

    files: list[FileFix]
    dry_run: bool
    report: Report

    @property
    def applied(self) -> int:
        return sum(len(f.applied) for f in self.files)

    @property
    def changed_files(self) -> int:
        return sum(1 for f in self.files if f.changed)

    def to_json(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "files": [f.to_json() for f in self.files]}


async def fix_files(report: Report, docs: list[Document], opts: Options, dry_run: bool) -> FixRun:
    """Fix every file `report` has fixable findings in; the reading and writing run off the loop."""
    return await asyncio.to_thread(_fix_files, report, docs, opts, dry_run)


def _fix_files(report: Report, docs: list[Document], opts: Options, dry_run: bool) -> FixRun:
    by_file: dict[str, list[tuple[int, Finding]]] = {}
    for e in report.entries:
        for f in e.findings:
            if f.fix is not None and e.doc.path is not None:
                by_file.setdefault(e.doc.path, []).append((e.doc.index, f))
    fixes: list[FileFix] = []
    replaced: dict[str, list[Document]] = {}
    for path, items in by_file.items():
        with open(path, encoding="utf-8-sig", newline="") as fh:
            text = fh.read()
        ff = fix_text(path, text, items)
        fixes.append(ff)
        if ff.changed:
            if not dry_run:
                write_atomically(path, ff.fixed)
            replaced[path] = parse_text(ff.fixed, path, path)[0]
    if not replaced or dry_run:
        return FixRun(fixes, dry_run, report)
    return FixRun(fixes, dry_run, _reanalyse(report, docs, replaced, opts))


def _reanalyse(report: Report, docs: list[Document], replaced: dict[str, list[Document]], opts: Options) -> Report:
    """The report for the inputs with each rewritten file's documents swapped in, in input order."""
    new_docs: list[Document] = []
    done: set[str] = set()
    for d in docs:
        if d.path in replaced:
            if d.path not in done:
                new_docs.extend(replaced[d.path])
                done.add(d.path)
            continue
        new_docs.append(d)
    again = analyse(new_docs, opts)
    again.errors = report.errors
    return again


def write_atomically(path: str, text: str) -> None:
    """Replace the file in one rename, keeping its permissions (an interrupted fix leaves no half file)."""
    directory = os.path.dirname(os.path.abspath(path))
    mode = os.stat(path).st_mode & 0o7777
    fd, tmp = tempfile.mkstemp(prefix=".kata-debug-fix-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
