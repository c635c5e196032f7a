"""Live-cluster input for `kata-debug limits`: pods, RuntimeClasses and LimitRanges from the API.

Uses the official client's asyncio flavour (`kubernetes.aio`) so kubeconfig handling
(contexts, tokens, client certificates, exec plugins) matches what users already run.
Objects are read as raw JSON (`*_without_preload_content`): they feed the same adapter as
manifests, and a pod as the API returns it already has admission applied (LimitRange
defaults, RuntimeClass overhead), so no admission is re-applied.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kata_debug.errors import UsageError
from kata_debug.kube.client import KubeError, KubeSession
from kata_debug.sizing.limits import Document, is_kata_name


@dataclass
class ClusterObjects:
    """What the cluster returned, as documents for `limits.analyse`."""

    target: str  # "context (server)" for messages
    namespace: str | None  # None = all namespaces
    pods: list[Document] = field(default_factory=list)
    runtime_classes: list[Document] = field(default_factory=list)
    limit_ranges: list[Document] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # partial access (403 on RuntimeClasses ...)

    def documents(self) -> list[Document]:
        return self.runtime_classes + self.limit_ranges + self.pods

    def kata_namespaces(self, extra: tuple[str, ...]) -> frozenset[str]:
        """Namespaces that run Kata pods: only their LimitRanges are about Kata."""
        handlers = {}
        for d in self.runtime_classes:
            meta = d.obj.get("metadata") or {}
            handlers[meta.get("name")] = d.obj.get("handler")
        out = set()
        for d in self.pods:
            rc = (d.obj.get("spec") or {}).get("runtimeClassName")
            if is_kata_name(rc, extra) or is_kata_name(handlers.get(rc), extra):
                out.add((d.obj.get("metadata") or {}).get("namespace") or "default")
        return frozenset(out)


def _docs(items: list[dict[str, Any]], kind: str, plural_path: Callable[[dict[str, Any]], str]) -> list[Document]:
    out = []
    for i, obj in enumerate(items):
        obj.setdefault("kind", kind)  # list items carry no kind on the wire
        out.append(Document(plural_path(obj), None, i, obj))
    return out


def _meta(obj: dict[str, Any]) -> tuple[str, str]:
    m = obj.get("metadata") or {}
    return str(m.get("namespace") or "default"), str(m.get("name") or "?")


async def fetch(
    kubeconfig: str | None, context: str | None, namespace: str | None, all_namespaces: bool
) -> ClusterObjects:
    """Read Kata-relevant objects; UsageError (exit 2) when there is no usable cluster."""
    session = await KubeSession.connect(kubeconfig, context)
    cfg_target = session.target
    ns = None if all_namespaces else (namespace or cfg_target.namespace or "default")
    target = f"{cfg_target.context} ({cfg_target.server})" if cfg_target.context else cfg_target.server
    result = ClusterObjects(target=target, namespace=ns)
    pods_path = "/api/v1/pods" if ns is None else f"/api/v1/namespaces/{ns}/pods"
    lrs_path = "/api/v1/limitranges" if ns is None else f"/api/v1/namespaces/{ns}/limitranges"
    try:
        try:
            pods = await session.list(pods_path)
        except KubeError as exc:
            if exc.status == 0:
                raise UsageError(f"{target}: cannot reach the Kubernetes API server: {exc.message}") from None
            raise UsageError(
                f"{target}: {'pods' if ns is None else f'pods in {ns}'}: HTTP {exc.status}: {exc.message}"
            ) from None
        result.pods = _docs(pods, "Pod", lambda o: "/api/v1/namespaces/{}/pods/{}".format(*_meta(o)))
        try:
            rcs = await session.list("/apis/node.k8s.io/v1/runtimeclasses")
            result.runtime_classes = _docs(
                rcs, "RuntimeClass", lambda o: f"/apis/node.k8s.io/v1/runtimeclasses/{_meta(o)[1]}"
            )
        except KubeError as exc:
            result.notes.append(
                f"runtimeclasses: HTTP {exc.status}: {exc.message}: RuntimeClass handlers and overhead unknown"
            )
        try:
            lrs = await session.list(lrs_path)
            result.limit_ranges = _docs(
                lrs, "LimitRange", lambda o: "/api/v1/namespaces/{}/limitranges/{}".format(*_meta(o))
            )
        except KubeError as exc:
            what = "limitranges" if ns is None else f"limitranges in {ns}"
            result.notes.append(f"{what}: HTTP {exc.status}: {exc.message}: LimitRanges not checked")
    finally:
        await session.close()
    return result
