"""`kata-debug limits`: options, their combinations, and the table or JSON it prints.

The work (loading manifests or a live cluster, the analysis, rewriting files for `--fix`)
is `kata_debug.sizing.check.check_limits`; this module turns options into a
`LimitsRequest`, refuses combinations that make no sense, and prints the result.
Exit code: 0 clean, 1 errors or warnings, 2 input error.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from kata_debug.cli.options import given
from kata_debug.errors import UsageError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from kata_debug.sizing.check import LimitsRequest, LimitsResult
    from kata_debug.sizing.fix_files import FixRun
    from kata_debug.sizing.limits import Entry, Report

STDIN = "-"
ERROR, WARNING, INFO = "error", "warning", "info"


class LimitsFormat(str, Enum):
    text = "text"
    json = "json"
    table = "table"  # the old name of text: accepted with a deprecation note


class RuntimeChoice(str, Enum):
    go = "go"
    rs = "rs"


def register(app: typer.Typer) -> None:
    app.command("limits")(limits)


def limits(
    ctx: typer.Context,
    paths: list[str] | None = typer.Argument(
        None,
        metavar="[PATH ...|-]",
        help="Manifests: files or directories (.yaml, .yml, .json, .yaml.in), '-' for stdin. None: the live cluster.",
    ),
    kubeconfig: str | None = typer.Option(None, "--kubeconfig", metavar="FILE", help="Kubeconfig file (live cluster)."),
    context: str | None = typer.Option(None, "--context", metavar="NAME", help="Kubeconfig context (live cluster)."),
    namespace: str | None = typer.Option(None, "--namespace", "-n", help="Namespace (live cluster)."),
    all_namespaces: bool = typer.Option(False, "--all-namespaces", "-A", help="All namespaces (live cluster)."),
    runtime: RuntimeChoice | None = typer.Option(
        None, "--runtime", help="Model the Go runtime or runtime-rs (default: from the handler / --config)."
    ),
    config: Path | None = typer.Option(
        None, "--config", metavar="FILE", help="A node's Kata configuration.toml to size every workload with."
    ),
    host_cpus: int | None = typer.Option(
        None, "--host-cpus", metavar="N", help="Node CPU count (caps vCPUs at default_maxvcpus)."
    ),
    runtime_class: list[str] | None = typer.Option(
        None, "--runtime-class", metavar="NAME", help="Also treat this RuntimeClass/handler as Kata (repeatable)."
    ),
    output_format: LimitsFormat = typer.Option(
        LimitsFormat.text, "--format", metavar="[text|json]", help="text (a table, for people) or json."
    ),
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

    Kata sizes VMs from limits only. Exit code: 0 clean, 1 errors (objects the API server
    refuses) or warnings, 2 input error (including input with no Kubernetes objects).
    The PATHs are one input, as `kubectl apply -f` would see them: a LimitRange or
    RuntimeClass in one file applies to the workloads of every other file given.
    """
    from kata_debug.sizing.check import LimitsRequest, check_limits  # the analysis loads only when run

    if output_format is LimitsFormat.table:
        print("kata-debug: note: --format table is deprecated; use --format text", file=sys.stderr)
        output_format = LimitsFormat.text

    req = LimitsRequest(
        paths=tuple(paths or ()),
        kubeconfig=kubeconfig,
        context=context,
        namespace=namespace,
        all_namespaces=all_namespaces,
        runtime=runtime.value if runtime else None,
        config=config,
        host_cpus=host_cpus,
        runtime_classes=tuple(runtime_class or ()),
        fix=fix,
        dry_run=dry_run,
    )
    _validate(ctx, req)
    result = asyncio.run(check_limits(req))
    _output(req, output_format, explain, result)
    raise typer.Exit(result.report.exit_code())


def _validate(ctx: typer.Context, req: LimitsRequest) -> None:
    """Refuse option combinations that would be silently ignored: one line naming the option."""
    if req.host_cpus is not None and req.host_cpus < 1:
        raise UsageError(f"--host-cpus {req.host_cpus}: must be at least 1")
    if given(ctx, "dry_run") and not req.fix:
        raise UsageError("--dry-run: only meaningful with --fix")
    if req.paths:
        for opt, name, val in (
            ("--kubeconfig", "kubeconfig", req.kubeconfig),
            ("--context", "context", req.context),
            ("--namespace", "namespace", req.namespace),
        ):
            if given(ctx, name):
                raise UsageError(f"{opt} {val}: only for a live cluster (no PATH arguments)")
        if given(ctx, "all_namespaces"):
            raise UsageError("--all-namespaces: only for a live cluster (no PATH arguments)")
        if req.fix and STDIN in req.paths:
            raise UsageError("--fix: cannot rewrite stdin ('-'); pass the files")
    else:
        if req.fix:
            raise UsageError("--fix: needs manifest PATH arguments (it rewrites files)")
        if given(ctx, "namespace") and given(ctx, "all_namespaces"):
            raise UsageError(f"--namespace {req.namespace}: conflicts with --all-namespaces")


# ---- output -------------------------------------------------------------------------------


def _output(req: LimitsRequest, output_format: LimitsFormat, explain: bool, result: LimitsResult) -> None:
    from rich.console import Console
    from rich.markup import escape

    report = result.report
    err = Console(stderr=True, highlight=False)
    for e in report.errors:
        err.print(f"kata-debug: error: {escape(e.source)}: {escape(e.message)}", soft_wrap=True)
    if output_format is LimitsFormat.json:
        out = report.to_json()
        if result.fix is not None:
            out["fix"] = result.fix.to_json()
        if result.notes:
            out["summary"]["notes"] = result.notes
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return
    # Not a terminal: wide, so a saved or grepped table keeps one row per line, unless the
    # user said how wide (COLUMNS), which rich honours itself.
    wide = sys.stdout.isatty() or bool(os.environ.get("COLUMNS"))
    console = Console(highlight=False, width=None if wide else 200)
    for n in result.notes:
        console.print(f"[dim]{escape(n)}[/]")
    if result.fix is not None:
        _print_fixes(console, err, result.fix)
    _print_table(console, report, explain)


def _print_fixes(console: Console, err: Console, run: FixRun) -> None:
    from rich.markup import escape

    for f in run.files:
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
    verb = "would fix" if run.dry_run else "fixed"
    err.print(f"{verb} {run.applied} finding(s) in {run.changed_files} file(s)")


SEVERITY_STYLE = {ERROR: "red", WARNING: "yellow", INFO: "cyan"}


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


#: How narrow the folding columns (source, workload) may get before the table stops shrinking.
FOLD_FLOOR = 20


def _print_unsqueezed(console: Console, table: Table) -> None:
    """Print the table no narrower than its folding columns at `FOLD_FLOOR` and the others whole.

    On a narrow terminal rich would otherwise shrink every column to a letter or two and cut
    the runtime class, mode and findings with `…`: the one thing the command is run to read.
    Past that floor the terminal wraps the lines instead, as `collect`'s table does.
    """
    from rich.console import Console
    from rich.measure import Measurement

    wide = console.options.update_width(1 << 12)
    need = 1  # the left border
    for column in table.columns:
        cells = [Measurement.get(console, wide, c).maximum for c in (column.header, *column.cells)]
        width = max(cells)
        need += (min(width, FOLD_FLOOR) if column.overflow == "fold" else width) + 3  # padding and border
    if need > console.width:
        console = Console(file=console.file, width=need, force_terminal=console.is_terminal, highlight=False)
    console.print(table)


def _print_table(console: Console, report: Report, explain: bool) -> None:
    from rich.markup import escape
    from rich.table import Table

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
        x, w = e.errors, e.warnings
        i = len(e.findings) - w - x
        parts = [
            f"[red]{x} error(s)[/]" if x else "",
            f"[yellow]{w} warning(s)[/]" if w else "",
            f"{i} info" if i else "",
        ]
        counts = " ".join(p for p in parts if p)
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
        _print_unsqueezed(console, table)
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
            for step in e.vm.steps:
                console.print(f"  - {escape(step)}", soft_wrap=True)
    s = report.summary()
    if hidden:
        console.print(f"[dim]{len(hidden)} non-Kata workload(s) not shown (see --format json)[/]")
    console.print(
        f"{s['kata_workloads']} Kata workload(s): "
        + (f"[red]{s['errors']} error(s)[/], " if s["errors"] else "")
        + f"[{'yellow' if s['warnings'] else 'green'}]{s['warnings']} warning(s)[/], {s['info']} info"
        + (f"; {s['incomplete']} with template placeholders" if s["incomplete"] else "")
    )
