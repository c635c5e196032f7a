"""What a cluster run is asked to do, checked before any request: `collect --cluster`'s options."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from kata_debug.bundle.writer import SUFFIXES, Compression, OutputTarget, bundle_stem
from kata_debug.errors import UsageError

AGENT_NAMESPACE = "kata-debug"
AGENT_SELECTOR = "app.kubernetes.io/name=kata-debug-node-agent"
AGENT_CONTAINER = "agent"


@dataclass
class ClusterOptions:
    kubeconfig: str | None = None
    context: str | None = None
    nodes: list[str] = field(default_factory=list)
    selector: str | None = None
    since: timedelta = timedelta(hours=24)
    parallel: int = 8
    node_timeout: float = 600.0
    output: str | None = None
    compression: Compression = "gzip"
    redact: bool = True
    agent_namespace: str = AGENT_NAMESPACE
    agent_selector: str = AGENT_SELECTOR
    agent_container: str = AGENT_CONTAINER
    # Extra `kata-debug collect` options passed to every node (collectors, timeouts...).
    node_args: list[str] = field(default_factory=list)


def validate(opts: ClusterOptions) -> None:
    """Refuse bad options as one usage error; stats the output, so call it off the event loop."""
    if opts.parallel < 1:
        raise UsageError(f"--parallel {opts.parallel}: must be at least 1")
    if not (math.isfinite(opts.node_timeout) and opts.node_timeout > 0):
        raise UsageError(f"--node-timeout {opts.node_timeout:g}: must be a positive number of seconds")
    for n in opts.nodes:
        if not n or "/" in n:
            raise UsageError(f"--node {n!r}: not a node name")
    OutputTarget.check(opts.output)  # before minutes of discovery, not after


def default_output(context: str | None, started: datetime, compression: Compression) -> str:
    return f"./{bundle_stem('cluster-' + (context or 'cluster'), started)}{SUFFIXES[compression]}"
