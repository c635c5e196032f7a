"""Live-cluster input for `kata-debug limits`: pods, RuntimeClasses and LimitRanges from the API.

Uses the official client's asyncio flavour (`kubernetes.aio`) so kubeconfig handling
(contexts, tokens, client certificates, exec plugins) matches what users already run.
Objects are read as raw JSON (`*_without_preload_content`): they feed the same adapter as
manifests, and a pod as the API returns it already has admission applied (LimitRange
defaults, RuntimeClass overhead), so no admission is re-applied.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import aiohttp
from kubernetes.aio.client import ApiClient, Configuration
from kubernetes.aio.config import ConfigException, load_incluster_config
from kubernetes.aio.config.kube_config import KUBE_CONFIG_DEFAULT_LOCATION, KubeConfigLoader, KubeConfigMerger

from .errors import UsageError
from .limits import Document, is_kata_name

PAGE = 500
TIMEOUT = 30.0


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


class _ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def _configure(kubeconfig: str | None, context: str | None) -> tuple[Configuration, str | None, str]:
    """Client configuration like kubectl's: --kubeconfig, $KUBECONFIG, ~/.kube/config, in-cluster."""
    cfg = Configuration()
    if kubeconfig is not None and not os.path.isfile(kubeconfig):
        raise UsageError(f"--kubeconfig {kubeconfig}: no such file")
    paths = kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser(KUBE_CONFIG_DEFAULT_LOCATION)
    option = f"--kubeconfig {kubeconfig}" if kubeconfig else f"kubeconfig {paths}"
    existing = [p for p in paths.split(os.pathsep) if p and os.path.isfile(os.path.expanduser(p))]
    if not existing:
        if os.environ.get("KUBERNETES_SERVICE_HOST") and not context:
            try:
                load_incluster_config(client_configuration=cfg)
            except ConfigException as exc:
                raise UsageError(f"in-cluster configuration: {exc}") from None
            return cfg, None, "in-cluster"
        raise UsageError(f"{option}: not found; no cluster to read (pass manifest PATHs, or --kubeconfig FILE)")
    try:
        merger = await asyncio.to_thread(KubeConfigMerger, paths)
        loader = KubeConfigLoader(config_dict=merger.config, active_context=context, config_base_path=None)
        await loader.load_and_set(cfg)
    except ConfigException as exc:
        raise UsageError(f"--context {context}: {exc}" if context else f"{option}: {exc}") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{option}: cannot use it: {exc}") from None
    current = loader.current_context or {}
    ns = (current.get("context") or {}).get("namespace")
    return cfg, ns, str(current.get("name") or context or "")


async def _list(api: ApiClient, path: str, what: str) -> list[dict[str, Any]]:
    """All items of one collection, page by page, as raw JSON.

    Requests go through the client's generic `param_serialize`/`call_api` (auth, TLS and
    proxies included) rather than the generated `CoreV1Api`, whose import alone costs
    more than a second.
    """
    items: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        query: list[tuple[str, Any]] = [("limit", PAGE)] + ([("continue", token)] if token else [])
        method, url, headers, body, post = await api.param_serialize(
            method="GET", resource_path=path, query_params=query,
            header_params={"Accept": "application/json"}, auth_settings=["BearerToken"],
        )
        resp = await api.call_api(method, url, headers, body, post, _request_timeout=TIMEOUT)
        try:
            data = await resp.read()
        finally:
            resp.response.release()
        if resp.status != 200:
            try:
                message = json.loads(data).get("message") or resp.reason
            except (ValueError, AttributeError):
                message = resp.reason
            raise _ApiError(resp.status, f"{what}: HTTP {resp.status}: {message}")
        try:
            page = json.loads(data)
        except ValueError:
            raise _ApiError(resp.status, f"{what}: the response is not JSON") from None
        items.extend(i for i in page.get("items") or [] if isinstance(i, dict))
        token = (page.get("metadata") or {}).get("continue") or None
        if not token:
            return items


def _docs(items: list[dict[str, Any]], kind: str, plural_path: Callable[[dict[str, Any]], str]) -> list[Document]:
    out = []
    for i, obj in enumerate(items):
        obj.setdefault("kind", kind)  # list items carry no kind on the wire
        out.append(Document(plural_path(obj), None, i, obj))
    return out


def _meta(obj: dict[str, Any]) -> tuple[str, str]:
    m = obj.get("metadata") or {}
    return str(m.get("namespace") or "default"), str(m.get("name") or "?")


async def fetch(kubeconfig: str | None, context: str | None, namespace: str | None,
                all_namespaces: bool) -> ClusterObjects:
    """Read Kata-relevant objects; UsageError (exit 2) when there is no usable cluster."""
    cfg, ctx_ns, ctx_name = await _configure(kubeconfig, context)
    ns = None if all_namespaces else (namespace or ctx_ns or "default")
    target = f"{ctx_name} ({cfg.host})" if ctx_name else cfg.host
    result = ClusterObjects(target=target, namespace=ns)
    pods_path = "/api/v1/pods" if ns is None else f"/api/v1/namespaces/{ns}/pods"
    lrs_path = "/api/v1/limitranges" if ns is None else f"/api/v1/namespaces/{ns}/limitranges"
    async with ApiClient(configuration=cfg) as api:
        try:
            pods = await _list(api, pods_path, "pods" if ns is None else f"pods in {ns}")
        except _ApiError as exc:
            raise UsageError(f"{target}: {exc}") from None
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            raise UsageError(f"{target}: cannot reach the Kubernetes API server: {reason}") from None
        result.pods = _docs(pods, "Pod", lambda o: "/api/v1/namespaces/{}/pods/{}".format(*_meta(o)))
        try:
            rcs = await _list(api, "/apis/node.k8s.io/v1/runtimeclasses", "runtimeclasses")
            result.runtime_classes = _docs(rcs, "RuntimeClass",
                                           lambda o: f"/apis/node.k8s.io/v1/runtimeclasses/{_meta(o)[1]}")
        except _ApiError as exc:
            result.notes.append(f"{exc}: RuntimeClass handlers and overhead unknown")
        try:
            lrs = await _list(api, lrs_path, "limitranges" if ns is None else f"limitranges in {ns}")
            result.limit_ranges = _docs(lrs, "LimitRange",
                                        lambda o: "/api/v1/namespaces/{}/limitranges/{}".format(*_meta(o)))
        except _ApiError as exc:
            result.notes.append(f"{exc}: LimitRanges not checked")
    return result
