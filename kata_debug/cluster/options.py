"""What a cluster run is asked to do, checked before any request: `collect --cluster`'s options."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from kata_debug.bundle.writer import SUFFIXES, Compression, OutputTarget, bundle_stem
from kata_debug.cluster.collector_pod import DEFAULT_IMAGE
from kata_debug.errors import UsageError
from kata_debug.redact.options import OBFUSCATE_STDIN, ObfuscateOptions, check_obfuscate
from kata_debug.redact.user_rules import UserRules

AGENT_NAMESPACE = "kata-debug"
AGENT_SELECTOR = "app.kubernetes.io/name=kata-debug-node-agent"
AGENT_CONTAINER = "agent"
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


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
    #: `--redact-config` rules: the laptop applies them to what it writes itself, and every
    #: node gets them on its collect command's stdin.
    redact_rules: UserRules | None = None
    agent_namespace: str = AGENT_NAMESPACE
    agent_selector: str = AGENT_SELECTOR
    agent_container: str = AGENT_CONTAINER
    # Collector pods (nodes without a running agent pod, or every node with `ephemeral`).
    ephemeral: bool = False
    image: str = DEFAULT_IMAGE
    pod_timeout: float = 120.0
    # Extra `kata-debug collect` options passed to every node (collectors, timeouts...).
    node_args: list[str] = field(default_factory=list)
    #: `--obfuscate-hosts`: the laptop makes the run's key and passes it to every node.
    obfuscate: ObfuscateOptions = field(default_factory=ObfuscateOptions)


def validate(opts: ClusterOptions) -> None:
    """Refuse bad options as one usage error; stats the output, so call it off the event loop."""
    if opts.parallel < 1:
        raise UsageError(f"--parallel {opts.parallel}: must be at least 1")
    if not (math.isfinite(opts.node_timeout) and opts.node_timeout > 0):
        raise UsageError(f"--node-timeout {opts.node_timeout:g}: must be a positive number of seconds")
    if not (math.isfinite(opts.pod_timeout) and opts.pod_timeout > 0):
        raise UsageError(f"--pod-timeout {opts.pod_timeout:g}: must be a positive number of seconds")
    if not _DNS_LABEL.fullmatch(opts.agent_namespace):
        raise UsageError(f"--agent-namespace {opts.agent_namespace!r}: not a namespace name (a DNS label)")
    if not opts.image or any(c.isspace() for c in opts.image):
        raise UsageError(f"--image {opts.image!r}: not an image reference")
    for n in opts.nodes:
        if not n or "/" in n:
            raise UsageError(f"--node {n!r}: not a node name")
    OutputTarget.check(opts.output)  # before minutes of discovery, not after
    if opts.obfuscate.key is not None:
        raise UsageError(f"{OBFUSCATE_STDIN}: not valid with --cluster (the run makes its own key)")
    check_obfuscate(opts.obfuscate, opts.output)


def default_output(context: str | None, started: datetime, compression: Compression) -> str:
    return f"./{bundle_stem('cluster-' + (context or 'cluster'), started)}{SUFFIXES[compression]}"
