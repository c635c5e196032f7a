"""Kata runtime state per sandbox, and what its shim says about itself.

The shim keeps state under /run/vc (Go) or /run/kata (runtime-rs) and serves `/metrics` and
`/agent-url` on a monitor socket. A sandbox whose state exists but whose shim does not answer
is one of the most common "stuck pod" findings, so an unreachable socket is recorded as a
fact, not treated as a collector failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from kata_debug.collectors.base import CollectContext, Collector, CollectorOutput
from kata_debug.node.hostroot import HostRoot

STATE_ROOTS = ("/run/vc/sbs", "/run/vc/vm", "/run/kata")
SHARED_ROOT = "/run/kata-containers/shared/sandboxes"
MONITOR_SOCKETS = ("/run/vc/sbs/{sid}/shim-monitor.sock", "/run/kata/{sid}/shim-monitor.sock")
_STATE_FILES = ("persist.json", "state.json")
MONITOR_PATHS = ("/metrics", "/agent-url")
MONITOR_TIMEOUT = 3.0
_SUN_PATH_MAX = 100


def _listing(path: Path) -> list[dict[str, Any]]:
    rows = []
    for child in sorted(path.iterdir()):
        try:
            st = child.lstat()
        except OSError:
            continue
        kind = (
            "socket"
            if stat.S_ISSOCK(st.st_mode)
            else "dir"
            if stat.S_ISDIR(st.st_mode)
            else "symlink"
            if stat.S_ISLNK(st.st_mode)
            else "file"
        )
        rows.append({"name": child.name, "type": kind, "size": st.st_size if kind == "file" else None})
    return rows


def short_unix_path(path: Path) -> tuple[str, int | None]:
    """A connectable name for a Unix socket, and a dir fd to close afterwards (or None).

    sun_path holds 108 bytes; a deep host root can push a socket past that, so such a
    socket is reached through a short /proc/self/fd alias of its directory.
    """
    if len(str(path).encode()) <= _SUN_PATH_MAX:
        return str(path), None
    dirfd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    return f"/proc/self/fd/{dirfd}/{path.name}", dirfd


async def scrape_monitor(socket_path: Path, timeout: float = MONITOR_TIMEOUT) -> dict[str, tuple[int, bytes] | str]:
    """GET each monitor path over the Unix socket; value is (status, body) or an error string."""
    results: dict[str, tuple[int, bytes] | str] = {}
    address, dirfd = short_unix_path(socket_path)
    try:
        connector = aiohttp.UnixConnector(path=address)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as session:
            for path in MONITOR_PATHS:
                try:
                    async with session.get(f"http://shim{path}") as resp:
                        results[path] = (resp.status, await resp.content.read(4 << 20))
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    results[path] = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    finally:
        if dirfd is not None:
            os.close(dirfd)
    return results


@dataclass
class _Found:
    """One sandbox as the filesystem shows it: the facts for `sandboxes.json`, and the work left."""

    facts: dict[str, Any]
    state_files: list[tuple[Path, str]] = field(default_factory=list)  # (real path, bundle name)
    monitor_socket: tuple[str, Path] | None = None  # (node path, real path)


def _survey(host: HostRoot) -> list[_Found]:
    """Everything the filesystem says about each sandbox, gathered in one worker-thread pass."""
    found: dict[str, _Found] = {}
    for root in STATE_ROOTS:
        for sid in host.listdir(root):
            real = host.resolve(f"{root}/{sid}")
            if not real.is_dir():
                continue
            sb = found.setdefault(sid, _Found({"id": sid, "state_dirs": {}}))
            sb.facts["state_dirs"][root] = _listing(real)
            for name in _STATE_FILES:
                state = host.resolve(f"{root}/{sid}/{name}")  # a symlink here stays inside the root
                if state.is_file():
                    sb.state_files.append((state, f"{sid}/{root.strip('/').replace('/', '-')}-{name}"))
    for sid, sb in found.items():
        sb.facts["shared_dir"] = host.resolve(f"{SHARED_ROOT}/{sid}").is_dir()
        sockets = ((p, host.resolve(p)) for p in (pattern.format(sid=sid) for pattern in MONITOR_SOCKETS))
        sb.monitor_socket = next(((p, real) for p, real in sockets if real.exists()), None)
    return list(found.values())


class SandboxesCollector(Collector):
    name = "sandboxes"
    summary = "Kata runtime state (/run/vc, /run/kata), persist.json, shim monitor /metrics and /agent-url"
    reads = (
        *(f"{r}/<sid>/" for r in STATE_ROOTS),
        "/run/vc/sbs/<sid>/persist.json",
        SHARED_ROOT + "/<sid>/",
        *(s.replace("{sid}", "<sid>") + " (HTTP GET " + ", ".join(MONITOR_PATHS) + ")" for s in MONITOR_SOCKETS),
    )

    async def collect(self, ctx: CollectContext, out: CollectorOutput) -> None:
        sandboxes = await asyncio.to_thread(_survey, ctx.host)
        for sb in sandboxes:
            for state_file, name in sb.state_files:
                await self._state_file(ctx.host, out, state_file, name)
            sb.facts["monitor"] = await self._monitor(out, sb.facts["id"], sb.monitor_socket)
        await out.add_json(
            "sandboxes.json",
            {
                "count": len(sandboxes),
                "missing": [] if sandboxes else ["no Kata sandbox state under /run/vc or /run/kata"],
                "sandboxes": [sb.facts for sb in sandboxes],
            },
        )

    async def _state_file(self, host: HostRoot, out: CollectorOutput, path: Path, name: str) -> None:
        try:
            value = json.loads(await asyncio.to_thread(host.read_bytes, path))
        except OSError as exc:
            out.item_failed(str(path), exc.strerror or str(exc))
            return
        except ValueError as exc:
            out.item_failed(str(path), f"malformed JSON: {exc}")
            await out.add_host_file(f"{name}.unparsed", path, max_bytes=4 << 20)
            return
        await out.add_json(name, value)

    async def _monitor(self, out: CollectorOutput, sid: str, socket: tuple[str, Path] | None) -> dict[str, Any]:
        if socket is None:
            return {"socket": None, "error": "no shim monitor socket"}
        node_path, real = socket
        results = await scrape_monitor(real)
        summary: dict[str, Any] = {"socket": node_path}
        for path, res in results.items():
            key = path.strip("/")
            if isinstance(res, str):
                summary[key] = {"error": res}
                continue
            status, body = res
            await out.add_bytes(f"{sid}/monitor-{key}.txt", body)
            summary[key] = {"status": status, "bytes": len(body)}
            if key == "agent-url" and status == 200:
                summary["agent_url"] = body.decode(errors="replace").strip()
        return summary
