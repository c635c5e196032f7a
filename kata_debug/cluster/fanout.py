"""`kata-debug collect --cluster`: one bundle for the whole cluster, built from the laptop.

Each Kata node already knows how to bundle itself (`kata-debug collect --output -` inside its
node agent pod); the cluster run only has to fan out through the exec API, bring those byte
streams home and add the Kubernetes objects no node can see. Design choices:

- A node's stream is spooled to a temp file as it arrives and added as ONE member,
  `nodes/<node>/bundle.tar.gz`, once the node reports its exit status. Memory stays flat
  (two 1 MiB buffers per node in flight) however big node bundles get; the node bundle keeps
  its own manifest and checksums intact; the cluster gzip stream stores it instead of
  deflating already-compressed bytes again.
- Nodes run N at a time with a per-node timeout; every node ends as a manifest entry
  (`ok`, `partial` = node exit 3, `failed`, `timeout`), never as an exception. Bytes of a
  node that failed mid-stream are kept as `bundle.tar.gz.partial` (gzip salvages a prefix).
- The node gets `--deadline` a little under the node timeout, so a slow node ends its own
  bundle cleanly (collectors marked timeout) before the cluster run would have to cut it.
- Nothing is written until the server has shown it is a Kubernetes API server (GET /version)
  and the identity can see the nodes or the agent pods: a wrong URL or a login that sees
  nothing ends as one error line, not as an empty bundle with exit 3.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from kata_debug import __version__
from kata_debug.bundle.writer import (
    SCHEMA_VERSION,
    SUFFIXES,
    AsyncBundle,
    BundleWriter,
    Compression,
    OutputTarget,
    Spool,
    bundle_stem,
    safe_component,
)
from kata_debug.cluster.objects import (
    KATA_RUNTIME_LABEL,
    ClusterObjects,
    Inventory,
    ItemFailure,
    discover,
    failure_from,
    name_of,
)
from kata_debug.collect.interrupts import run_interruptible
from kata_debug.errors import KataDebugError, UsageError
from kata_debug.kube.client import KubeError, KubeSession
from kata_debug.kube.exec_stream import ExecProtocolError, ExecRefused, exec_stream
from kata_debug.redact.redactor import Redactor

NodeStatus = Literal["ok", "partial", "failed", "timeout"]
AGENT_NAMESPACE = "kata-debug"
AGENT_SELECTOR = "app.kubernetes.io/name=kata-debug-node-agent"
AGENT_CONTAINER = "agent"
PARTIAL_EXIT = 3


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


@dataclass
class NodeResult:
    name: str
    status: NodeStatus
    error: str | None
    duration_s: float
    bytes: int
    pod: str | None = None
    exit_code: int | None = None
    member: str | None = None


@dataclass
class ClusterResult:
    output: str
    context: str | None
    nodes: list[NodeResult]
    items_failed: list[dict[str, str]]
    redactions: dict[str, int]
    interrupted: str | None

    @property
    def exit_code(self) -> int:
        bad = any(n.status != "ok" for n in self.nodes) or bool(self.items_failed) or bool(self.interrupted)
        return PARTIAL_EXIT if bad else 0


@dataclass
class NodePlan:
    """What `plan` decided: the nodes to try, their agent pods, and how the list was made."""

    inventory: Inventory
    names: list[str]
    agents: dict[str, dict[str, Any]]  # nodeName -> agent pod
    early: list[NodeResult]  # nodes that cannot be tried (asked for by name, not in the cluster)
    source: Literal["nodes", "agent pods"] = "nodes"
    note: str | None = None  # why the selection differs from what was asked
    agents_error: str | None = None  # why the agent pods could not be listed


class ClusterProgress(Protocol):
    def nodes_planned(self, names: list[str]) -> None: ...
    def node_started(self, name: str) -> None: ...
    def node_bytes(self, name: str, total: int) -> None: ...
    def node_finished(self, result: NodeResult) -> None: ...


class _NoProgress:
    def nodes_planned(self, names: list[str]) -> None:
        pass

    def node_started(self, name: str) -> None:
        pass

    def node_bytes(self, name: str, total: int) -> None:
        pass

    def node_finished(self, result: NodeResult) -> None:
        pass


def validate(opts: ClusterOptions) -> None:
    if opts.parallel < 1:
        raise UsageError(f"--parallel {opts.parallel}: must be at least 1")
    if not (math.isfinite(opts.node_timeout) and opts.node_timeout > 0):
        raise UsageError(f"--node-timeout {opts.node_timeout:g}: must be a positive number of seconds")
    for n in opts.nodes:
        if not n or "/" in n:
            raise UsageError(f"--node {n!r}: not a node name")
    OutputTarget.check(opts.output)  # before minutes of discovery, not after


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
    ]
    if not opts.redact:
        argv.append("--no-redact")
    return argv + list(opts.node_args)


class _SpoolSink:
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


def _pick_agent_pods(pods: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """nodeName -> the agent pod to exec into (a Running one, preferring Ready)."""

    def rank(pod: dict[str, Any]) -> tuple[int, int]:
        status = pod.get("status") or {}
        running = status.get("phase") == "Running"
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        deleting = bool((pod.get("metadata") or {}).get("deletionTimestamp"))
        return (int(running and not deleting), int(ready))

    best: dict[str, dict[str, Any]] = {}
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        if node and (node not in best or rank(pod) > rank(best[node])):
            best[node] = pod
    return best


def _stderr_tail(stderr: bytes) -> str:
    lines = [ln for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1].strip()[:300] if lines else ""


class ClusterCollection:
    """One cluster run: which nodes to collect (`plan`) and how one node is brought home."""

    def __init__(self, opts: ClusterOptions, session: KubeSession, progress: ClusterProgress | None = None) -> None:
        self.opts = opts
        self.session = session
        self.progress = progress or _NoProgress()
        self.redactor = Redactor(enabled=opts.redact)

    async def preflight(self) -> dict[str, Any]:
        """GET /version: stop before anything is written unless a Kubernetes API server answers.

        A kubeconfig pointing at the wrong URL (a web server, a proxy without the API behind
        it) otherwise gets 404 on every read and ends as an empty bundle. /version is readable
        by everyone (system:public-info-viewer), so a 403 here only means that role was
        removed and the run goes on; 401 means the credentials were rejected.
        """
        try:
            version = await self.session.get("/version")
        except KubeError as exc:
            if exc.status == 403:
                return {}
            if exc.status in (0, 401):
                raise
            detail = f"HTTP {exc.status}" if not 200 <= exc.status < 300 else exc.message
            raise KataDebugError(f"{self._server()}: not a Kubernetes API server (GET /version: {detail})") from None
        if not isinstance(version.get("gitVersion"), str):
            raise KataDebugError(
                f"{self._server()}: not a Kubernetes API server (GET /version: no gitVersion in the answer)"
            )
        return version

    def _server(self) -> str:
        target = self.session.target
        return f"server {target.server}" + (f" (context {target.context})" if target.context else "")

    async def _agent_pods(self, inv: Inventory) -> tuple[list[dict[str, Any]], ItemFailure | None]:
        """The node agent pods, or the failure that hid them (also recorded in `inv`)."""
        try:
            pods = await self.session.list(
                f"/api/v1/namespaces/{self.opts.agent_namespace}/pods",
                [("labelSelector", self.opts.agent_selector)],
            )
        except KubeError as exc:
            if exc.status in (0, 401):
                raise
            failure = failure_from(f"agent pods in namespace {self.opts.agent_namespace}", exc)
            inv.failures.append(failure)
            return [], failure
        return pods, None

    async def plan(self) -> NodePlan:
        """Which nodes to collect, from which agent pod; nodes that cannot be tried come back as results.

        The node list is the first choice (labels, `-l`, "no such node"). When it cannot be
        read, the agent pods are: the README's minimal grant (the Role kata-debug-collect:
        list pods and exec in namespace kata-debug) must still bring every node's bundle
        home, and the DaemonSet already runs exactly one agent on every Kata node.
        """
        await self.preflight()
        inv = await discover(self.session, None)
        agent_list, agents_failure = await self._agent_pods(inv)
        nodes_failure = next((f for f in inv.failures if f.item == "nodes"), None)
        if (
            agents_failure is not None
            and agents_failure.status == 403
            and nodes_failure is not None
            and nodes_failure.status == 403
        ):
            raise KataDebugError(
                f"{self._server()}: forbidden: cannot list nodes or pods in namespace {self.opts.agent_namespace} "
                f"({agents_failure.reason}); check the credentials and RBAC (Role kata-debug-collect in "
                f"namespace {self.opts.agent_namespace}, deploy/daemonset.yaml)"
            )
        agents = _pick_agent_pods(agent_list)
        plan = NodePlan(
            inv,
            [],
            agents,
            [],
            source="nodes",
            agents_error=agents_failure.reason if agents_failure is not None else None,
        )
        if self.opts.nodes:
            plan.names = list(dict.fromkeys(self.opts.nodes))
            if nodes_failure is None:  # only when the node list is trustworthy
                known = {name_of(n) for n in inv.nodes}
                plan.early = [
                    NodeResult(n, "failed", "no such node in the cluster", 0.0, 0) for n in plan.names if n not in known
                ]
                plan.names = [n for n in plan.names if n in known]
            return plan
        selector = self.opts.selector or KATA_RUNTIME_LABEL
        if nodes_failure is None:
            try:
                selected = await self.session.list("/api/v1/nodes", [("labelSelector", selector)])
            except KubeError as exc:
                if exc.status in (0, 401):
                    raise
                if exc.status == 400 and self.opts.selector:
                    raise UsageError(f"-l {self.opts.selector}: {exc.message}") from None
                nodes_failure = failure_from(f"nodes with label {selector}", exc)
                inv.failures.append(nodes_failure)
            else:
                plan.names = sorted({name_of(n) for n in selected})
                if not self.opts.selector:
                    # Kata pods on nodes kata-deploy never labelled (manual installs) count too.
                    plan.names = sorted(set(plan.names) | inv.kata_pod_nodes)
                return plan
        # The node list is unreadable: every node that runs an agent pod is a Kata node (the
        # DaemonSet's affinity is the kata-deploy label), plus nodes with Kata pods if known.
        assert nodes_failure is not None
        plan.source = "agent pods"
        plan.names = sorted(set(agents) | (set() if self.opts.selector else inv.kata_pod_nodes))
        plan.note = (
            f"nodes cannot be listed ({nodes_failure.reason}): collected the nodes that run a "
            f"kata-debug agent pod in namespace {self.opts.agent_namespace}"
        )
        if self.opts.selector:
            plan.note += f"; -l {self.opts.selector} ignored (node labels unknown)"
            inv.failures.append(ItemFailure(f"node selection -l {self.opts.selector}", plan.note, nodes_failure.status))
        return plan

    async def collect_node(
        self, node: str, agent: dict[str, Any] | None, bundle: AsyncBundle, agents_error: str | None = None
    ) -> NodeResult:
        start = time.monotonic()
        base = f"nodes/{safe_component(node, 'node')}"
        if agent is None and agents_error is not None:
            return NodeResult(
                node,
                "failed",
                f"cannot list the kata-debug agent pods in namespace {self.opts.agent_namespace}: {agents_error}",
                0.0,
                0,
            )
        if agent is None:
            return NodeResult(
                node,
                "failed",
                f"no kata-debug agent pod on this node (label {self.opts.agent_selector} in namespace "
                f"{self.opts.agent_namespace}): is deploy/daemonset.yaml applied and the node labelled {KATA_RUNTIME_LABEL}?",
                0.0,
                0,
            )
        pod = name_of(agent)
        phase = (agent.get("status") or {}).get("phase")
        if phase != "Running":
            return NodeResult(node, "failed", f"agent pod {pod} is {phase or 'not running'}", 0.0, 0, pod=pod)
        self.progress.node_started(node)
        spool = Spool()
        sink = _SpoolSink(spool, lambda n: self.progress.node_bytes(node, n))
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
                        container=self.opts.agent_container,
                    )
                exit_code, stderr = outcome.exit_code, outcome.stderr
                if exit_code == 0:
                    status = "ok"
                elif exit_code == PARTIAL_EXIT:
                    status, error = "partial", "bundle written but some node collectors failed (see its manifest)"
                elif exit_code is not None:
                    tail = _stderr_tail(stderr)
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
                spool.close()
            if stderr.strip():
                redacted = await asyncio.to_thread(self.redactor.bytes, stderr)
                await bundle.add_bytes(f"{base}/collect.stderr", redacted)
        except BaseException:
            spool.close()
            raise
        return NodeResult(
            node,
            status,
            error,
            round(time.monotonic() - start, 3),
            sink.bytes,
            pod=pod,
            exit_code=exit_code,
            member=member,
        )


def default_output(context: str | None, started: datetime, compression: Compression) -> str:
    return f"./{bundle_stem('cluster-' + (context or 'cluster'), started)}{SUFFIXES[compression]}"


async def run_cluster_collection(opts: ClusterOptions, progress: ClusterProgress | None = None) -> ClusterResult:
    """Collect the cluster into `opts.output`. Raises UsageError/KataDebugError before writing."""
    validate(opts)
    progress = progress or _NoProgress()
    session = await KubeSession.connect(opts.kubeconfig, opts.context, pool_size=opts.parallel + 8)
    try:
        return await _run(opts, session, progress)
    finally:
        await session.close()


async def _run(opts: ClusterOptions, session: KubeSession, progress: ClusterProgress) -> ClusterResult:
    run = ClusterCollection(opts, session, progress)
    started = datetime.now(UTC)
    try:
        plan = await run.plan()
    except KubeError as exc:
        hint = " (the API server rejected the kubeconfig's credentials)" if exc.status == 401 else ""
        status = f"HTTP {exc.status}: " if exc.status else ""
        raise KataDebugError(f"cluster {session.target.server}: {status}{exc.message}{hint}") from None
    inv, names, agents, early = plan.inventory, plan.names, plan.agents, plan.early
    progress.nodes_planned(names)
    context = session.target.context
    top = bundle_stem("cluster-" + (context or "cluster"), started)
    output = opts.output or default_output(context, started, opts.compression)
    target = OutputTarget(output)
    sink = target.open()
    bundle = AsyncBundle(BundleWriter(sink, top, opts.compression))
    objects = ClusterObjects(session, bundle, run.redactor, inv, opts.since)
    results: dict[str, NodeResult] = {r.name: r for r in early}
    for r in early:
        progress.node_finished(r)
    queue: asyncio.Queue[str] = asyncio.Queue()
    for n in names:
        queue.put_nowait(n)

    async def worker() -> None:
        while True:
            try:
                node = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                result = await run.collect_node(node, agents.get(node), bundle, plan.agents_error)
            except KubeError as exc:
                result = NodeResult(node, "failed", exc.message, 0.0, 0)
            results[node] = result
            progress.node_finished(result)

    objects_started = time.monotonic()
    objects_error: str | None = None

    async def cluster_part() -> None:
        nonlocal objects_error
        try:
            await objects.collect()
        except KubeError as exc:
            objects_error = exc.message
        except Exception as exc:  # a bug in one reader must not cost the node bundles
            objects_error = f"{type(exc).__name__}: {exc}"

    tasks = [asyncio.create_task(cluster_part(), name="cluster-objects")]
    tasks += [asyncio.create_task(worker(), name=f"node-worker-{i}") for i in range(min(opts.parallel, len(names)))]
    interrupted = await run_interruptible(tasks)

    for n in names:
        if n not in results:
            results[n] = NodeResult(
                n, "failed", interrupted or "interrupted", 0.0, 0, pod=name_of(agents[n]) if n in agents else None
            )
    ordered = [results[n] for n in sorted(results)]
    failures = [{"item": f.item, "reason": f.reason} for f in objects.failures]
    if objects_error:
        failures.append({"item": "cluster objects", "reason": objects_error})
    finished = datetime.now(UTC)
    objects_status = "failed" if objects_error else ("partial" if failures else "ok")
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "tool_version": __version__,
        "kind": "cluster",
        "context": context,
        "server": session.target.server,
        "started_at": started.isoformat(),
        "finished_at": finished.isoformat(),
        "since": (started - opts.since).isoformat(),
        "redacted": opts.redact,
        "interrupted": interrupted,
        "node_selection": {
            "nodes": opts.nodes,
            "selector": opts.selector or (None if opts.nodes else KATA_RUNTIME_LABEL),
            "plus_nodes_with_kata_pods": not (opts.nodes or opts.selector),
            "from": plan.source,
            "note": plan.note,
        },
        "kata_runtime_classes": sorted(inv.kata_runtime_classes),
        "kata_pods": len(inv.kata_pods),
        "collectors": [
            {
                "name": "cluster-objects",
                "status": objects_status,
                "duration_s": round(time.monotonic() - objects_started, 3),
                "error": objects_error
                or (
                    f"{len(failures)} item(s) failed; first: {failures[0]['item']}: {failures[0]['reason']}"
                    if failures
                    else None
                ),
                "files": objects.files,
                "items_failed": failures,
                "truncated": {},
            }
        ],
        "nodes": [
            {
                "name": r.name,
                "status": r.status,
                "error": r.error,
                "duration_s": r.duration_s,
                "bytes": r.bytes,
                "pod": r.pod,
                "exit_code": r.exit_code,
                "member": r.member,
            }
            for r in ordered
        ],
        "redactions": run.redactor.counts,
    }
    try:
        await bundle.close(manifest)
    except BaseException:
        target.abandon()
        raise
    target.commit()
    return ClusterResult(output, context, ordered, failures, run.redactor.counts, interrupted)


def result_json(result: ClusterResult) -> dict[str, Any]:
    return {
        "bundle": result.output,
        "context": result.context,
        "exit_code": result.exit_code,
        "interrupted": result.interrupted,
        "nodes": [asdict(n) for n in result.nodes],
        "cluster_items_failed": result.items_failed,
        "redactions": result.redactions,
    }
