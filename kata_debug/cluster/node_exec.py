"""Bring one node's bundle home: exec `kata-debug collect` in its pod and spool the stream.

The pod is the node's kata-debug agent (deploy/daemonset.yaml) when one is Running there;
otherwise, or for every node with `--ephemeral`, a collector pod made for this run and
deleted after it (`ephemeral`).

A node's stream is spooled to a temp file as it arrives and added as ONE member,
`nodes/<node>/bundle.tar.gz`, once the node reports its exit status. Memory stays flat (two
1 MiB buffers per node in flight) however big node bundles get; the node bundle keeps its
own manifest and checksums intact; the cluster gzip stream stores it instead of deflating
already-compressed bytes again. Every node ends as a `NodeEntry` (`ok`, `partial` = node
exit 3, `failed`, `timeout`), never as an exception; bytes of a node that failed
mid-stream are kept as `bundle.tar.gz.partial` (gzip salvages a prefix). The node gets
`--deadline` a little under the node timeout, so a slow node ends its own bundle cleanly
(collectors marked timeout) before the cluster run would have to cut it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from kata_debug.bundle.manifest import NodeEntry, NodeStatus, NodeVia
from kata_debug.bundle.writer import SUFFIXES, AsyncBundle, Spool, safe_component
from kata_debug.cluster.collector_pod import CONTAINER
from kata_debug.cluster.ephemeral import CollectorPods, PodStartError
from kata_debug.cluster.objects import KATA_RUNTIME_LABEL, name_of
from kata_debug.cluster.options import ClusterOptions
from kata_debug.cluster.progress import ClusterProgress
from kata_debug.kube.client import KubeSession
from kata_debug.kube.exec_stream import ExecProtocolError, ExecRefused, exec_stream
from kata_debug.redact.obfuscate import split_map_lines
from kata_debug.redact.options import OBFUSCATE_STDIN
from kata_debug.redact.redactor import Redactor
from kata_debug.redact.user_rules import RULES_STDIN

#: `kata-debug collect`'s exit code for "bundle written, some collectors failed".
PARTIAL_EXIT = 3


def node_deadline(node_timeout: float) -> float:
    """The node's own --deadline: early enough that it can finish its bundle before we cut it."""
    return round(max(node_timeout * 0.8, node_timeout - 60.0), 1)


def node_command(opts: ClusterOptions, node: str) -> list[str]:
    """The exact command each agent pod runs; its stdout is the node bundle."""
    argv = [
        "kata-debug",
        "collect",
        "--host-root",
        "/host",
        "--output",
        "-",
        "--output-format",
        "json",
        "--node-name",
        node,
        "--since",
        f"{int(opts.since.total_seconds())}s",
        "--compression",
        opts.compression,
        "--deadline",
        f"{node_deadline(opts.node_timeout):g}",
        # The agent image ships no containerd/kata-runtime of its own: run the node's from
        # the pod, pointed at the node's configuration (the bundle says where they ran).
        "--run-host-tools",
    ]
    if not opts.redact:
        argv.append("--no-redact")
    elif opts.redact_rules is not None:
        argv.append(RULES_STDIN)  # the rules follow on stdin (`node_stdin`), never in argv
    if opts.obfuscate.node_input() is not None:
        # The run's key, so this node's pseudonyms match every other node's and the laptop's,
        # follows on stdin too; the node hands its map back on stderr. The key never enters a bundle.
        argv.append(OBFUSCATE_STDIN)
    return argv + list(opts.node_args)


def node_stdin(opts: ClusterOptions) -> bytes | None:
    """What the node's collect reads on stdin: one JSON line, the `--redact-config` rules'
    document (`RULES_STDIN`) with, for `--obfuscate-hosts`, an `obfuscate` member holding the
    run's key and the node names (`OBFUSCATE_STDIN`); None when there is neither.

    Not in its argv: exec requests (command included) land in the API server's audit log and
    the node's process list, a rule may be a literal secret, and the key would let whoever
    reads the log check a guessed address against its pseudonym.
    """
    rules = opts.redact_rules if opts.redact else None
    hosts = opts.obfuscate.node_input()
    if hosts is None:
        return None if rules is None else rules.stdin_line()
    doc: dict[str, Any] = {} if rules is None else rules.to_json()
    doc["obfuscate"] = hosts
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


class SpoolSink:
    """Receives a node's stdout blocks and writes them to a spool file off the event loop.

    Double-buffered: one block is written by a thread while the next one arrives, so the
    network never waits on the disk, and memory stays at two blocks per node in flight.
    """

    def __init__(self, spool: Spool, on_progress: Callable[[int], None]) -> None:
        self.spool = spool
        self.bytes = 0
        self._pending: asyncio.Future[None] | None = None
        self._on_progress = on_progress

    async def write(self, block: bytearray) -> None:
        if self._pending is not None:
            await asyncio.shield(self._pending)
        self.bytes += len(block)
        self._pending = asyncio.get_running_loop().run_in_executor(None, self.spool.write, block)
        self._on_progress(self.bytes)

    async def finish(self) -> None:
        """Wait for the writer thread (safe after cancellation: the block is never half-written)."""
        if self._pending is not None:
            await asyncio.wait([self._pending])
            self._pending = None


def stderr_tail(stderr: bytes) -> str:
    """The node's last non-blank stderr line: its own one-line error, if it printed one."""
    lines = [ln for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1].strip()[:300] if lines else ""


def agent_running(agent: dict[str, Any] | None) -> bool:
    """Whether a node's agent pod can be exec'd into (else a collector pod is made for the node)."""
    return agent is not None and (agent.get("status") or {}).get("phase") == "Running"


class NodeCollector:
    """Collects nodes of one run into one cluster bundle (shared session, redactor and progress)."""

    def __init__(
        self,
        opts: ClusterOptions,
        session: KubeSession,
        redactor: Redactor,
        progress: ClusterProgress,
        pods: CollectorPods | None = None,
    ) -> None:
        self.opts = opts
        self.session = session
        self.redactor = redactor
        self.progress = progress
        self.pods = pods or CollectorPods(session, opts)

    def _no_agent(self, agent: dict[str, Any] | None, agents_error: str | None) -> str:
        """Why the node is not collected through an agent pod (for the error if the collector pod fails too)."""
        if self.opts.ephemeral:
            return "--ephemeral"
        if agents_error is not None:
            return f"cannot list the kata-debug agent pods in namespace {self.opts.agent_namespace}: {agents_error}"
        if agent is not None:
            phase = (agent.get("status") or {}).get("phase")
            return f"agent pod {name_of(agent)} is {phase or 'not running'}"
        return (
            f"no kata-debug agent pod on this node (label {self.opts.agent_selector} in namespace "
            f"{self.opts.agent_namespace}; deploy/daemonset.yaml applies them to nodes labelled {KATA_RUNTIME_LABEL})"
        )

    async def collect(
        self, node: str, agent: dict[str, Any] | None, bundle: AsyncBundle, agents_error: str | None = None
    ) -> NodeEntry:
        """Collect `node` through its Running agent pod, else through a collector pod made for it."""
        if agent is not None and agent_running(agent) and not self.opts.ephemeral:
            return await self._stream(
                node, name_of(agent), self.opts.agent_container, bundle, time.monotonic(), "agent"
            )
        return await self.collect_ephemeral(node, bundle, self._no_agent(agent, agents_error))

    async def collect_ephemeral(self, node: str, bundle: AsyncBundle, why: str) -> NodeEntry:
        """Create the node's collector pod, stream its bundle, and delete the pod in every case."""
        start = time.monotonic()
        name = self.pods.name(node)
        cleanup: str | None = None
        try:
            try:
                await self.pods.start(node)
            except PodStartError as exc:
                prefix = "" if self.opts.ephemeral else f"{why}; "
                entry = NodeEntry(node, "failed", f"{prefix}{exc}", 0.0, 0, pod=name, via="ephemeral")
            else:
                entry = await self._stream(node, name, CONTAINER, bundle, start, "ephemeral")
        finally:
            cleanup = await self.pods.remove(name)
        entry.duration_s = round(time.monotonic() - start, 3)
        if cleanup is not None:
            note = f"collector pod {name} NOT deleted ({cleanup}): delete it by hand"
            entry.error = f"{entry.error}; {note}" if entry.error else note
            if entry.status == "ok":
                entry.status = "partial"
        return entry

    async def _stream(
        self, node: str, pod: str, container: str, bundle: AsyncBundle, start: float, via: NodeVia
    ) -> NodeEntry:
        """Run the node's collect in `pod` and add what it streamed to `bundle`."""
        base = f"nodes/{safe_component(node, 'node')}"
        self.progress.node_started(node)
        spool = await asyncio.to_thread(Spool)  # creates a temp file
        sink = SpoolSink(spool, lambda n: self.progress.node_bytes(node, n))
        status: NodeStatus = "failed"
        error: str | None = None
        exit_code: int | None = None
        stderr = b""
        try:
            try:
                async with asyncio.timeout(self.opts.node_timeout):
                    outcome = await exec_stream(
                        self.session.ws,
                        self.opts.agent_namespace,
                        pod,
                        node_command(self.opts, node),
                        sink.write,
                        container=container,
                        stdin=node_stdin(self.opts),
                    )
                exit_code, stderr = outcome.exit_code, outcome.stderr
                if self.redactor.hosts is not None:
                    # The node's map line is the laptop's alone: merged, never stored or shown.
                    stderr, maps = split_map_lines(stderr)
                    for m in maps:
                        self.redactor.add_pseudonyms(
                            m["pseudonyms"], int(m.get("not_recorded") or 0), m.get("hostnames_kept") or ()
                        )
                if exit_code == 0:
                    status = "ok"
                elif exit_code == PARTIAL_EXIT:
                    status, error = "partial", "bundle written but some node collectors failed (see its manifest)"
                elif exit_code is not None:
                    tail = stderr_tail(stderr)
                    error = f"kata-debug collect exited {exit_code}" + (f": {tail}" if tail else "")
                else:
                    error = outcome.message or "exec failed"
            except TimeoutError:
                status, error = "timeout", f"no exit status within --node-timeout {self.opts.node_timeout:g}s"
            except ExecRefused as exc:
                error = str(exc)
            except ExecProtocolError as exc:
                error = f"exec protocol error: {exc}"
            finally:
                await sink.finish()
            member: str | None = None
            if sink.bytes:
                name = f"bundle{SUFFIXES[self.opts.compression]}"
                member = f"{base}/{name}" if status in ("ok", "partial") else f"{base}/{name}.partial"
                await bundle.add_spool(member, spool, precompressed=True)
            else:
                await asyncio.to_thread(spool.close)
            if stderr.strip():
                redacted = await asyncio.to_thread(self.redactor.bytes, stderr)
                await bundle.add_bytes(f"{base}/collect.stderr", redacted)
        except BaseException:
            spool.close()
            raise
        return NodeEntry(
            node,
            status,
            error,
            round(time.monotonic() - start, 3),
            sink.bytes,
            pod=pod,
            exit_code=exit_code,
            member=member,
            via=via,
        )
