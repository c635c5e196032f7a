"""`kata-debug diagnose [BUNDLE]`: name the root cause of failed Kata sandboxes.

With BUNDLE, read it (node or cluster bundle, tarball or directory) once and print the
ranked findings. Without, collect the local node into a temporary bundle first (same
options as `collect`) and diagnose that; `--output` keeps that bundle, so the evidence
paths in the findings still point somewhere.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import textwrap
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import typer

from kata_debug.cli import redact_config
from kata_debug.errors import KataDebugError, UsageError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

    from kata_debug.analyze.diagnose import Diagnosis

#: Exit code when diagnose's own collection wrote nothing to diagnose.
EXIT_NOTHING_COLLECTED = 4


class DiagnoseFormat(str, Enum):
    text = "text"
    json = "json"


class NothingCollected(KataDebugError):
    exit_code = EXIT_NOTHING_COLLECTED


def format_text(diagnosis: object, out: TextIO, *, limit: int | None = None) -> None:
    """Findings for a human: most likely root cause first, evidence quoted, fix last."""
    from kata_debug.analyze.diagnose import Diagnosis

    assert isinstance(diagnosis, Diagnosis)
    errors = sum(1 for f in diagnosis.findings if f.severity == "error")
    warnings = sum(1 for f in diagnosis.findings if f.severity == "warning")
    where = (
        f"nodes {', '.join(diagnosis.nodes)}"
        if diagnosis.cluster
        else f"node {diagnosis.nodes[0] if diagnosis.nodes else '?'}"
    )
    print(f"{diagnosis.bundle} ({where}): {errors} error(s), {warnings} warning(s)", file=out)
    shown = diagnosis.findings if limit is None else diagnosis.findings[:limit]
    for n, f in enumerate(shown, 1):
        print(file=out)
        print(f"{n}. {f.severity.upper()} {f.id}: {f.title}", file=out)
        about = [
            f"node {f.node}" if diagnosis.cluster and f.node else "",
            f"sandbox {f.sandbox}" if f.sandbox else "",
            f"pod {f.pod}" if f.pod else "",
        ]
        if any(about):
            print("   " + ", ".join(a for a in about if a), file=out)
        for e in f.evidence:
            loc = f"{e.path}:{e.line}" if e.line is not None else e.path
            print(f"   > {loc}: {e.text}", file=out)
        if f.occurrences > len([e for e in f.evidence if e.line is not None]) and f.occurrences > 1:
            print(f"   ({f.occurrences} matching lines in total)", file=out)
        print(f"   why: {f.explanation}", file=out)
        print(f"   fix: {f.fix}", file=out)
    failed = [a for a in diagnosis.analyzers if a.status != "ok"]
    for a in failed:
        print(f"analyzer {a.id} failed: {a.error}", file=out)
    for a in diagnosis.analyzers:
        if a.note:
            print(f"analyzer {a.id}: {a.note}", file=out)
    # Nested bundles (a node's, a capture) that could not be read: said, never silently left out.
    for line in diagnosis.unread[:UNREAD_SHOWN]:
        print(f"not read: {line}", file=out)
    if len(diagnosis.unread) > UNREAD_SHOWN:
        print(f"not read: {len(diagnosis.unread) - UNREAD_SHOWN} more nested bundle(s)", file=out)
    if limit is not None and len(diagnosis.findings) > limit:
        print(f"\n... {len(diagnosis.findings) - limit} more: kata-debug diagnose {diagnosis.bundle}", file=out)


#: Unreadable nested bundles named in text output (the rest are counted).
UNREAD_SHOWN = 10

#: Findings `collect` prints under its table; the rest are in analysis/findings.json.
TOP_FINDINGS = 3


def _styled_head(head: str, severity: str, style: str) -> Text:
    """The finding's first lines as plain text, its severity word coloured."""
    from rich.text import Text

    text = Text(head)
    at = head.index(severity)
    text.stylize(style, at, at + len(severity))
    return text


def print_top_findings(diagnosis: Diagnosis | None, output: str, console: Console) -> None:
    """The most likely root causes in what was just collected, each with its fix."""
    from rich.text import Text

    if diagnosis is None:
        console.print("findings: not analysed (the analyzers could not run); see `kata-debug diagnose`")
        return
    relevant = [f for f in diagnosis.findings if f.severity != "info"]
    if not relevant:
        console.print("findings: none (no known Kata failure in this evidence)")
        return
    console.print("findings (most likely root cause first; all in analysis/findings.json):")
    for f in relevant[:TOP_FINDINGS]:
        style = "red" if f.severity == "error" else "yellow"
        about = " ".join(
            x for x in (f"node {f.node}" if diagnosis.cluster and f.node else "", f.pod or f.sandbox or "") if x
        )
        # Wrapped here, indented under the finding, so no terminal cuts or flattens it; node
        # data (ids, titles) is printed as plain text: "[sb-1]" must not vanish as markup.
        width = max(console.width, 40)
        head = textwrap.fill(
            f"{f.severity} {f.id}" + (f" [{about}]" if about else "") + f": {f.title}",
            width,
            initial_indent="  ",
            subsequent_indent="  ",
            break_on_hyphens=False,
            break_long_words=False,
        )
        console.print(_styled_head(head, f.severity, style), soft_wrap=True, highlight=False)
        fix = textwrap.fill(
            f"fix: {f.fix}",
            width,
            initial_indent="    ",
            subsequent_indent="    ",
            break_on_hyphens=False,
            break_long_words=False,  # URLs stay whole: copied, not read
        )
        console.print(Text(fix), soft_wrap=True, highlight=False)
    if len(relevant) > TOP_FINDINGS:
        console.print(
            f"  ... {len(relevant) - TOP_FINDINGS} more: kata-debug diagnose {output}", markup=False, highlight=False
        )


async def diagnose_path(bundle: str) -> object:
    """Read and diagnose a bundle in a worker thread (it is blocking file I/O)."""
    from kata_debug.analyze.diagnose import diagnose

    return await asyncio.to_thread(diagnose, bundle)


async def _collect_then_diagnose(opts: object, keep: str | None) -> object:
    from kata_debug.collect.runner import CollectOptions, run_collection

    assert isinstance(opts, CollectOptions)
    tmpdir = None
    if keep is None:
        tmpdir = await asyncio.to_thread(tempfile.mkdtemp, prefix="kata-debug-diagnose-")
        opts.output = os.path.join(tmpdir, "bundle.tar.gz")
    else:
        opts.output = keep
    try:
        result = await run_collection(opts)
        exists = await asyncio.to_thread(os.path.exists, result.output)
        if not exists or not any(c.files for c in result.collectors):
            raise NothingCollected(f"--host-root {opts.host_root}: the collection wrote nothing to diagnose")
        # Analysed while it was written (the same answer as reading it back, tested): the
        # bundle is read again only when that analysis could not run.
        diagnosis = result.diagnosis if result.diagnosis is not None else await diagnose_path(result.output)
        if tmpdir is None:
            return diagnosis
        from dataclasses import replace

        from kata_debug.analyze.diagnose import Diagnosis

        assert isinstance(diagnosis, Diagnosis)
        # The temporary bundle is deleted below: name what was diagnosed, not a path that is gone.
        return replace(
            diagnosis, bundle=f"collected from --host-root {opts.host_root}, not kept (--output FILE keeps it)"
        )
    finally:
        if tmpdir is not None:
            import shutil

            await asyncio.to_thread(shutil.rmtree, tmpdir, True)


def register(app: typer.Typer) -> None:
    @app.command()
    def diagnose(
        ctx: typer.Context,
        bundle: str | None = typer.Argument(
            None, help="Node or cluster bundle (.tar.gz, .tar.zst, .tar or a directory); default: collect this node."
        ),
        output_format: DiagnoseFormat = typer.Option(DiagnoseFormat.text, "--format", help="text or json."),
        host_root: Path = typer.Option(
            Path("/"), "--host-root", metavar="DIR", help="Without BUNDLE: the node's filesystem root."
        ),
        since: str = typer.Option(
            "24h",
            "--since",
            metavar="DURATION|TIME",
            help="Without BUNDLE: how far back to read logs: 30m, 24h, 7d, 1h30m, or an RFC 3339 time.",
        ),
        output: str | None = typer.Option(
            None,
            "--output",
            "-o",
            metavar="FILE",
            help="Without BUNDLE: keep the collected bundle here (evidence paths point into it).",
        ),
        timeout: float = typer.Option(
            60.0, "--timeout", metavar="SECONDS", help="Without BUNDLE: seconds each collector may run."
        ),
        max_log_size: str = typer.Option(
            "50M", "--max-log-size", metavar="SIZE", help="Without BUNDLE: cap per log source."
        ),
        node_name: str | None = typer.Option(None, "--node-name", metavar="NAME", help="Without BUNDLE: node name."),
        redact_config_file: Path | None = redact_config.option(),
        obfuscate_hosts: bool = typer.Option(
            False, "--obfuscate-hosts", help="Without BUNDLE: pseudonyms for hostnames, IP and MAC addresses."
        ),
        obfuscate_map: str | None = typer.Option(
            None, "--obfuscate-map", metavar="FILE", help="Without BUNDLE: where the pseudonym map goes."
        ),
    ) -> None:
        """Name the root cause of failed Kata sandboxes, from a bundle or (without BUNDLE) this node."""
        if bundle is not None:
            from kata_debug.cli.options import given

            collect_only = {
                "--host-root": "host_root",
                "--since": "since",
                "--output": "output",
                "--timeout": "timeout",
                "--max-log-size": "max_log_size",
                "--node-name": "node_name",
                "--redact-config": "redact_config_file",
                "--obfuscate-hosts": "obfuscate_hosts",
                "--obfuscate-map": "obfuscate_map",
            }
            for flag, name in collect_only.items():
                if given(ctx, name):  # silently ignored, `--since 1h` would look like it bounded the bundle
                    raise UsageError(f"{flag}: only valid without BUNDLE (diagnose collects then)")
            diagnosis = asyncio.run(diagnose_path(bundle))
        else:
            from kata_debug.cli.options import parse_since, parse_size
            from kata_debug.collect.runner import CollectOptions
            from kata_debug.redact.options import obfuscate_options

            if obfuscate_hosts and output is None and obfuscate_map is None:
                raise UsageError("--obfuscate-hosts: the collected bundle is not kept; give --obfuscate-map FILE")
            opts = CollectOptions(
                obfuscate=obfuscate_options(obfuscate_hosts, obfuscate_map),
                host_root=host_root,
                node=node_name,
                since=parse_since(since),
                timeout=timeout,
                max_log_bytes=parse_size(max_log_size, "--max-log-size"),
                redact_rules=redact_config.load(redact_config_file),
            )
            diagnosis = asyncio.run(_collect_then_diagnose(opts, output))
        from kata_debug.analyze.diagnose import Diagnosis

        assert isinstance(diagnosis, Diagnosis)
        if output_format is DiagnoseFormat.json:
            print(json.dumps(diagnosis.to_json(), indent=2))
        else:
            format_text(diagnosis, sys.stdout)
        raise typer.Exit(diagnosis.exit_code)
