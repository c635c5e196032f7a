"""`kata-debug limits`: parsing, output and exit codes; the analysis lives in `limits`."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kata_debug.errors import UsageError

if TYPE_CHECKING:
    from kata_debug.sizing.fix import FileFix
    from kata_debug.sizing.limits import Document, Entry, Options, Report
    from kata_debug.sizing.model import SizingConfig

STDIN = "-"
WARNING, INFO = "warning", "info"


class LimitsFormat(str, Enum):
    table = "table"
    json = "json"


class RuntimeChoice(str, Enum):
    go = "go"
    rs = "rs"


@dataclass
class LimitsArgs:
    paths: list[str]
    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None
    all_namespaces: bool = False
    runtime: str | None = None
    config: Path | None = None
    host_cpus: int | None = None
    runtime_classes: tuple[str, ...] = ()
    format: str = "table"
    fix: bool = False
    dry_run: bool = False
    explain: bool = False


def register(app: typer.Typer) -> None:
    app.command("limits")(limits)


def limits(
    paths: list[str] | None = typer.Argument(
        None,
        metavar="[PATH ...|-]",
        help="Manifests: files or directories (.yaml, .yml, .json, .yaml.in), '-' for stdin. None: the live cluster.",
    ),
    kubeconfig: str | None = typer.Option(None, "--kubeconfig", help="Kubeconfig file (live cluster)."),
    context: str | None = typer.Option(None, "--context", help="Kubeconfig context (live cluster)."),
    namespace: str | None = typer.Option(None, "--namespace", "-n", help="Namespace (live cluster)."),
    all_namespaces: bool = typer.Option(False, "--all-namespaces", "-A", help="All namespaces (live cluster)."),
    runtime: RuntimeChoice | None = typer.Option(
        None, "--runtime", help="Model the Go runtime or runtime-rs (default: from the handler / --config)."
    ),
    config: Path | None = typer.Option(
        None, "--config", help="A node's Kata configuration.toml to size every workload with."
    ),
    host_cpus: int | None = typer.Option(None, "--host-cpus", help="Node CPU count (caps vCPUs at default_maxvcpus)."),
    runtime_class: list[str] | None = typer.Option(
        None, "--runtime-class", help="Also treat this RuntimeClass/handler as Kata (repeatable)."
    ),
    output_format: LimitsFormat = typer.Option(LimitsFormat.table, "--format", help="table (people) or json."),
    fix: bool = typer.Option(
        False,
        "--fix",
        help="Rewrite files: requests without limits become limits, "
        "LimitRange defaultRequest becomes default; prints the diff.",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="With --fix: only print the diff."),
    explain: bool = typer.Option(False, "--explain", help="Table: show how each VM size is computed."),
) -> None:
    """Show the VM each Kata workload really gets, and flag requests that do nothing.

    Kata sizes VMs from limits only. Exit code: 0 no warnings, 1 warnings, 2 input error.
    The PATHs are one input, as `kubectl apply -f` would see them: a LimitRange or
    RuntimeClass in one file applies to the workloads of every other file given.
    """
    args = LimitsArgs(
        paths=list(paths or []),
        kubeconfig=kubeconfig,
        context=context,
        namespace=namespace,
        all_namespaces=all_namespaces,
        runtime=runtime.value if runtime else None,
        config=config,
        host_cpus=host_cpus,
        runtime_classes=tuple(runtime_class or ()),
        format=output_format.value,
        fix=fix,
        dry_run=dry_run,
        explain=explain,
    )
    raise typer.Exit(asyncio.run(run(args)))


def _validate(a: LimitsArgs) -> None:
    if a.host_cpus is not None and a.host_cpus < 1:
        raise UsageError(f"--host-cpus {a.host_cpus}: must be at least 1")
    if a.dry_run and not a.fix:
        raise UsageError("--dry-run: only meaningful with --fix")
    if a.paths:
        for opt, val in (("--kubeconfig", a.kubeconfig), ("--context", a.context), ("--namespace", a.namespace)):
            if val is not None:
                raise UsageError(f"{opt} {val}: only for a live cluster (no PATH arguments)")
        if a.all_namespaces:
            raise UsageError("--all-namespaces: only for a live cluster (no PATH arguments)")
        if a.fix and STDIN in a.paths:
            raise UsageError("--fix: cannot rewrite stdin ('-'); pass the files")
    else:
        if a.fix:
            raise UsageError("--fix: needs manifest PATH arguments (it rewrites files)")
        if a.namespace is not None and a.all_namespaces:
            raise UsageError(f"--namespace {a.namespace}: conflicts with --all-namespaces")


async def run(a: LimitsArgs) -> int:
    """The whole command; returns the exit code. Heavy modules load here, not at CLI start-up."""
    from kata_debug.sizing.inputs import load
    from kata_debug.sizing.limits import Options, analyse

    _validate(a)
    cfg: SizingConfig | None = None
    if a.config is not None:
        from kata_debug.sizing.config import load_config_file

        cfg = await asyncio.to_thread(load_config_file, a.config, a.runtime)
    opts = Options(runtime=a.runtime, config=cfg, host_cpus=a.host_cpus, runtime_classes=a.runtime_classes)
    notes: list[str] = []
    if a.paths:
        docs, errors = await asyncio.to_thread(load, a.paths, sys.stdin.buffer)
        if errors and not docs:  # nothing to analyse: one line, no empty report
            more = f" (and {len(errors) - 1} more input error(s))" if len(errors) > 1 else ""
            raise UsageError(f"{errors[0].source}: {errors[0].message}{more}")
        # The parsed documents live until the process exits: keep the cyclic GC from
        # re-scanning millions of them on every collection during the analysis.
        gc.freeze()
        report = await asyncio.to_thread(analyse, docs, opts)
        report.errors = errors
    else:
        from kata_debug.sizing.live import fetch

        cluster = await fetch(a.kubeconfig, a.context, a.namespace, a.all_namespaces)
        opts.admission = False
        opts.kata_namespaces = cluster.kata_namespaces(a.runtime_classes)
        docs = cluster.documents()
        report = await asyncio.to_thread(analyse, docs, opts)
        notes = [
            f"cluster: {cluster.target}, "
            + (f"namespace {cluster.namespace}" if cluster.namespace else "all namespaces")
        ] + cluster.notes
    fixes: list[FileFix] = []
    if a.fix:
        fixes, report = await asyncio.to_thread(_fix, report, docs, opts, a.dry_run)
    _output(a, report, fixes, notes)
    return report.exit_code()


def _fix(report: Report, docs: list[Document], opts: Options, dry_run: bool) -> tuple[list[FileFix], Report]:
    """Fix every file with fixable findings, then re-analyse what the files now say (blocking)."""
    from kata_debug.sizing.fix import fix_text
    from kata_debug.sizing.inputs import parse_text
    from kata_debug.sizing.limits import analyse

    by_file: dict[str, list[tuple[int, Any]]] = {}
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
                _write_atomically(path, ff.fixed)
            replaced[path] = parse_text(ff.fixed, path, path)[0]
    if not replaced or dry_run:
        return fixes, report  # a dry run changed nothing: the exit code still reports the files as they are
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
    return fixes, again


def _write_atomically(path: str, text: str) -> None:
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


# ---- output -------------------------------------------------------------------------------


def _fix_json(fixes: list[FileFix], dry_run: bool) -> dict[str, Any]:
    return {
        "dry_run": dry_run,
        "files": [
            {
                "path": f.path,
                "changed": f.changed,
                "applied": [{"rule": x.rule, "container": x.container, "resource": x.resource} for x in f.applied],
                "skipped": [
                    {"rule": x.rule, "container": x.container, "resource": x.resource, "reason": why}
                    for x, why in f.skipped
                ],
                "diff": f.diff(),
            }
            for f in fixes
        ],
    }


def _output(a: LimitsArgs, report: Report, fixes: list[FileFix], notes: list[str]) -> None:
    err = Console(stderr=True, highlight=False)
    for e in report.errors:
        err.print(f"kata-debug: error: {escape(e.source)}: {escape(e.message)}", soft_wrap=True)
    if a.format == LimitsFormat.json.value:
        out = report.to_json()
        if a.fix:
            out["fix"] = _fix_json(fixes, a.dry_run)
        if notes:
            out["summary"]["notes"] = notes
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
    for n in notes:
        console.print(f"[dim]{escape(n)}[/]")
    if a.fix:
        _print_fixes(console, err, fixes, a.dry_run)
    _print_table(console, report, a.explain)


def _print_fixes(console: Console, err: Console, fixes: list[FileFix], dry_run: bool) -> None:
    for f in fixes:
        diff = f.diff()
        for line in diff.splitlines():
            style = (
                "green"
                if line.startswith("+")
                else "red"
                if line.startswith("-")
                else "cyan"
                if line.startswith("@@")
                else ""
            )
            console.print(f"[{style}]{escape(line)}[/]" if style else escape(line), soft_wrap=True)
        for x, why in f.skipped:
            err.print(
                f"kata-debug: not fixed: {escape(f.path)}: {x.rule} {x.container or ''} {x.resource or ''}: "
                f"{escape(why)}",
                soft_wrap=True,
            )
    applied = sum(len(f.applied) for f in fixes)
    files = sum(1 for f in fixes if f.changed)
    verb = "would fix" if dry_run else "fixed"
    err.print(f"{verb} {applied} finding(s) in {files} file(s)")


SEVERITY_STYLE = {WARNING: "yellow", INFO: "cyan"}


def _common_dir(paths: list[str | None]) -> str | None:
    """The directory all shown files share, so the table lists short names."""
    files = [p for p in paths if p]
    if len(files) < 2 or len(files) != len(paths):
        return None
    try:
        common = os.path.commonpath([os.path.dirname(p) or "." for p in files])
    except ValueError:
        return None
    return common if common not in ("", ".") else None


def _who(e: Entry) -> str:
    ns = f"{e.namespace}/" if e.namespace else ""
    return f"{e.kind}/{ns}{e.name or '?'}"


def _print_table(console: Console, report: Report, explain: bool) -> None:
    from kata_debug.sizing.limits import vm_text
    from kata_debug.sizing.workloads import WORKLOAD_KINDS

    shown = [e for e in report.entries if e.kata]
    hidden = [e for e in report.entries if not e.kata and e.kind in WORKLOAD_KINDS]
    base = _common_dir([e.doc.path for e in shown])
    title = "Kata VM sizes (boot -> all containers running)" + (f" in {base}/" if base else "")
    table = Table(title=escape(title), title_justify="left", show_lines=False)
    for col, kw in (
        ("source", {"overflow": "fold"}),
        ("workload", {"overflow": "fold"}),
        ("runtime class", {}),
        ("runtime / mode", {}),
        ("VM", {"no_wrap": True}),
        ("findings", {"justify": "right"}),
    ):
        table.add_column(col, **kw)
    for e in shown:
        vm = e.vm
        mode = f"{'runtime-rs' if vm.runtime == 'rs' else 'go'} / {vm.mode}" if vm else "-"
        w, i = e.warnings, len(e.findings) - e.warnings
        counts = (f"[yellow]{w} warning(s)[/]" if w else "") + (" " if w and i else "") + (f"{i} info" if i else "")
        source = os.path.relpath(e.doc.source, base) if base else e.doc.source
        table.add_row(
            escape(source),
            escape(_who(e)),
            escape(e.runtime_class or "-"),
            mode,
            escape(vm_text(e)),
            counts or "[green]ok[/]",
        )
    if shown:
        console.print(table)
    else:
        console.print("no Kata workloads found")
    for e in shown:
        for f in e.findings:
            where = " ".join(x for x in (f.container and f"container {f.container}", f.resource) if x)
            console.print(
                f"[{SEVERITY_STYLE[f.severity]}]{f.severity:<7}[/] [bold]{f.rule}[/] {escape(_who(e))}"
                + (f" {escape(where)}" if where else "")
                + f": {escape(f.message)}",
                soft_wrap=True,
            )
        for u in e.unresolved:
            console.print(f"[dim]note    {escape(_who(e))}: {escape(u)}[/]", soft_wrap=True)
        if explain and e.vm is not None:
            console.print(f"[bold]{escape(_who(e))}[/] ({escape(e.doc.source)}):", soft_wrap=True)
            for s in e.vm.steps:
                console.print(f"  - {escape(s)}", soft_wrap=True)
    s = report.summary()
    if hidden:
        console.print(f"[dim]{len(hidden)} non-Kata workload(s) not shown (see --format json)[/]")
    console.print(
        f"{s['kata_workloads']} Kata workload(s): "
        f"[{'yellow' if s['warnings'] else 'green'}]{s['warnings']} warning(s)[/], {s['info']} info"
        + (f"; {s['incomplete']} with template placeholders" if s["incomplete"] else "")
    )
