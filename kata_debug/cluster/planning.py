"""Which nodes a cluster run collects, and through which node agent pod.

Nothing is written until the server has shown it is a Kubernetes API server (GET /version)
and the identity can see the nodes or the agent pods: a wrong URL or a login that sees
nothing ends as one error line, not as an empty bundle with exit 3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from kata_debug.bundle.manifest import ItemFailure, NodeEntry
from kata_debug.cluster.objects import KATA_RUNTIME_LABEL, Inventory, discover, failure_from, name_of
from kata_debug.cluster.options import ClusterOptions
from kata_debug.errors import KataDebugError, UsageError
from kata_debug.kube.client import KubeError, KubeSession


@dataclass
class NodePlan:
    """What `plan` decided: the nodes to try, their agent pods, and how the list was made."""

    inventory: Inventory
    names: list[str]
    agents: dict[str, dict[str, Any]]  # nodeName -> agent pod
    early: list[NodeEntry]  # nodes that cannot be tried (asked for by name, not in the cluster)
    source: Literal["nodes", "agent pods"] = "nodes"
    note: str | None = None  # why the selection differs from what was asked
    agents_error: str | None = None  # why the agent pods could not be listed


def server_label(session: KubeSession) -> str:
    """`server URL (context NAME)`: how error lines name the cluster."""
    target = session.target
    return f"server {target.server}" + (f" (context {target.context})" if target.context else "")


async def preflight(session: KubeSession) -> dict[str, Any]:
    """GET /version: stop before anything is written unless a Kubernetes API server answers.

    A kubeconfig pointing at the wrong URL (a web server, a proxy without the API behind
    it) otherwise gets 404 on every read and ends as an empty bundle. /version is readable
    by everyone (system:public-info-viewer), so a 403 here only means that role was
    removed and the run goes on; 401 means the credentials were rejected.
    """
    try:
        version = await session.get("/version")
    except KubeError as exc:
        if exc.status == 403:
            return {}
        if exc.status in (0, 401):
            raise
        detail = f"HTTP {exc.status}" if not 200 <= exc.status < 300 else exc.message
        raise KataDebugError(f"{server_label(session)}: not a Kubernetes API server (GET /version: {detail})") from None
    if not isinstance(version.get("gitVersion"), str):
        raise KataDebugError(
            f"{server_label(session)}: not a Kubernetes API server (GET /version: no gitVersion in the answer)"
        )
    return version


def pick_agent_pods(pods: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
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


async def _agent_pods(
    session: KubeSession, opts: ClusterOptions, inv: Inventory
) -> tuple[list[dict[str, Any]], ItemFailure | None]:
    """The node agent pods, or the failure that hid them (also recorded in `inv`)."""
    try:
        pods = await session.list(
            f"/api/v1/namespaces/{opts.agent_namespace}/pods",
            [("labelSelector", opts.agent_selector)],
        )
    except KubeError as exc:
        if exc.status in (0, 401):
            raise
        failure = failure_from(f"agent pods in namespace {opts.agent_namespace}", exc)
        inv.failures.append(failure)
        return [], failure
    return pods, None


async def plan(session: KubeSession, opts: ClusterOptions) -> NodePlan:
    """Which nodes to collect, from which agent pod; nodes that cannot be tried come back as entries.

    The node list is the first choice (labels, `-l`, "no such node"). When it cannot be
    read, the agent pods are: the README's minimal grant (the Role kata-debug-collect:
    list pods and exec in namespace kata-debug) must still bring every node's bundle
    home, and the DaemonSet already runs exactly one agent on every Kata node.
    """
    await preflight(session)
    inv = await discover(session, None)
    agent_list, agents_failure = await _agent_pods(session, opts, inv)
    nodes_failure = next((f for f in inv.failures if f.item == "nodes"), None)
    if (
        agents_failure is not None
        and agents_failure.http_status == 403
        and nodes_failure is not None
        and nodes_failure.http_status == 403
    ):
        raise KataDebugError(
            f"{server_label(session)}: forbidden: cannot list nodes or pods in namespace {opts.agent_namespace} "
            f"({agents_failure.reason}); check the credentials and RBAC (Role kata-debug-collect in "
            f"namespace {opts.agent_namespace}, deploy/daemonset.yaml)"
        )
    agents = pick_agent_pods(agent_list)
    result = NodePlan(
        inv,
        [],
        agents,
        [],
        source="nodes",
        agents_error=agents_failure.reason if agents_failure is not None else None,
    )
    if opts.nodes:
        result.names = list(dict.fromkeys(opts.nodes))
        if nodes_failure is None:  # only when the node list is trustworthy
            known = {name_of(n) for n in inv.nodes}
            result.early = [
                NodeEntry(n, "failed", "no such node in the cluster", 0.0, 0) for n in result.names if n not in known
            ]
            result.names = [n for n in result.names if n in known]
        return result
    selector = opts.selector or KATA_RUNTIME_LABEL
    if nodes_failure is None:
        try:
            selected = await session.list("/api/v1/nodes", [("labelSelector", selector)])
        except KubeError as exc:
            if exc.status in (0, 401):
                raise
            if exc.status == 400 and opts.selector:
                raise UsageError(f"-l {opts.selector}: {exc.message}") from None
            nodes_failure = failure_from(f"nodes with label {selector}", exc)
            inv.failures.append(nodes_failure)
        else:
            result.names = sorted({name_of(n) for n in selected})
            if not opts.selector:
                # Kata pods on nodes kata-deploy never labelled (manual installs) count too.
                result.names = sorted(set(result.names) | inv.kata_pod_nodes)
            return result
    # The node list is unreadable: every node that runs an agent pod is a Kata node (the
    # DaemonSet's affinity is the kata-deploy label), plus nodes with Kata pods if known.
    result.source = "agent pods"
    result.names = sorted(set(agents) | (set() if opts.selector else inv.kata_pod_nodes))
    result.note = (
        f"nodes cannot be listed ({nodes_failure.reason}): collected the nodes that run a "
        f"kata-debug agent pod in namespace {opts.agent_namespace}"
    )
    if opts.selector:
        result.note += f"; -l {opts.selector} ignored (node labels unknown)"
        inv.failures.append(ItemFailure(f"node selection -l {opts.selector}", result.note, nodes_failure.http_status))
    return result
