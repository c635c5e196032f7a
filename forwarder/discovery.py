"""Finding Kata sandboxes on the node and who they belong to.

Three questions, all answered from the host root (so a DaemonSet with the node at `/host`
sees what the node sees):
- which sandboxes have a hybrid vsock socket right now (`scan_sandboxes`, `SandboxWatcher`):
  the forwarder must listen on `<socket>_10240` *before* the agent's first span, and the path
  contains the sandbox id, so nothing can be configured ahead of time;
- which sandbox a plain vsock peer CID is (`CidResolver`, from QEMU command lines);
- which pod a sandbox runs (`IdentityResolver`, from the sandbox's OCI spec annotations).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from kata_debug.forwarder.spans import AttrValue
from kata_debug.node.hostroot import HostRoot
from kata_debug.node.oci import find_sandbox

log = logging.getLogger("kata_debug.forwarder")

ResourceAttrs = tuple[tuple[str, AttrValue], ...]


@dataclass(frozen=True)
class SandboxLayout:
    """Where one VMM/runtime puts a sandbox's hybrid vsock socket: `<root>/<sid>/<socket>`."""

    hypervisor: str
    root: str
    socket: str


LAYOUTS: tuple[SandboxLayout, ...] = (
    SandboxLayout("cloud-hypervisor", "/run/vc/vm", "clh.sock"),
    SandboxLayout("firecracker", "/run/vc/firecracker", "root/kata.hvsock"),
    SandboxLayout("runtime-rs", "/run/kata", "root/kata.hvsock"),
)


@dataclass(frozen=True)
class SandboxSocket:
    sandbox_id: str
    hypervisor: str
    node_path: str  # the VMM's hybrid vsock socket, as a node path


def scan_sandboxes(host: HostRoot) -> dict[str, SandboxSocket]:
    """Every sandbox whose hybrid vsock socket exists now, keyed by its node path (blocking)."""
    found: dict[str, SandboxSocket] = {}
    for layout in LAYOUTS:
        for sid in host.listdir(layout.root):
            node_path = f"{layout.root}/{sid}/{layout.socket}"
            try:
                if host.resolve(node_path).exists():
                    found[node_path] = SandboxSocket(sid, layout.hypervisor, node_path)
            except OSError:
                continue
    return found


class SandboxWatcher:
    """Polls the host root and reports sandboxes as they appear and go away.

    Polling (default every 0.5 s) rather than inotify: the sandbox directories live on
    tmpfs, often behind symlinks and a bind-mounted host root, where a few `listdir`s cost
    less than keeping watches right; and half a second is far below the time an agent takes
    to boot and send its first span.
    """

    def __init__(self, host: HostRoot, interval: float = 0.5) -> None:
        self.host = host
        self.interval = interval
        self.known: dict[str, SandboxSocket] = {}

    async def changes(self) -> AsyncIterator[tuple[str, SandboxSocket]]:
        """Yields ("added" | "removed", sandbox) forever (cancel to stop)."""
        while True:
            try:
                now = await asyncio.to_thread(scan_sandboxes, self.host)
            except OSError as exc:
                log.warning("discover: cannot scan %s: %s", self.host.root, exc)
                now = self.known
            for path in [p for p in self.known if p not in now]:
                yield "removed", self.known.pop(path)
            for path, sb in now.items():
                if path not in self.known:
                    self.known[path] = sb
                    yield "added", sb
            await asyncio.sleep(self.interval)


_GUEST_CID = re.compile(rb"guest-cid=(\d+)")
_QEMU_NAME = re.compile(rb"^sandbox-([^,\x00]+)")


def _scan_qemu_cids(host: HostRoot) -> dict[int, str]:
    """CID -> sandbox id from `qemu ... -name sandbox-<sid> ... guest-cid=<cid>` (blocking)."""
    out: dict[int, str] = {}
    proc = host.resolve("/proc")
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return out
    for pid in pids:
        try:
            with open(proc / pid / "cmdline", "rb") as fh:
                cmdline = fh.read(65536)
        except OSError:
            continue
        if b"guest-cid=" not in cmdline:
            continue
        cid_m = _GUEST_CID.search(cmdline)
        args = cmdline.split(b"\x00")
        sid = None
        for i, arg in enumerate(args[:-1]):
            if arg == b"-name":
                m = _QEMU_NAME.match(args[i + 1])
                if m:
                    sid = m.group(1).decode(errors="replace")
        if cid_m and sid:
            out[int(cid_m.group(1))] = sid
    return out


class CidResolver:
    """Maps a vsock peer CID to its sandbox (QEMU), re-scanning at most every `ttl` seconds."""

    def __init__(self, host: HostRoot, ttl: float = 5.0) -> None:
        self.host = host
        self.ttl = ttl
        self._map: dict[int, str] = {}
        self._at = 0.0

    async def __call__(self, cid: int) -> str | None:
        if cid not in self._map and time.monotonic() - self._at > self.ttl:
            self._map = await asyncio.to_thread(_scan_qemu_cids, self.host)
            self._at = time.monotonic()
        return self._map.get(cid)


class IdentityResolver:
    """The host-known resource attributes of a sandbox: id, pod, namespace, uid, node.

    A found pod is cached for good (a sandbox never changes pods); a miss is retried after
    `miss_ttl` seconds, since the spec can be written just after the VM starts.
    """

    def __init__(
        self, host: HostRoot, node_name: str | None = None, host_name: str | None = None, miss_ttl: float = 5.0
    ) -> None:
        self.host = host
        self.node_name = node_name
        self.host_name = host_name
        self.miss_ttl = miss_ttl
        self._found: dict[str, ResourceAttrs] = {}
        self._missed: dict[str, float] = {}

    def node_attrs(self) -> ResourceAttrs:
        attrs: list[tuple[str, AttrValue]] = []
        if self.node_name:
            attrs.append(("k8s.node.name", self.node_name))
        if self.host_name:
            attrs.append(("host.name", self.host_name))
        return tuple(attrs)

    async def identity(self, sandbox_id: str | None) -> ResourceAttrs:
        if not sandbox_id:
            return self.node_attrs()
        hit = self._found.get(sandbox_id)
        if hit is not None:
            return hit
        attrs: list[tuple[str, AttrValue]] = [("kata.sandbox.id", sandbox_id)]
        missed_at = self._missed.get(sandbox_id)
        if missed_at is None or time.monotonic() - missed_at > self.miss_ttl:
            try:
                entry = await asyncio.to_thread(find_sandbox, self.host, sandbox_id)
            except OSError as exc:
                log.warning("sandbox=%s: cannot read OCI specs: %s", sandbox_id, exc)
                entry = None
            if entry is not None and (entry.pod_name or entry.pod_namespace or entry.pod_uid):
                for key, value in (
                    ("k8s.pod.name", entry.pod_name),
                    ("k8s.namespace.name", entry.pod_namespace),
                    ("k8s.pod.uid", entry.pod_uid),
                ):
                    if value:
                        attrs.append((key, value))
                result = tuple(attrs) + self.node_attrs()
                self._found[sandbox_id] = result
                self._missed.pop(sandbox_id, None)
                return result
            self._missed[sandbox_id] = time.monotonic()
        return tuple(attrs) + self.node_attrs()

    def forget(self, sandbox_id: str) -> None:
        self._found.pop(sandbox_id, None)
        self._missed.pop(sandbox_id, None)


def default_host_name(host: HostRoot) -> str | None:
    """The node's host name: its `/etc/hostname` under the host root, else ours."""
    try:
        name = host.read_text("/etc/hostname", limit=256).strip()
        if name:
            return name
    except OSError:
        pass
    import socket

    return socket.gethostname() or None
