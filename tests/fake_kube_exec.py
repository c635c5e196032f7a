"""Pods/exec, pod logs and set-based label selectors for the loopback API server.

`ClusterFake` extends `tests.fake_kube.FakeKube` (objects by API path, lists, discovery)
with what `collect --cluster` and `kubectl exec` need from a real API server.

The exec API, implemented like the real one:

What the kubelet's streaming server + API server proxy do, and what this does too:

- `GET|POST /api/v1/namespaces/{ns}/pods/{name}/exec?command=..&stdout=true&stderr=true`
  with `Upgrade: websocket`; authorization and pod lookup happen before the upgrade
  (403 / 404 / 400 answered with a `Status` body, no websocket);
- subprotocol negotiation over `v5.channel.k8s.io`, `v4.channel.k8s.io` ... in the client's
  order of preference; a client offering none of them gets 400, like a real server;
- every message binary, byte 0 the channel; one empty frame on stdout first ("streams are
  ready"); stdout/stderr copied in 32 KiB frames (io.Copy's buffer);
- channel 3: a `Status`, `Success` or `Failure`/`NonZeroExitCode` with the exit code in
  `details.causes[reason=ExitCode]`, then a normal close.

The command really runs: `kata-debug ...` becomes this checkout's CLI, and `/host` in its
arguments becomes the synthetic host root of the node the pod is scheduled on. Faults a real
cluster produces are behaviours per pod: refuse (403), cut the TCP connection after N bytes
of output, hang, or stream a prepared file (benchmarks).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from aiohttp import WSMsgType, web

from tests.fake_kube import FakeKube, Kind, register_kind, status

for _kind in (
    Kind("Event", "", "v1", "events", True, ("ev",)),
    Kind("Job", "batch", "v1", "jobs", True),
    Kind("CronJob", "batch", "v1", "cronjobs", True, ("cj",)),
):
    register_kind(_kind)

REPO = Path(__file__).resolve().parents[1]
SUBPROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io")
STDOUT, STDERR, STATUS = 1, 2, 3
COPY_BUF = 32 * 1024


@dataclass
class ExecBehaviour:
    """How one pod answers exec. `run` is the real thing; the others are faults."""

    kind: Literal["run", "forbidden", "cut", "hang", "file"] = "run"
    host_root: Path | None = None  # `run`: what /host means on this pod's node
    cut_after: int = 0  # `cut`: bytes of stdout before the connection drops
    file: Path | None = None  # `file`: stream this as stdout, exit 0
    exit_code: int = 0  # `file`: exit status to report


def status_object(code: int, command: list[str]) -> dict[str, object]:
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: error executing command {command}, exit code {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


error_status = status


def local_argv(command: list[str], host_root: Path) -> list[str]:
    """Map the in-pod command onto this machine: our CLI, and /host -> the node's root."""
    argv = [sys.executable, "-m", "kata_debug", *command[1:]] if command[0] == "kata-debug" else list(command)
    return [str(host_root) if a == "/host" else a for a in argv]


class ExecAPI:
    """Exec routes bound to a pod lookup: (namespace, name) -> pod object or None."""

    def __init__(
        self,
        find_pod: Callable[[str, str], dict | None],
        behaviours: dict[str, ExecBehaviour] | None = None,
        forbidden_namespaces: set[str] | None = None,
        env: dict[str, str] | None = None,
        token: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.find_pod = find_pod
        self.token = token
        self.behaviours = behaviours or {}  # by pod name
        self.node_behaviours: dict[str, ExecBehaviour] = {}  # pods on a node without their own
        self.forbidden_namespaces = forbidden_namespaces or set()
        self.env = env or {}
        self.sessions: list[dict[str, object]] = []  # what was asked, for tests to inspect

    def routes(self) -> list[web.RouteDef]:
        path = "/api/v1/namespaces/{namespace}/pods/{name}/exec"
        return [web.get(path, self.handle), web.post(path, self.handle)]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ns, name = request.match_info["namespace"], request.match_info["name"]
        command = request.query.getall("command", [])
        expected = self.token()
        if expected is not None and request.headers.get("Authorization") != f"Bearer {expected}":
            return error_status(401, "Unauthorized", "Unauthorized")
        pod = self.find_pod(ns, name)
        node = ((pod or {}).get("spec") or {}).get("nodeName")
        behaviour = self.behaviours.get(name) or self.node_behaviours.get(node or "") or ExecBehaviour()
        if ns in self.forbidden_namespaces or behaviour.kind == "forbidden":
            return error_status(
                403,
                "Forbidden",
                f'pods "{name}" is forbidden: User "tester" cannot create resource "pods/exec" in API group "" '
                f'in the namespace "{ns}"',
            )
        if pod is None:
            return error_status(404, "NotFound", f'pods "{name}" not found')
        if not command:
            return error_status(400, "BadRequest", "you must specify at least 1 command")
        containers = [c["name"] for c in pod["spec"]["containers"]]
        container = request.query.get("container") or containers[0]
        if container not in containers:
            return error_status(400, "BadRequest", f"container {container} is not valid for pod {name}")
        if pod.get("status", {}).get("phase") != "Running":
            return error_status(400, "BadRequest", f"pod {name} is not running")
        offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return error_status(400, "BadRequest", "Upgrade request required")
        if not any(p in SUBPROTOCOLS for p in offered):
            return error_status(400, "BadRequest", f"unable to upgrade: no supported subprotocol in {offered}")
        ws = web.WebSocketResponse(protocols=SUBPROTOCOLS, autoping=True, max_msg_size=0)
        await ws.prepare(request)
        session: dict[str, object] = {
            "namespace": ns,
            "pod": name,
            "container": container,
            "command": command,
            "protocol": ws.ws_protocol,
            "stdin": b"" if request.query.get("stdin") == "true" else None,
        }
        self.sessions.append(session)
        try:
            await ws.send_bytes(bytes([STDOUT]))  # "streams are ready"
            await self._run(ws, request, behaviour, command, session)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return ws

    async def _run(
        self,
        ws: web.WebSocketResponse,
        request: web.Request,
        b: ExecBehaviour,
        command: list[str],
        session: dict[str, object],
    ) -> None:
        if b.kind == "hang":
            await ws.send_bytes(bytes([STDOUT]) + b"\x1f\x8b")
            # A node that never answers; stop when the client gives up on us.
            while request.transport is not None and not request.transport.is_closing():
                await asyncio.sleep(0.1)
            return
        if b.kind == "file":
            assert b.file is not None
            await self._send_file(ws, b.file)
            await self._finish(ws, b.exit_code, command)
            return
        assert b.host_root is not None, "a `run` pod needs the host root of its node"
        proc = await asyncio.create_subprocess_exec(
            *local_argv(command, b.host_root),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL if session["stdin"] is None else asyncio.subprocess.PIPE,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), **self.env},
        )
        assert proc.stdout is not None and proc.stderr is not None
        sent = 0

        async def pump(stream: asyncio.StreamReader, channel: int) -> None:
            nonlocal sent
            while chunk := await stream.read(COPY_BUF):
                if b.kind == "cut" and channel == STDOUT and sent + len(chunk) >= b.cut_after:
                    await ws.send_bytes(bytes([channel]) + chunk[: max(0, b.cut_after - sent)])
                    raise _Cut()
                await ws.send_bytes(bytes([channel]) + chunk)
                if channel == STDOUT:
                    sent += len(chunk)

        feeding = asyncio.create_task(self._feed_stdin(ws, proc, session)) if proc.stdin is not None else None
        try:
            await asyncio.gather(pump(proc.stdout, STDOUT), pump(proc.stderr, STDERR))
            code = await proc.wait()
        except _Cut:
            proc.kill()
            await proc.wait()
            transport = request.transport
            if transport is not None:
                transport.abort()  # the node went away: no status, no close frame
            return
        finally:
            if feeding is not None:
                feeding.cancel()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        await self._finish(ws, code, command)

    async def _feed_stdin(
        self, ws: web.WebSocketResponse, proc: asyncio.subprocess.Process, session: dict[str, object]
    ) -> None:
        """Channel 0 frames to the process's stdin (recorded in the session); v5's close frame closes it."""
        assert proc.stdin is not None
        try:
            await self._pipe_stdin(ws, proc.stdin, session)
        except (ConnectionResetError, BrokenPipeError):
            pass  # the command is done reading

    async def _pipe_stdin(
        self, ws: web.WebSocketResponse, stdin: asyncio.StreamWriter, session: dict[str, object]
    ) -> None:
        async for msg in ws:
            if msg.type is not WSMsgType.BINARY or not msg.data:
                continue
            data: bytes = msg.data
            if data[0] == 0:
                session["stdin"] = bytes(session["stdin"] or b"") + data[1:]  # type: ignore[arg-type]
                stdin.write(data[1:])
                await stdin.drain()
            elif data[0] == 255 and data[1:] == b"\x00":
                stdin.close()

    async def _send_file(self, ws: web.WebSocketResponse, path: Path) -> None:
        with open(path, "rb") as fh:
            while chunk := fh.read(COPY_BUF):
                await ws.send_bytes(bytes([STDOUT]) + chunk)

    async def _finish(self, ws: web.WebSocketResponse, code: int, command: list[str]) -> None:
        await ws.send_bytes(bytes([STATUS]) + json.dumps(status_object(code, command)).encode())
        await ws.close()


class _Cut(Exception):
    pass


# ---- label selectors (set-based, like the API server) --------------------------------

_TERM = re.compile(
    r"^\s*(?:(?P<not>!)\s*(?P<nkey>[^\s!=,()]+)"
    r"|(?P<key>[^\s!=,()]+)\s*(?:(?P<op>==|!=|=)\s*(?P<value>[^\s,()]*)"
    r"|\s+(?P<setop>in|notin)\s*\((?P<values>[^()]*)\))?)\s*$"
)


def parse_selector(text: str) -> list[Callable[[dict[str, str]], bool]]:
    """`a`, `!a`, `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`, comma-separated."""
    terms: list[str] = []
    depth, cur = 0, ""
    for ch in text:
        if ch == "," and depth == 0:
            terms.append(cur)
            cur = ""
            continue
        depth += ch == "("
        depth -= ch == ")"
        cur += ch
    terms.append(cur)
    out: list[Callable[[dict[str, str]], bool]] = []
    for term in filter(str.strip, terms):
        m = _TERM.match(term)
        if m is None:
            raise ValueError(f"unable to parse requirement: {term!r}")
        if m["not"]:
            out.append(lambda lb, k=m["nkey"]: k not in lb)
        elif m["op"] in ("=", "=="):
            out.append(lambda lb, k=m["key"], v=m["value"]: lb.get(k) == v)
        elif m["op"] == "!=":
            out.append(lambda lb, k=m["key"], v=m["value"]: lb.get(k) != v)
        elif m["setop"]:
            values = {v.strip() for v in m["values"].split(",") if v.strip()}
            if m["setop"] == "in":
                out.append(lambda lb, k=m["key"], vs=values: lb.get(k) in vs)
            else:
                out.append(lambda lb, k=m["key"], vs=values: lb.get(k) not in vs)
        else:
            out.append(lambda lb, k=m["key"]: k in lb)
    return out


@dataclass
class LogLine:
    at: float  # epoch seconds
    text: str


class ClusterFake(FakeKube):
    """FakeKube plus exec, pod logs and set-based selectors (what `collect --cluster` uses)."""

    def __init__(
        self, objects: dict[str, Any] | None = None, token: str | None = None, exec_env: dict[str, str] | None = None
    ) -> None:
        super().__init__(objects, token)
        self.exec = ExecAPI(self.pod, env=exec_env, token=lambda: self.token)
        self.logs: dict[tuple[str, str, str, bool], list[LogLine]] = {}  # (ns, pod, container, previous)
        self.add_routes(self.exec.routes())
        self.add_routes([web.get("/api/v1/namespaces/{namespace}/pods/{name}/log", self._log)])
        # Pods created through the API, and the kubelet that runs them (see `_kubelet`).
        self.add_routes(
            [
                web.post("/api/v1/namespaces/{namespace}/pods", self._create_pod),
                web.delete("/api/v1/namespaces/{namespace}/pods/{name}", self._delete_pod),
            ]
        )
        self.unpullable: set[str] = set()  # images whose pull fails (ErrImagePull, then ImagePullBackOff)
        self.start_delay = 0.3  # seconds a created pod stays Pending (ContainerCreating) on its node
        self.forbidden_writes: set[str] = set()  # collection paths where create answers 403
        self.created: list[dict[str, Any]] = []  # every pod created, as stored
        self.deleted: list[str] = []  # "namespace/name" of every pod deleted
        self.writes: list[str] = []  # "POST path" / "DELETE path?query", in order
        self._kubelets: set[asyncio.Task[None]] = set()

    def behave(self, pod: str, behaviour: ExecBehaviour) -> None:
        self.exec.behaviours[pod] = behaviour

    def behave_node(self, node: str, behaviour: ExecBehaviour) -> None:
        """How exec answers in pods on `node` that have no behaviour of their own (created pods)."""
        self.exec.node_behaviours[node] = behaviour

    def pods_labelled(self, namespace: str, key: str, value: str) -> list[dict[str, Any]]:
        return [
            o
            for o in self.objects.values()
            if o.get("kind") == "Pod"
            and o["metadata"].get("namespace") == namespace
            and (o["metadata"].get("labels") or {}).get(key) == value
        ]

    # ---- pod create / delete, and a kubelet ------------------------------------------

    def _denied(self, request: web.Request, path: str, verb: str, resource: str) -> web.Response | None:
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            return status(401, "Unauthorized", "Unauthorized")
        if self.refuses(path) or (verb == "create" and path in self.forbidden_writes):
            ns = request.match_info["namespace"]
            return status(
                403,
                "Forbidden",
                f'pods is forbidden: User "{self.user}" cannot {verb} resource "{resource}" in API group "" '
                f'in the namespace "{ns}"',
            )
        return None

    async def _create_pod(self, request: web.Request) -> web.StreamResponse:
        """POST a Pod: validated, stored Pending with status filled in, then run by `_kubelet`."""
        ns = request.match_info["namespace"]
        path = f"/api/v1/namespaces/{ns}/pods"
        self.writes.append(f"POST {path}")
        denied = self._denied(request, path, "create", "pods")
        if denied is not None:
            return denied
        try:
            pod = await request.json()
        except ValueError:
            return status(400, "BadRequest", "the body of the request was in an unknown format")
        if not isinstance(pod, dict) or pod.get("kind") != "Pod" or pod.get("apiVersion") != "v1":
            return status(400, "BadRequest", "the object is not a v1 Pod")
        meta = pod.setdefault("metadata", {})
        if meta.setdefault("namespace", ns) != ns:
            return status(400, "BadRequest", "the namespace of the provided object does not match the request")
        if self.find(f"/api/v1/namespaces/{ns}") is None:
            return status(404, "NotFound", f'namespaces "{ns}" not found')
        name = meta.get("name")
        if not name and meta.get("generateName"):
            name = meta["name"] = f"{meta['generateName']}{len(self.objects):05x}"
        if not name or not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", name):
            return status(422, "Invalid", f'Pod "{name}" is invalid: metadata.name: Invalid value')
        containers = (pod.get("spec") or {}).get("containers") or []
        if not containers or not all(c.get("name") and c.get("image") for c in containers):
            return status(422, "Invalid", f'Pod "{name}" is invalid: spec.containers: Required value')
        if self.pod(ns, name) is not None:
            return status(409, "AlreadyExists", f'pods "{name}" already exists')
        meta["uid"] = f"00000000-0000-4000-8000-{len(self.objects):012d}"
        meta["resourceVersion"] = str(1000 + len(self.objects))
        meta["creationTimestamp"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        pod["status"] = {"phase": "Pending", "qosClass": "Guaranteed"}
        self.objects[f"{path}/{name}"] = pod
        self.created.append(pod)
        task = asyncio.create_task(self._kubelet(ns, name))
        self._kubelets.add(task)
        task.add_done_callback(self._kubelets.discard)
        return web.json_response(pod, status=201)

    async def _delete_pod(self, request: web.Request) -> web.StreamResponse:
        ns, name = request.match_info["namespace"], request.match_info["name"]
        path = f"/api/v1/namespaces/{ns}/pods/{name}"
        self.writes.append(f"DELETE {request.path_qs}")
        denied = self._denied(request, path, "delete", "pods")
        if denied is not None:
            return denied
        pod = self.objects.pop(path, None)
        if pod is None:
            return status(404, "NotFound", f'pods "{name}" not found')
        self.deleted.append(f"{ns}/{name}")
        return web.json_response(pod)

    async def _kubelet(self, ns: str, name: str) -> None:
        """What the node's kubelet does with a pod bound to it, as seen through its status.

        A pod whose node is not in the cluster stays Pending with no container status. An
        image in `unpullable` gets ErrImagePull, then ImagePullBackOff, and never runs.
        Otherwise the pod runs after `start_delay`, and fails with DeadlineExceeded at its
        activeDeadlineSeconds, as the kubelet enforces it.
        """
        pod = self.pod(ns, name)
        assert pod is not None
        spec = pod["spec"]
        if self.find(f"/api/v1/nodes/{spec.get('nodeName')}") is None:
            return
        started = time.monotonic()
        statuses = pod["status"]
        statuses["conditions"] = [{"type": "PodScheduled", "status": "True"}]
        statuses["hostIP"] = "192.0.2.10"

        def containers(state: dict[str, Any], ready: bool = False) -> list[dict[str, Any]]:
            return [
                {
                    "name": c["name"],
                    "image": c["image"],
                    "imageID": "",
                    "ready": ready,
                    "restartCount": 0,
                    "state": state,
                }
                for c in spec["containers"]
            ]

        statuses["containerStatuses"] = containers({"waiting": {"reason": "ContainerCreating"}})
        await asyncio.sleep(self.start_delay)
        bad = next((c["image"] for c in spec["containers"] if c["image"] in self.unpullable), None)
        if bad is not None:
            pulled = f'failed to pull and unpack image "{bad}": failed to resolve reference "{bad}": not found'
            statuses["containerStatuses"] = containers({"waiting": {"reason": "ErrImagePull", "message": pulled}})
            await asyncio.sleep(self.start_delay)
            backoff = f'Back-off pulling image "{bad}"'
            statuses["containerStatuses"] = containers({"waiting": {"reason": "ImagePullBackOff", "message": backoff}})
        else:
            now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            statuses.update(phase="Running", podIP="10.244.1.99", startTime=now)
            statuses["containerStatuses"] = containers({"running": {"startedAt": now}}, ready=True)
            statuses["conditions"] += [
                {"type": "Ready", "status": "True"},
                {"type": "ContainersReady", "status": "True"},
            ]
        deadline = spec.get("activeDeadlineSeconds")
        if isinstance(deadline, int):
            await asyncio.sleep(max(0.0, started + deadline - time.monotonic()))
            if self.pod(ns, name) is pod:
                statuses.update(
                    phase="Failed",
                    reason="DeadlineExceeded",
                    message="Pod was active on the node longer than the specified deadline",
                )

    async def close(self) -> None:
        for task in list(self._kubelets):
            task.cancel()
        await asyncio.gather(*self._kubelets, return_exceptions=True)
        await super().close()

    def _list(self, k: Kind, ns: str | None, query: Any) -> dict[str, Any]:
        selector = query.get("labelSelector", "")
        if not selector:
            return super()._list(k, ns, query)
        rest = {key: v for key, v in query.items() if key not in ("labelSelector", "limit", "continue")}
        full = super()._list(k, ns, rest)
        try:
            reqs = parse_selector(selector)
        except ValueError as exc:
            raise web.HTTPBadRequest(
                text=json.dumps(
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "metadata": {},
                        "status": "Failure",
                        "message": str(exc),
                        "reason": "BadRequest",
                        "code": 400,
                    }
                ),
                content_type="application/json",
            ) from None
        items = [o for o in full["items"] if all(r(o["metadata"].get("labels") or {}) for r in reqs)]
        start, limit = int(query.get("continue") or 0), int(query.get("limit") or 0)
        page = items[start : start + limit] if limit else items[start:]
        if limit and start + limit < len(items):
            full["metadata"]["continue"] = str(start + limit)
        else:
            full["metadata"].pop("continue", None)
        full["items"] = page
        return full

    async def _log(self, request: web.Request) -> web.StreamResponse:
        ns, name = request.match_info["namespace"], request.match_info["name"]
        self.requests.append(request.path_qs)
        path = f"/api/v1/namespaces/{ns}/pods/{name}/log"
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            return status(401, "Unauthorized", "Unauthorized")
        if self.refuses(path):
            return status(
                403, "Forbidden", f'pods "{name}" is forbidden: User "{self.user}" cannot get resource "pods/log"'
            )
        pod = self.pod(ns, name)
        if pod is None:
            return status(404, "NotFound", f'pods "{name}" not found')
        containers = [c["name"] for c in pod["spec"]["containers"]]
        container = request.query.get("container") or (containers[0] if len(containers) == 1 else "")
        if container not in containers:
            return status(
                400, "BadRequest", f"a container name must be specified for pod {name}, choose one of: {containers}"
            )
        previous = request.query.get("previous") == "true"
        lines = self.logs.get((ns, name, container, previous))
        if lines is None and previous:
            return status(400, "BadRequest", f'previous terminated container "{container}" in pod "{name}" not found')
        since = request.query.get("sinceSeconds")
        cutoff = time.time() - int(since) if since else None
        stamps = request.query.get("timestamps") == "true"
        body = "".join(
            (datetime.fromtimestamp(ln.at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ ") if stamps else "") + ln.text + "\n"
            for ln in lines or []
            if cutoff is None or ln.at >= cutoff
        ).encode()
        limit = request.query.get("limitBytes")
        if limit:
            body = body[: int(limit)]
        return web.Response(body=body, content_type="text/plain")


ExecHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]
__all__ = [
    "ClusterFake",
    "ExecAPI",
    "ExecBehaviour",
    "LogLine",
    "local_argv",
    "parse_selector",
    "status_object",
    "SUBPROTOCOLS",
    "WSMsgType",
]
