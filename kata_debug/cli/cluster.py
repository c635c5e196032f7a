"""The terminal side of `collect --cluster`: progress per node, summary, exit code.

`cli/app.py` parses the options and hands them here, so the `collect` command stays one command
for both modes while cluster mode keeps its own progress and summary shapes.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from kata_debug.bundle.manifest import NodeEntry
from kata_debug.cli.options import CompressionName, human_size
from kata_debug.cli.progress import STATUS_STYLE
from kata_debug.cluster.collector_pod import DEFAULT_IMAGE
from kata_debug.cluster.options import AGENT_NAMESPACE, ClusterOptions
from kata_debug.cluster.result import ClusterResult, result_json
from kata_debug.cluster.run import run_cluster_collection
from kata_debug.errors import UsageError
from kata_debug.redact.options import ObfuscateOptions
from kata_debug.redact.user_rules import UserRules
from kata_debug.upload import UploadTarget

human_bytes = human_size  # the cluster views' name for it


class NodeProgress:
    """A live line per node being collected (with bytes so far) and a permanent line per result.

    Only nodes in flight have live lines (at most --parallel), so 200 nodes never push the
    live region past the terminal; finished nodes scroll above it. Without a terminal, text
    mode prints one plain line per finished node (CI logs); JSON mode prints nothing here.
    """

    def __init__(self, enabled: bool, plain_lines: bool) -> None:
        self.console = Console(stderr=True)
        self.live = enabled and sys.stderr.isatty()
        self.plain = plain_lines and not self.live
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TextColumn("{task.fields[size]}", justify="right"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self._tasks: dict[str, Any] = {}
        self._overall: Any = None
        self._done = 0
        self._total = 0

    def __enter__(self) -> NodeProgress:
        if self.live:
            self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.live:
            self._progress.stop()

    def nodes_planned(self, names: list[str]) -> None:
        self._total = len(names)
        if self.live:
            self._overall = self._progress.add_task(f"nodes 0/{self._total}", size="")
        elif self.plain:
            print(f"collecting {self._total} node(s)", file=sys.stderr, flush=True)

    def node_started(self, name: str) -> None:
        if self.live:
            self._tasks[name] = self._progress.add_task(f"{name}: streaming", size="0 B")

    def node_bytes(self, name: str, total: int) -> None:
        if self.live and name in self._tasks:
            self._progress.update(self._tasks[name], size=human_bytes(total))

    def node_finished(self, result: NodeEntry) -> None:
        self._done += 1
        line = f"{result.name}: {result.status} {human_bytes(result.bytes)} in {result.duration_s:.1f}s" + (
            f" ({result.error})" if result.error else ""
        )
        if self.live:
            task = self._tasks.pop(result.name, None)
            if task is not None:
                self._progress.remove_task(task)
            style = STATUS_STYLE.get(result.status, "white")
            self._progress.console.print(
                f"[{style}]{result.status:>7}[/] {result.name}  {human_bytes(result.bytes)}  {result.duration_s:.1f}s"
                + (f"  [dim]{result.error}[/]" if result.error else ""),
                highlight=False,
            )
            if self._overall is not None:
                self._progress.update(self._overall, description=f"nodes {self._done}/{self._total}")
        elif self.plain:
            print(line, file=sys.stderr, flush=True)


def print_summary(result: ClusterResult, console: Console) -> None:
    table = Table(title=f"kata-debug cluster bundle ({result.context or 'cluster'})", title_justify="left")
    table.add_column("node")
    table.add_column("status")
    table.add_column("bytes", justify="right")
    table.add_column("time", justify="right")
    table.add_column("note")
    for n in result.nodes:
        style = STATUS_STYLE.get(n.status, "white")
        table.add_row(n.name, f"[{style}]{n.status}[/]", human_bytes(n.bytes), f"{n.duration_s:.1f}s", n.error or "")
    console.print(table)
    if not result.nodes:
        console.print(
            "[yellow]no Kata nodes found[/] (nodes labelled katacontainers.io/kata-runtime or running Kata pods)"
        )
    for f in result.items_failed:
        console.print(f"[yellow]cluster: could not read {f.item}[/]: {f.reason}", highlight=False)
    if result.interrupted:
        console.print(f"[yellow]{result.interrupted}[/]: unfinished nodes are marked failed")
    if result.output != "-":
        console.print(f"bundle: [bold]{result.output}[/]")
    if result.obfuscate_map:
        console.print(
            f"map: [bold]{escape(result.obfuscate_map)}[/] (pseudonym -> original host names and addresses "
            "of every node; not in the bundle: keep it, do not send it)",
            soft_wrap=True,
            highlight=False,
        )
    from kata_debug.cli.diagnose import print_top_findings

    print_top_findings(result.diagnosis, result.output, console)


def run(opts: ClusterOptions, json_output: bool, upload: UploadTarget | None = None) -> int:
    """Run a cluster collection (and its upload) and print its summary; returns the exit code."""
    from kata_debug.cli.upload import upload_after_collect

    with NodeProgress(enabled=not json_output, plain_lines=not json_output) as progress:
        result = asyncio.run(run_cluster_collection(opts, progress))
    sent = upload_after_collect(result.output, upload, json_output)
    exit_code = sent.exit_code(result.exit_code)
    to = sys.stderr if opts.output == "-" else sys.stdout
    if json_output:
        doc = result_json(result)
        if sent.summary is not None:
            doc.update(upload=sent.summary, exit_code=exit_code)
        print(json.dumps(doc, indent=2), file=to)
    else:
        print_summary(result, Console(file=to))
        sent.print_text(to)
    sent.print_error()
    return exit_code


def collect_cluster(
    *,
    kubeconfig: str | None,
    context: str | None,
    nodes: list[str],
    selector: str | None,
    parallel: int,
    node_timeout: float,
    output: str | None,
    since: timedelta,
    collectors: list[str],
    timeout: float,
    no_redact: bool,
    compression: CompressionName,
    redact_rules: UserRules | None = None,
    json_output: bool,
    all_runtimes: bool,
    max_log_size: str,
    trace_spool_dir: str,
    host_root: Path,
    deadline: float | None,
    node_name: str | None,
    ephemeral: bool = False,
    image: str | None = None,
    agent_namespace: str = AGENT_NAMESPACE,
    pod_timeout: float = 120.0,
    upload: UploadTarget | None = None,
    obfuscate: ObfuscateOptions | None = None,
) -> int:
    """Map `collect` options onto a cluster run: node-side options are passed to every node."""
    if host_root != Path("/"):
        raise UsageError(f"--host-root {host_root}: not valid with --cluster (nodes always use /host)")
    if node_name is not None:
        raise UsageError("--node-name: not valid with --cluster (use --node to choose nodes)")
    if deadline is not None:
        raise UsageError("--deadline: not valid with --cluster (use --node-timeout)")
    if not (math.isfinite(timeout) and timeout > 0):
        raise UsageError(f"--timeout {timeout:g}: must be a positive number of seconds")
    from kata_debug.collectors import REGISTRY

    unknown = [c for c in collectors if c not in REGISTRY]
    if unknown:
        raise UsageError(f"--collector {unknown[0]}: unknown collector (choose from {', '.join(REGISTRY)})")
    node_args: list[str] = [
        "--timeout",
        f"{timeout:g}",
        "--max-log-size",
        max_log_size,
        "--trace-spool-dir",
        trace_spool_dir,
    ]
    for c in collectors:
        node_args += ["--collector", c]
    if all_runtimes:
        node_args.append("--all-runtimes")
    from kata_debug.cli.options import parse_size

    parse_size(max_log_size, "--max-log-size")  # fail here, not on every node
    if no_redact:
        Console(stderr=True).print(
            "[yellow]warning:[/] --no-redact: the bundle will contain secrets (env values, tokens); do not share it"
        )
    opts = ClusterOptions(
        kubeconfig=kubeconfig,
        context=context,
        nodes=list(nodes),
        selector=selector,
        since=since,
        parallel=parallel,
        node_timeout=node_timeout,
        output=output,
        compression=compression,
        redact=not no_redact,
        redact_rules=redact_rules,
        node_args=node_args,
        ephemeral=ephemeral,
        image=DEFAULT_IMAGE if image is None else image,
        agent_namespace=agent_namespace,
        pod_timeout=pod_timeout,
        obfuscate=obfuscate or ObfuscateOptions(),
    )
    return run(opts, json_output, upload)
