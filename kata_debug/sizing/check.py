"""The `kata-debug limits` pipeline as one library call: inputs -> analysis -> optional fix.

`cli/limits.py` checks the option combinations and prints; everything between (reading
a node's configuration, loading manifests or fetching a live cluster, the analysis, the
`--fix` rewrite) is here, so it can be driven without the command line. Modules that are
slow to import (the Kubernetes client, TOML configuration, the round-trip YAML
parser of `--fix`) load only when asked for.
"""

from __future__ import annotations

import asyncio
import gc
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from kata_debug.errors import UsageError
from kata_debug.sizing.inputs import load
from kata_debug.sizing.limits import Document, Options, Report, analyse
from kata_debug.sizing.model import SizingConfig

if TYPE_CHECKING:
    from kata_debug.sizing.fix_files import FixRun


@dataclass(frozen=True)
class LimitsRequest:
    """What to analyse and how. No `paths`: the live cluster the kubeconfig points at."""

    paths: tuple[str, ...] = ()
    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None
    all_namespaces: bool = False
    runtime: str | None = None  # "go" | "rs"; None: from the handler or `config`
    config: Path | None = None  # a node's configuration.toml to size every workload with
    host_cpus: int | None = None
    runtime_classes: tuple[str, ...] = ()
    fix: bool = False
    dry_run: bool = False


@dataclass
class LimitsResult:
    """The report to show, what `--fix` did (None without it), and notes about the input."""

    report: Report
    fix: FixRun | None = None
    notes: list[str] = field(default_factory=list)


async def check_limits(req: LimitsRequest, stdin: IO[bytes] | None = None) -> LimitsResult:
    """Analyse the manifests (or the live cluster) of `req`; with `req.fix`, rewrite the files.

    Raises `UsageError` when no input could be read at all, rather than reporting nothing.
    `stdin` is read for the path '-' (default: this process's standard input).
    """
    cfg: SizingConfig | None = None
    if req.config is not None:
        from kata_debug.sizing.config import load_config_file

        cfg = await asyncio.to_thread(load_config_file, req.config, req.runtime)
    opts = Options(runtime=req.runtime, config=cfg, host_cpus=req.host_cpus, runtime_classes=req.runtime_classes)
    notes: list[str] = []
    docs: list[Document]
    if req.paths:
        docs, errors = await asyncio.to_thread(load, list(req.paths), stdin if stdin is not None else sys.stdin.buffer)
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

        cluster = await fetch(req.kubeconfig, req.context, req.namespace, req.all_namespaces)
        opts.admission = False
        opts.kata_namespaces = cluster.kata_namespaces(req.runtime_classes)
        docs = cluster.documents()
        report = await asyncio.to_thread(analyse, docs, opts)
        notes = [
            f"cluster: {cluster.target}, "
            + (f"namespace {cluster.namespace}" if cluster.namespace else "all namespaces")
        ] + cluster.notes
    if not req.fix:
        return LimitsResult(report, None, notes)
    from kata_debug.sizing.fix_files import fix_files  # the round-trip YAML parser: only for --fix

    fixed = await fix_files(report, docs, opts, req.dry_run)
    return LimitsResult(fixed.report, fixed, notes)
