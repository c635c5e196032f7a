"""Kata runtime state per sandbox, and what its shim says about itself.

The shim keeps state under /run/vc (Go) or /run/kata (runtime-rs) and serves `/metrics` and
`/agent-url` on a monitor socket. A sandbox whose state exists but whose shim does not answer
is one of the most common "stuck pod" findings, so an unreachable socket is recorded as a
fact, not treated as a collector failure.
"""

from __future__ import annotations

import asyncio
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from kata_debug.collectors.base import CollectContext, Collector, CollectorOutput, member_name
from kata_debug.node.hostroot import HostDir, HostItemError, HostRoot, describe
from kata_debug.node.oci import read_json_capped

STATE_ROOTS = ("/run/vc/sbs", "/run/vc/vm", "/run/kata")
SHARED_ROOT = "/run/kata-containers/shared/sandboxes"
MONITOR_SOCKETS = ("/run/vc/sbs/{sid}/shim-monitor.sock", "/run/kata/{sid}/shim-monitor.sock")
_STATE_FILES = ("persist.json", "state.json")
MONITOR_PATHS = ("/metrics", "/agent-url")
MONITOR_TIMEOUT = 3.0
_SUN_PATH_MAX = 100


def _listing(d: HostDir) -> list[dict[str, Any]]:
    rows = []
    for name in d.names():
        try:
            st = d.lstat(name)
        except OSError:
            continue  # gone since the listing
        kind = (
            "socket"
            if stat.S_ISSOCK(st.st_mode)
            else "dir"
            if stat.S_ISDIR(st.st_mode)
            else "symlink"
            if stat.S_ISLNK(st.st_mode)
            else "file"
        )
        rows.append({"name": name, "type": kind, "size": st.st_size if kind == "file" else None})
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
    state_files: list[tuple[str, str]] = field(default_factory=list)  # (node path, bundle name)
    monitor_socket: tuple[str, Path] | None = None  # (node path, real path)


def _survey(host: HostRoot, failed: list[HostItemError]) -> list[_Found]:
    """Everything the filesystem says about each sandbox, gathered in one worker-thread pass.

    A state root or sandbox directory that cannot be read is a failed item; the rest goes on.
    """
    found: dict[str, _Found] = {}
    for root in STATE_ROOTS:
        try:
            sids = host.listdir(root)
        except OSError as exc:
            failed.append(HostItemError(root, describe(exc)))
            continue
        for sid in sids:
            path = f"{root}/{sid}"
            try:
                if not host.is_dir(path):
                    continue
                with host.open_dir(path) as d:
                    listing = _listing(d)
                    names = set(d.names())
            except OSError as exc:
                failed.append(HostItemError(path, describe(exc)))
                continue
            sb = found.setdefault(sid, _Found({"id": sid, "state_dirs": {}}))
            sb.facts["state_dirs"][root] = listing
            for name in _STATE_FILES:
                if name in names:  # read later through the root walk: a symlink here stays inside it
                    sb.state_files.append(
                        (f"{path}/{name}", f"{member_name(sid)}/{root.strip('/').replace('/', '-')}-{name}")
                    )
    for sid, sb in found.items():
        sb.facts["shared_dir"] = host.is_dir(f"{SHARED_ROOT}/{sid}")
        for node_path in (pattern.format(sid=sid) for pattern in MONITOR_SOCKETS):
            try:
                real = host.resolve(node_path)  # a socket is connected to, not opened: it needs a path
                if real.exists():
                    sb.monitor_socket = (node_path, real)
                    break
            except OSError as exc:
                failed.append(HostItemError(node_path, describe(exc)))
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
        failed: list[HostItemError] = []
        sandboxes = await asyncio.to_thread(_survey, ctx.host, failed)
        for f in failed:
            out.item_failed(f.path, f.reason)
        for sb in sandboxes:
            for state_file, name in sb.state_files:
                await self._state_file(ctx, out, state_file, name)
            sb.facts["monitor"] = await self._monitor(out, sb.facts["id"], sb.monitor_socket)
        await out.add_json(
            "sandboxes.json",
            {
                "count": len(sandboxes),
                "missing": [] if sandboxes else ["no Kata sandbox state under /run/vc or /run/kata"],
                "sandboxes": [sb.facts for sb in sandboxes],
            },
        )

    async def _state_file(self, ctx: CollectContext, out: CollectorOutput, path: str, name: str) -> None:
        cap = ctx.max_parse_bytes

        def _read() -> tuple[Any, int | None]:
            with ctx.host.open(path) as fh:
                return read_json_capped(fh, cap)

        try:
            value, oversize = await asyncio.to_thread(_read)
        except OSError as exc:
            out.item_failed(path, describe(exc))
            return
        except ValueError as exc:
            out.item_failed(path, f"malformed JSON: {exc}")
            await out.add_host_file(f"{name}.unparsed", path, max_bytes=4 << 20)
            return
        if oversize is not None:
            out.item_failed(path, f"{oversize} bytes, over the {cap} byte parse cap: kept raw, cut")
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
            await out.add_bytes(f"{member_name(sid)}/monitor-{key}.txt", body)
            summary[key] = {"status": status, "bytes": len(body)}
            if key == "agent-url" and status == 200:
                summary["agent_url"] = body.decode(errors="replace").strip()
        return summary
