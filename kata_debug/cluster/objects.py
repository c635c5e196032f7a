"""The cluster-level half of a cluster bundle: the Kubernetes objects that explain Kata pods.

What decides whether a Kata pod works lives partly outside the node: which RuntimeClass it
names (handler, overhead, scheduling), the limits the kubelet will hand to Kata's VM sizing,
the LimitRange that filled those limits in, the owner that keeps recreating it, the events,
and whether kata-deploy finished installing. This module reads those objects through the API
and writes them, redacted, under `cluster/`. Each read that fails becomes an `items_failed`
entry (403 on events must not cost the pods); only "cannot talk to the API server at all"
is fatal, and that is decided by the caller before anything is written.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from kata_debug.bundle.manifest import ItemFailure
from kata_debug.bundle.writer import AsyncBundle, Spool, safe_component
from kata_debug.kube.client import KubeError, KubeSession
from kata_debug.redact.redactor import Redactor

KATA_RUNTIME_LABEL = "katacontainers.io/kata-runtime"
KATA_DEPLOY_NAMES = ("kata-deploy",)
LOG_LIMIT_BYTES = 10 << 20


@dataclass
class Inventory:
    """What discovery found; decides which nodes are collected and which pods are Kata's."""

    runtime_classes: list[dict[str, Any]] = field(default_factory=list)
    kata_runtime_classes: set[str] = field(default_factory=set)
    nodes: list[dict[str, Any]] = field(default_factory=list)
    kata_pods: list[dict[str, Any]] = field(default_factory=list)
    failures: list[ItemFailure] = field(default_factory=list)

    @property
    def kata_pod_nodes(self) -> set[str]:
        return {n for p in self.kata_pods if (n := (p.get("spec") or {}).get("nodeName"))}


def is_kata_handler(handler: str | None) -> bool:
    """kata, kata-qemu, kata-clh, kata-fc, kata-qemu-snp ...: kata-deploy's handler names."""
    return bool(handler) and handler.lower().startswith("kata")  # type: ignore[union-attr]


def name_of(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name") or "")


def namespace_of(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("namespace") or "")


def failure_from(item: str, exc: KubeError) -> ItemFailure:
    """A failed read as a manifest entry, with the API server's own words."""
    return ItemFailure(item, f"HTTP {exc.status}: {exc.message}" if exc.status else exc.message, exc.status or None)


def redact_object(redactor: Redactor, obj: Any) -> Any:
    """Redact a Kubernetes object: `env[].value`, secret-looking keys and annotations
    (JSON annotations such as last-applied-configuration are parsed and redacted too)."""
    return redactor.json_value(obj)


async def discover(session: KubeSession, node_selector: str | None) -> Inventory:
    """RuntimeClasses, nodes (all, summarised later) and Kata pods; raises KubeError if unreachable.

    A 403 on one list is recorded and discovery goes on: someone allowed to exec into the
    agents but not to list pods cluster-wide still gets node bundles.
    """
    inv = Inventory()

    async def runtime_classes() -> None:
        try:
            inv.runtime_classes = await session.list("/apis/node.k8s.io/v1/runtimeclasses")
        except KubeError as exc:
            if exc.status in (0, 401):
                raise
            inv.failures.append(failure_from("runtimeclasses", exc))
        inv.kata_runtime_classes = {name_of(rc) for rc in inv.runtime_classes if is_kata_handler(rc.get("handler"))}

    async def nodes() -> None:
        query = [("labelSelector", node_selector)] if node_selector else []
        try:
            inv.nodes = await session.list("/api/v1/nodes", query)
        except KubeError as exc:
            if exc.status in (0, 401):
                raise
            inv.failures.append(failure_from("nodes", exc))

    await asyncio.gather(runtime_classes(), nodes())

    rcs_known = not any(f.item == "runtimeclasses" for f in inv.failures)

    def is_kata_pod(pod: dict[str, Any]) -> bool:
        rc = (pod.get("spec") or {}).get("runtimeClassName")
        if not rc:
            return False
        # Without RuntimeClasses (403), kata-deploy's naming (kata, kata-qemu ...) is the best guess.
        return rc in inv.kata_runtime_classes if rcs_known else is_kata_handler(rc)

    try:
        inv.kata_pods = await session.list("/api/v1/pods", keep=is_kata_pod)
    except KubeError as exc:
        if exc.status in (0, 401):
            raise
        inv.failures.append(failure_from("pods", exc))
    return inv


def node_summary(node: dict[str, Any], kata_pods: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The facts about a node that matter for Kata, in one small record."""
    meta = node.get("metadata") or {}
    status = node.get("status") or {}
    info = status.get("nodeInfo") or {}
    labels = meta.get("labels") or {}
    name = name_of(node)
    ready = next((c.get("status") for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    return {
        "name": name,
        "kata_runtime_label": labels.get(KATA_RUNTIME_LABEL),
        "labels": labels,
        "taints": (node.get("spec") or {}).get("taints") or [],
        "unschedulable": bool((node.get("spec") or {}).get("unschedulable")),
        "ready": ready,
        "capacity": status.get("capacity") or {},
        "allocatable": status.get("allocatable") or {},
        "kernel_version": info.get("kernelVersion"),
        "os_image": info.get("osImage"),
        "container_runtime_version": info.get("containerRuntimeVersion"),
        "kubelet_version": info.get("kubeletVersion"),
        "architecture": info.get("architecture"),
        "kata_pods": sorted(
            f"{namespace_of(p)}/{name_of(p)}" for p in kata_pods if (p.get("spec") or {}).get("nodeName") == name
        ),
    }


_IRREGULAR_PLURALS = {"Endpoints": "endpoints"}


def resource_path(api_version: str, kind: str, namespace: str, name: str) -> str:
    """API path of a namespaced object from an ownerReference (apiVersion, kind, name)."""
    plural = _IRREGULAR_PLURALS.get(kind) or kind.lower()
    if plural == kind.lower():
        if plural.endswith("y") and plural[-2:-1] not in "aeiou":
            plural = plural[:-1] + "ies"
        elif plural.endswith(("s", "x", "ch", "sh")):
            plural += "es"
        else:
            plural += "s"
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    return f"{base}/namespaces/{namespace}/{plural}/{name}"


class ClusterObjects:
    """Reads and writes everything under `cluster/`, recording what could not be read."""

    def __init__(
        self,
        session: KubeSession,
        bundle: AsyncBundle,
        redactor: Redactor,
        inventory: Inventory,
        since: timedelta,
    ) -> None:
        self.session = session
        self.bundle = bundle
        self.redactor = redactor
        self.inv = inventory
        self.since = since
        self.limit_ranges: list[dict[str, Any]] = []
        self.files: list[str] = []
        self.failures: list[ItemFailure] = list(inventory.failures)
        self._owners: dict[str, dict[str, Any] | None] = {}

    async def _json(self, path: str, value: Any) -> None:
        data = json.dumps(redact_object(self.redactor, value), indent=2, default=str).encode() + b"\n"
        await self.bundle.add_bytes(f"cluster/{path}", data)
        self.files.append(f"cluster/{path}")

    async def collect(self) -> None:
        """Write every cluster-level file; never raises for a single failed read."""
        await self._runtime_classes()
        await self._nodes()
        await self._pods()
        await self._limit_ranges()
        await self._kata_deploy()
        await self._limits()

    async def _runtime_classes(self) -> None:
        rcs = [
            {**rc, "kataDebug": {"kata": name_of(rc) in self.inv.kata_runtime_classes}}
            for rc in self.inv.runtime_classes
        ]
        await self._json("runtimeclasses.json", rcs)

    async def _nodes(self) -> None:
        await self._json("nodes.json", [node_summary(n, self.inv.kata_pods) for n in self.inv.nodes])
        kata_nodes = self.inv.kata_pod_nodes
        for node in self.inv.nodes:
            labels = (node.get("metadata") or {}).get("labels") or {}
            if KATA_RUNTIME_LABEL in labels or name_of(node) in kata_nodes:
                await self._json(f"nodes/{safe_component(name_of(node))}.json", node)

    async def _events_by_pod(self) -> dict[str, list[dict[str, Any]]]:
        """Events of the Kata pods, read per namespace (filtered while paging, not after)."""
        uids = {(p.get("metadata") or {}).get("uid") for p in self.inv.kata_pods}
        by_uid: dict[str, list[dict[str, Any]]] = {}
        for ns in sorted({namespace_of(p) for p in self.inv.kata_pods}):
            try:
                events = await self.session.list(
                    f"/api/v1/namespaces/{ns}/events",
                    keep=lambda e: (e.get("involvedObject") or {}).get("uid") in uids,
                )
            except KubeError as exc:
                self.failures.append(failure_from(f"events in namespace {ns}", exc))
                continue
            for e in events:
                by_uid.setdefault(str((e.get("involvedObject") or {}).get("uid") or ""), []).append(e)
        return by_uid

    async def _owner(self, ns: str, ref: dict[str, Any]) -> dict[str, Any] | None:
        uid = str(ref.get("uid") or f"{ref.get('kind')}/{ref.get('name')}")
        if uid in self._owners:
            return self._owners[uid]
        path = resource_path(
            str(ref.get("apiVersion") or "v1"), str(ref.get("kind") or ""), ns, str(ref.get("name") or "")
        )
        try:
            owner: dict[str, Any] | None = await self.session.get(path)
        except KubeError as exc:
            self.failures.append(failure_from(f"owner {ref.get('kind')} {ns}/{ref.get('name')}", exc))
            owner = None
        self._owners[uid] = owner
        if owner is not None:
            await self._json(
                f"owners/{safe_component(ns)}/{safe_component(str(ref.get('kind')))}/{safe_component(str(ref.get('name')))}.json",
                owner,
            )
        return owner

    async def _owner_chain(self, ns: str, obj: dict[str, Any], depth: int = 0) -> list[dict[str, str]]:
        """ReplicaSet -> Deployment, Job -> CronJob...: the refs, each owner written once."""
        chain: list[dict[str, str]] = []
        for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
            if not isinstance(ref, dict):
                continue
            chain.append(
                {"apiVersion": str(ref.get("apiVersion")), "kind": str(ref.get("kind")), "name": str(ref.get("name"))}
            )
            owner = await self._owner(ns, ref)
            if owner is not None and depth < 4:
                chain.extend(await self._owner_chain(ns, owner, depth + 1))
        return chain

    async def _pods(self) -> None:
        events = await self._events_by_pod()
        index = []
        for pod in self.inv.kata_pods:
            ns, name = namespace_of(pod), name_of(pod)
            owners = await self._owner_chain(ns, pod)
            uid = str((pod.get("metadata") or {}).get("uid") or "")
            pod_events = sorted(
                events.get(uid, []),
                key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or e.get("firstTimestamp") or ""),
            )
            await self._json(
                f"pods/{safe_component(ns)}/{safe_component(name)}.json",
                {"pod": pod, "owners": owners, "events": pod_events},
            )
            status = pod.get("status") or {}
            index.append(
                {
                    "namespace": ns,
                    "name": name,
                    "node": (pod.get("spec") or {}).get("nodeName"),
                    "runtimeClassName": (pod.get("spec") or {}).get("runtimeClassName"),
                    "phase": status.get("phase"),
                    "reason": status.get("reason"),
                    "owners": owners,
                    "events": len(pod_events),
                    "warnings": sum(1 for e in pod_events if e.get("type") == "Warning"),
                }
            )
        await self._json("pods.json", index)

    async def _limit_ranges(self) -> None:
        for ns in sorted({namespace_of(p) for p in self.inv.kata_pods}):
            try:
                items = await self.session.list(f"/api/v1/namespaces/{ns}/limitranges")
            except KubeError as exc:
                self.failures.append(failure_from(f"limitranges in namespace {ns}", exc))
                continue
            self.limit_ranges.extend(items)
            await self._json(f"limitranges/{safe_component(ns)}.json", items)

    async def _kata_deploy(self) -> None:
        """kata-deploy's DaemonSet status, and its pods' logs (the install/uninstall story)."""
        try:
            daemonsets = await self.session.list(
                "/apis/apps/v1/daemonsets",
                keep=lambda d: (
                    name_of(d) in KATA_DEPLOY_NAMES
                    or ((d.get("metadata") or {}).get("labels") or {}).get("name") in KATA_DEPLOY_NAMES
                    or ((d.get("metadata") or {}).get("labels") or {}).get("app.kubernetes.io/name")
                    in KATA_DEPLOY_NAMES
                ),
            )
        except KubeError as exc:
            self.failures.append(failure_from("daemonsets (kata-deploy)", exc))
            return
        if not daemonsets:
            await self._json(
                "kata-deploy/not-found.json",
                {"searched": "DaemonSets named or labelled kata-deploy, all namespaces", "found": 0},
            )
            return
        for ds in daemonsets:
            ns, name = namespace_of(ds), name_of(ds)
            await self._json(f"kata-deploy/{safe_component(ns)}/{safe_component(name)}.json", ds)
            match = ((ds.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
            selector = ",".join(f"{k}={v}" for k, v in sorted(match.items()))
            try:
                pods = await self.session.list(
                    f"/api/v1/namespaces/{ns}/pods", [("labelSelector", selector)] if selector else []
                )
            except KubeError as exc:
                self.failures.append(failure_from(f"pods of daemonset {ns}/{name}", exc))
                continue
            for pod in pods:
                await self._json(f"kata-deploy/{safe_component(ns)}/pods/{safe_component(name_of(pod))}.json", pod)
                for c in (pod.get("spec") or {}).get("containers") or []:
                    await self._log(ns, name_of(pod), str(c.get("name")), previous=False)
                for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                    if cs.get("restartCount"):
                        await self._log(ns, name_of(pod), str(cs.get("name")), previous=True)

    async def _log(self, ns: str, pod: str, container: str, previous: bool) -> None:
        """One container log, newest LOG_LIMIT_BYTES, streamed through redaction to a spool."""
        name = f"kata-deploy/{safe_component(ns)}/logs/{safe_component(pod)}/{safe_component(container)}{'.previous' if previous else ''}.log"
        query: list[tuple[str, Any]] = [
            ("container", container),
            ("timestamps", "true"),
            ("sinceSeconds", max(1, int(self.since.total_seconds()))),
        ]
        if previous:
            query.append(("previous", "true"))
        spool = await asyncio.to_thread(Spool, LOG_LIMIT_BYTES)  # creates a temp file
        stream = self.redactor.stream()
        pending = b""
        try:
            async for chunk in self.session.stream(f"/api/v1/namespaces/{ns}/pods/{pod}/log", query):
                pending += chunk
                cut = pending.rfind(b"\n") + 1 or (len(pending) if len(pending) >= 1 << 20 else 0)
                if cut:
                    block, pending = pending[:cut], pending[cut:]
                    await asyncio.to_thread(spool.write, stream.feed(block))
            if pending:
                await asyncio.to_thread(spool.write, stream.feed(pending))
        except KubeError as exc:
            spool.close()
            self.failures.append(failure_from(f"log {ns}/{pod}/{container}{' (previous)' if previous else ''}", exc))
            return
        except BaseException:
            spool.close()
            raise
        await self.bundle.add_spool(f"cluster/{name}", spool)
        self.files.append(f"cluster/{name}")

    async def _limits(self) -> None:
        """`kata-debug limits` on every Kata pod: the VM each one gets, and why."""
        if not self.inv.kata_pods:
            return
        try:
            report = await asyncio.to_thread(
                analyse_limits, self.inv.kata_pods, self.inv.runtime_classes, self.limit_ranges
            )
        except Exception as exc:  # the analysis must not sink the bundle
            self.failures.append(ItemFailure("limits analysis", f"{type(exc).__name__}: {exc}"))
            return
        await self._json("limits.json", report)


def analyse_limits(
    pods: list[dict[str, Any]], runtime_classes: list[dict[str, Any]], limit_ranges: list[dict[str, Any]]
) -> dict[str, Any]:
    """Live objects -> the `limits` report (blocking, pure).

    List items carry no `kind` on the wire, so it is set here; admission already happened
    (a live pod has its LimitRange defaults), so the analysis must not apply it again.
    """
    from kata_debug.sizing.limits import Document, Options, analyse

    def docs(items: list[dict[str, Any]], kind: str, path: Callable[[dict[str, Any]], str]) -> list[Document]:
        return [Document(path(o), None, i, {**o, "kind": kind}) for i, o in enumerate(items)]

    documents = (
        docs(runtime_classes, "RuntimeClass", lambda o: f"/apis/node.k8s.io/v1/runtimeclasses/{name_of(o)}")
        + docs(limit_ranges, "LimitRange", lambda o: f"/api/v1/namespaces/{namespace_of(o)}/limitranges/{name_of(o)}")
        + docs(pods, "Pod", lambda o: f"/api/v1/namespaces/{namespace_of(o)}/pods/{name_of(o)}")
    )
    opts = Options(admission=False, kata_namespaces=frozenset(namespace_of(p) for p in pods))
    return analyse(documents, opts).to_json()
