"""`manifest.json`: the one record of what a bundle holds and how each part of it went.

Node bundles (`collect`) and cluster bundles (`collect --cluster`) share this schema: the
same collector entries, the same per-item failures, the same timing and redaction fields;
a cluster bundle adds how its nodes were chosen and one entry per node. Readers (support
engineers, `tests/bundles.py`, scripts) key on these names, so `to_json` spells out every
key and its order here, in one place, instead of each producer building its own dict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

SCHEMA_VERSION = 1

#: How one collector ended. `partial`: some items failed, the rest is in the bundle.
Status = Literal["ok", "partial", "failed", "timeout", "skipped"]
#: How one node of a cluster bundle ended (`partial`: its own collect exited 3).
NodeStatus = Literal["ok", "partial", "failed", "timeout"]
#: Through which pod a node was collected: `agent` (the DaemonSet's) or `ephemeral` (made for the run).
NodeVia = Literal["agent", "ephemeral"]
#: Statuses that make the run's exit code 3.
FAILING: frozenset[str] = frozenset({"partial", "failed", "timeout"})


@dataclass
class ItemFailure:
    """One item (a file, a command, an API read) that could not be collected; the rest went on."""

    item: str
    reason: str
    #: The HTTP status when an API read was refused: a 403 decides the cluster run's fallbacks.
    #: Not part of the manifest (the reason already quotes it).
    http_status: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"item": self.item, "reason": self.reason}


@dataclass
class CollectorEntry:
    """One collector's outcome: what it wrote, what failed, what was cut to fit the caps."""

    name: str
    status: Status
    duration_s: float
    error: str | None
    files: list[str]
    items_failed: list[ItemFailure] = field(default_factory=list)
    #: member path -> bytes dropped (the oldest) to keep a log within --max-log-size.
    truncated: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "duration_s": self.duration_s,
            "error": self.error,
            "files": list(self.files),
            "items_failed": [f.to_json() for f in self.items_failed],
            "truncated": dict(self.truncated),
        }


@dataclass
class NodeEntry:
    """One node of a cluster bundle: its agent pod, its exit status, where its bundle is."""

    name: str
    status: NodeStatus
    error: str | None
    duration_s: float
    bytes: int
    pod: str | None = None
    exit_code: int | None = None
    member: str | None = None  # None: the node sent nothing
    #: Which pod collected it: the DaemonSet's agent, or a collector pod made for this run
    #: (and deleted after it). None: no pod was tried (the node does not exist).
    via: NodeVia | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "error": self.error,
            "duration_s": self.duration_s,
            "bytes": self.bytes,
            "pod": self.pod,
            "via": self.via,
            "exit_code": self.exit_code,
            "member": self.member,
        }


@dataclass
class NodeScope:
    """A node bundle is about one node, read through one host root."""

    node: str
    host_root: str


@dataclass
class NodeSelection:
    """How a cluster run chose its nodes, so a reader can tell a missing node from an unselected one."""

    nodes: list[str]
    selector: str | None
    plus_nodes_with_kata_pods: bool
    source: Literal["nodes", "agent pods"]  # "from" in the manifest
    note: str | None


@dataclass
class CollectorPodsScope:
    """The collector pods a cluster run made (nodes with `via: ephemeral`), and what it cleaned up."""

    namespace: str
    image: str
    run_id: str  # the value of their `kata-debug/run` label
    leftovers_deleted: list[str]  # collector pods of earlier runs deleted first
    leftovers_error: str | None  # why earlier runs' pods could not be listed

    def to_json(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "image": self.image,
            "run_id": self.run_id,
            "leftovers_deleted": list(self.leftovers_deleted),
            "leftovers_error": self.leftovers_error,
        }


@dataclass
class ClusterScope:
    """A cluster bundle: which API server, how nodes were chosen, and one entry per node."""

    context: str | None
    server: str
    node_selection: NodeSelection
    kata_runtime_classes: list[str]
    kata_pods: int
    nodes: list[NodeEntry]
    collector_pods: CollectorPodsScope | None = None  # None: every node had an agent pod


@dataclass
class Trigger:
    """Why a capture bundle exists: the failure the node agent saw (absent from other bundles)."""

    reason: str  # error-line | vanished | diagnose
    time: datetime
    sandbox: str
    line: str | None
    pod: str | None = None
    #: Node paths the runtime had removed before the capture looked: they come from the
    #: agent's own copy, taken while the sandbox was young.
    from_copy: list[str] = field(default_factory=list)
    #: Node paths read at the start of the capture that the runtime removed before it ended.
    vanished_during_capture: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "time": self.time.isoformat(),
            "sandbox": self.sandbox,
            "line": self.line,
            "pod": self.pod,
            "from_copy": list(self.from_copy),
            "vanished_during_capture": list(self.vanished_during_capture),
        }


@dataclass
class Manifest:
    """Everything `manifest.json` says except the file list, which the bundle writer adds."""

    tool_version: str
    scope: NodeScope | ClusterScope
    started_at: datetime
    finished_at: datetime
    since: datetime  # the oldest log time asked for
    redacted: bool
    interrupted: str | None
    collectors: list[CollectorEntry]
    redactions: dict[str, int]
    trigger: Trigger | None = None  # capture bundles only


def to_json(manifest: Manifest) -> dict[str, Any]:
    """The manifest as written: node and cluster bundles keep their historical key order."""
    scope = manifest.scope
    doc: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "tool_version": manifest.tool_version}
    if isinstance(scope, NodeScope):
        doc.update(node=scope.node, host_root=scope.host_root)
    else:
        doc.update(kind="cluster", context=scope.context, server=scope.server)
    doc.update(
        started_at=manifest.started_at.isoformat(),
        finished_at=manifest.finished_at.isoformat(),
        since=manifest.since.isoformat(),
        redacted=manifest.redacted,
        interrupted=manifest.interrupted,
    )
    if manifest.trigger is not None:
        doc["trigger"] = manifest.trigger.to_json()
    if isinstance(scope, ClusterScope):
        sel = scope.node_selection
        doc["node_selection"] = {
            "nodes": list(sel.nodes),
            "selector": sel.selector,
            "plus_nodes_with_kata_pods": sel.plus_nodes_with_kata_pods,
            "from": sel.source,
            "note": sel.note,
        }
        doc.update(kata_runtime_classes=list(scope.kata_runtime_classes), kata_pods=scope.kata_pods)
    doc["collectors"] = [c.to_json() for c in manifest.collectors]
    if isinstance(scope, ClusterScope):
        doc["nodes"] = [n.to_json() for n in scope.nodes]
        if scope.collector_pods is not None:
            doc["collector_pods"] = scope.collector_pods.to_json()
    doc["redactions"] = dict(manifest.redactions)
    return doc
