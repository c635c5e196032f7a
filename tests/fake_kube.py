"""A loopback Kubernetes API server for tests: complete objects, served like the real one.

The core is a dict of served objects keyed by API path (`/api/v1/namespaces/ns/pods/web`).
Lists are derived from it the way the API server derives them: a GET on a collection
(`/api/v1/pods`, `/api/v1/namespaces/ns/pods`, `/apis/node.k8s.io/v1/runtimeclasses`)
returns a `<Kind>List` of the items under it, paged with `limit`/`continue`, filtered by
equality `labelSelector` and `fieldSelector`. Discovery (`/api`, `/apis`, `/api/v1`, ...) is
generated from the kinds in `KINDS`, so the real `kubectl` works against it too.

Extending it (other test helpers do): `register_kind()` for more resource types,
`add_routes()` before `start()` for endpoints that are not plain GETs (the pods/exec
websocket lives in `tests/fake_kube_exec.py`), `find()` to look served objects up, and
`forbidden`/`token` for authorization failures; `only_namespace()` plays a user bound to a
namespaced Role and nothing else (every read elsewhere is 403, discovery stays public).
Only 127.0.0.1 is ever bound.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class Kind:
    """Where a kind lives in the API."""

    kind: str
    group: str  # "" for the core group
    version: str
    plural: str
    namespaced: bool
    short_names: tuple[str, ...] = ()

    @property
    def prefix(self) -> str:
        return f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"

    @property
    def api_version(self) -> str:
        return self.version if not self.group else f"{self.group}/{self.version}"


KINDS: dict[str, Kind] = {}


def register_kind(kind: Kind) -> None:
    KINDS[kind.kind] = kind


for _k in (
    Kind("Pod", "", "v1", "pods", True, ("po",)),
    Kind("LimitRange", "", "v1", "limitranges", True, ("limits",)),
    Kind("Namespace", "", "v1", "namespaces", False, ("ns",)),
    Kind("Node", "", "v1", "nodes", False, ("no",)),
    Kind("ConfigMap", "", "v1", "configmaps", True, ("cm",)),
    Kind("RuntimeClass", "node.k8s.io", "v1", "runtimeclasses", False),
    Kind("Deployment", "apps", "v1", "deployments", True, ("deploy",)),
    Kind("DaemonSet", "apps", "v1", "daemonsets", True, ("ds",)),
    Kind("ReplicaSet", "apps", "v1", "replicasets", True, ("rs",)),
    Kind("StatefulSet", "apps", "v1", "statefulsets", True, ("sts",)),
):
    register_kind(_k)


def status(code: int, reason: str, message: str) -> web.Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return web.json_response(body, status=code)


def item_path(obj: dict[str, Any]) -> str:
    """The API path of an object (its kind must be registered)."""
    k = KINDS[obj["kind"]]
    meta = obj["metadata"]
    if k.namespaced:
        return f"{k.prefix}/namespaces/{meta.get('namespace') or 'default'}/{k.plural}/{meta['name']}"
    return f"{k.prefix}/{k.plural}/{meta['name']}"


def _lookup(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def _selector(text: str) -> list[tuple[str, str, bool]]:
    """`a=b,c!=d` -> [(a, b, True), (c, d, False)] (equality selectors only)."""
    out = []
    for term in filter(None, (t.strip() for t in text.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            out.append((k.strip(), v.strip(), False))
        else:
            k, v = term.split("==", 1) if "==" in term else term.split("=", 1)
            out.append((k.strip(), v.strip(), True))
    return out


class FakeKube:
    """The server. `objects` maps API path -> object; items can be added with `add()`."""

    def __init__(self, objects: dict[str, Any] | None = None, token: str | None = None) -> None:
        self.objects: dict[str, Any] = dict(objects or {})
        self.token = token
        self.forbidden: set[str] = set()  # collection or item paths that answer 403
        self.user = "tester"  # who the 403 messages say was refused
        self.allowed: Callable[[str], bool] = lambda path: True  # RBAC: may this path be read?
        self.requests: list[str] = []  # every request's path and query, in order
        self.app = web.Application()
        self._extra: list[web.RouteDef] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    # ---- content --------------------------------------------------------------------

    def add(self, *objs: dict[str, Any]) -> FakeKube:
        """Serve complete objects at their item paths (uid/resourceVersion filled in if absent)."""
        for obj in objs:
            obj = copy.deepcopy(obj)
            meta = obj.setdefault("metadata", {})
            if KINDS[obj["kind"]].namespaced:
                meta.setdefault("namespace", "default")
            meta.setdefault("uid", f"00000000-0000-4000-8000-{len(self.objects):012d}")
            meta.setdefault("resourceVersion", str(1000 + len(self.objects)))
            meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
            self.objects[item_path(obj)] = obj
        return self

    def find(self, path: str) -> Any:
        return self.objects.get(path)

    def pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get(f"/api/v1/namespaces/{namespace}/pods/{name}")

    def only_namespace(self, namespace: str, user: str | None = None) -> FakeKube:
        """Authorize like a user whose only grant is a Role in `namespace`.

        What the API server keeps public for everyone (system:public-info-viewer and
        system:discovery: /version, /api, /apis and the group discovery documents) stays
        readable; every other path outside /api/v1/namespaces/<namespace>/ answers 403.
        """
        inside = f"/api/v1/namespaces/{namespace}/"
        if user is not None:
            self.user = user
        self.allowed = lambda path: path.startswith(inside) or self._discovery(path) is not None
        return self

    def refuses(self, path: str) -> bool:
        """Whether a read of `path` is forbidden (by `forbidden` or by `only_namespace`)."""
        return path in self.forbidden or any(path.startswith(f + "/") for f in self.forbidden) or not self.allowed(path)

    def forbidden_status(self, path: str) -> web.Response:
        return status(403, "Forbidden", f'forbidden: User "{self.user}" cannot get path "{path}"')

    def add_routes(self, routes: Iterable[web.RouteDef]) -> None:
        """Extra endpoints (exec, logs, watch ...); they win over the generic GET handler."""
        if self._runner is not None:
            raise RuntimeError("add routes before start()")
        self._extra.extend(routes)

    # ---- serving --------------------------------------------------------------------

    def _collection(self, path: str) -> tuple[Kind, str | None] | None:
        """(kind, namespace or None for all) when `path` names a collection."""
        for k in KINDS.values():
            if path == f"{k.prefix}/{k.plural}":
                return k, None
            if k.namespaced and path.startswith(f"{k.prefix}/namespaces/") and path.endswith(f"/{k.plural}"):
                ns = path[len(f"{k.prefix}/namespaces/") : -len(f"/{k.plural}")]
                if ns and "/" not in ns:
                    return k, ns
        return None

    def _list(self, k: Kind, ns: str | None, query: Any) -> dict[str, Any]:
        items = [
            o
            for o in self.objects.values()
            if isinstance(o, dict)
            and o.get("kind") == k.kind
            and (ns is None or (o.get("metadata") or {}).get("namespace") == ns)
        ]
        items.sort(key=lambda o: ((o["metadata"].get("namespace") or ""), o["metadata"]["name"]))
        for key, want, eq in _selector(query.get("labelSelector", "")):
            items = [o for o in items if (((o["metadata"].get("labels") or {}).get(key) == want) == eq)]
        for key, want, eq in _selector(query.get("fieldSelector", "")):
            items = [o for o in items if ((str(_lookup(o, key)) == want) == eq)]
        start = int(query.get("continue") or 0)
        limit = int(query.get("limit") or 0)
        page = items[start : start + limit] if limit else items[start:]
        meta: dict[str, Any] = {"resourceVersion": str(2000 + len(self.objects))}
        if limit and start + limit < len(items):
            meta["continue"] = str(start + limit)
            meta["remainingItemCount"] = len(items) - start - limit
        return {"kind": f"{k.kind}List", "apiVersion": k.api_version, "metadata": meta, "items": page}

    def _discovery(self, path: str) -> dict[str, Any] | None:
        if path == "/version":
            return {"major": "1", "minor": "32", "gitVersion": "v1.32.0-fake", "platform": "linux/amd64"}
        if path == "/api":
            return {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
            }
        groups: dict[str, list[Kind]] = {}
        for k in KINDS.values():
            if k.group:
                groups.setdefault(k.group, []).append(k)
        if path == "/apis":
            return {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [
                    {
                        "name": g,
                        "versions": [{"groupVersion": f"{g}/{ks[0].version}", "version": ks[0].version}],
                        "preferredVersion": {"groupVersion": f"{g}/{ks[0].version}", "version": ks[0].version},
                    }
                    for g, ks in sorted(groups.items())
                ],
            }
        for prefix in {k.prefix for k in KINDS.values()}:
            if path == prefix:
                ks = [k for k in KINDS.values() if k.prefix == prefix]
                return {
                    "kind": "APIResourceList",
                    "apiVersion": "v1",
                    "groupVersion": ks[0].api_version,
                    "resources": [
                        {
                            "name": k.plural,
                            "singularName": k.kind.lower(),
                            "namespaced": k.namespaced,
                            "kind": k.kind,
                            "verbs": ["get", "list"],
                            "shortNames": list(k.short_names),
                        }
                        for k in ks
                    ],
                }
        return None

    async def _get(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        self.requests.append(request.path_qs)
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            return status(401, "Unauthorized", "Unauthorized")
        if self.refuses(path):
            return self.forbidden_status(path)
        if path in self.objects:
            return web.json_response(self.objects[path])
        coll = self._collection(path)
        if coll is not None:
            return web.json_response(self._list(coll[0], coll[1], request.query))
        disc = self._discovery(path)
        if disc is not None:
            return web.json_response(disc)
        return status(404, "NotFound", f"the server could not find the requested resource ({path})")

    async def start(self) -> str:
        """Listen on 127.0.0.1 (a free port); returns the base URL."""
        self.app.add_routes(self._extra)
        self.app.router.add_get("/{tail:.*}", self._get)
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server  # aiohttp keeps the bound socket here
        port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeKube:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def kubeconfig(
        self, path: Path, namespace: str | None = None, context: str = "fake", token: str | None = None
    ) -> Path:
        """A kubeconfig pointing at this server (JSON is valid YAML, and kubectl reads it)."""
        ctx: dict[str, Any] = {"cluster": "fake", "user": "tester"}
        if namespace:
            ctx["namespace"] = namespace
        user: dict[str, Any] = {}
        if token or self.token:
            user["token"] = token or self.token
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": user}],
            "contexts": [{"name": context, "context": ctx}],
            "current-context": context,
        }
        path.write_text(json.dumps(config, indent=2))
        return path


__all__ = ["FakeKube", "Kind", "KINDS", "register_kind", "item_path", "status"]
