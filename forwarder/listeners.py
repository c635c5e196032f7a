"""Sockets the agent's trace stream arrives on: vsock, hybrid vsock, Unix and TCP.

Every listener makes one protocol per accepted stream (`forwarder.connection`) from a `Peer`
saying which sandbox it is, when the listener can know: a hybrid vsock socket lives in its sandbox's
directory, a vsock peer is identified by its CID (see `discovery.CidResolver`), Unix and TCP
listeners can be told with `?sandbox=ID`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger("kata_debug.forwarder")

TRACE_PORT = 10240
VMADDR_CID_ANY = 0xFFFFFFFF

# Sandbox directories that hold a hybrid vsock socket, as node paths (see discovery.py).
_SANDBOX_PATH = re.compile(r"^/run/(?:vc/vm|vc/firecracker|kata)/([^/]+)/")


@dataclass(frozen=True)
class ListenSpec:
    """A parsed `--listen` URI."""

    uri: str
    kind: str  # vsock | hvsock | unix | tcp | discover
    cid: int | None = None
    port: int | None = None
    path: str | None = None  # hvsock: the VMM's socket (we listen on `<path>_<port>`); unix: the socket
    host: str | None = None
    sandbox_id: str | None = None


@dataclass(frozen=True)
class Peer:
    """Who is on the other end of an accepted trace stream."""

    source: str  # the listener, for logs
    sandbox_id: str | None = None
    #: A vsock listener: the peer's CID (its `peername`) tells the sandbox.
    vsock: bool = False


#: Makes the protocol that serves one accepted stream from `peer`.
ProtocolFactory = Callable[[Peer], asyncio.BaseProtocol]


def sandbox_from_path(node_path: str) -> str | None:
    """The sandbox id in a Kata socket path (`/run/vc/vm/<sid>/clh.sock` -> `<sid>`)."""
    m = _SANDBOX_PATH.match(node_path)
    return m.group(1) if m else None


def _port(uri: str, text: str | None, default: int = TRACE_PORT) -> int:
    if text in (None, ""):
        return default
    try:
        port = int(text)
    except ValueError:
        raise ValueError(f"{uri}: port {text!r} is not a number") from None
    if not 0 <= port <= 0xFFFFFFFF:
        raise ValueError(f"{uri}: port {port} out of range")
    return port


def parse_listen(uri: str) -> ListenSpec:
    """Parse one `--listen` URI; raises ValueError naming the URI and the problem."""
    if uri == "discover":
        return ListenSpec(uri=uri, kind="discover")
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    allowed = {"hvsock": {"port", "sandbox"}, "unix": {"sandbox"}, "tcp": {"sandbox"}, "vsock": set()}
    if scheme not in allowed:
        raise ValueError(
            f"{uri}: unknown listener (use vsock://any:10240, vsock://CID:PORT, hvsock:///path/to/vmm.sock, "
            "unix:///path, tcp://127.0.0.1:PORT or discover)"
        )
    unknown = set(query) - allowed[scheme]
    if unknown:
        raise ValueError(f"{uri}: unknown parameter {sorted(unknown)[0]!r}")
    sandbox = query.get("sandbox") or None
    if scheme == "vsock":
        host, _, port_text = parts.netloc.partition(":")
        if host in ("", "any", "-1"):
            cid = VMADDR_CID_ANY
        else:
            try:
                cid = int(host)
            except ValueError:
                raise ValueError(f"{uri}: CID {host!r} is not a number or 'any'") from None
            if not 0 <= cid <= 0xFFFFFFFF:
                raise ValueError(f"{uri}: CID {cid} out of range")
        return ListenSpec(uri=uri, kind="vsock", cid=cid, port=_port(uri, port_text))
    if scheme in ("hvsock", "unix"):
        if parts.netloc:
            raise ValueError(f"{uri}: use three slashes for an absolute path ({scheme}:///run/...)")
        if not parts.path.startswith("/") or parts.path.endswith("/"):
            raise ValueError(f"{uri}: needs an absolute socket path")
        if scheme == "hvsock":
            return ListenSpec(
                uri=uri,
                kind="hvsock",
                path=parts.path,
                port=_port(uri, query.get("port")),
                sandbox_id=sandbox or sandbox_from_path(parts.path),
            )
        return ListenSpec(uri=uri, kind="unix", path=parts.path, sandbox_id=sandbox)
    # tcp
    if not parts.hostname:
        raise ValueError(f"{uri}: no address (tcp://127.0.0.1:PORT)")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{uri}: bad port") from None
    if port is None:
        raise ValueError(f"{uri}: no port (tcp://127.0.0.1:PORT)")
    return ListenSpec(uri=uri, kind="tcp", host=parts.hostname, port=port, sandbox_id=sandbox)


class ListenerError(Exception):
    """A listener could not be opened (the message names the address and the reason)."""


class Listener:
    """An open server socket; `close()` stops accepting and removes a socket file we made."""

    def __init__(self, description: str, server: asyncio.Server, unlink: Path | None = None) -> None:
        self.description = description
        self._server = server
        self._unlink = unlink

    @property
    def address(self) -> object:
        socks = self._server.sockets
        return socks[0].getsockname() if socks else None

    async def close(self) -> None:
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 1.0)
        if self._unlink is not None:
            await asyncio.to_thread(_remove_socket_file, self._unlink)


def _remove_socket_file(path: Path) -> None:
    """Remove our socket file, and nothing else that may have taken its place."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)


def _prepare_socket_path(path: Path) -> None:
    """Remove a stale socket at `path`; refuse if something live or not a socket is there.

    A live socket means another forwarder already serves this sandbox: taking its path
    would silently cut it off.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if not path.parent.is_dir():
            raise ListenerError(f"{path}: directory {path.parent} does not exist") from None
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ListenerError(f"{path}: exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(0.5)
        probe.connect(str(path))
    except OSError:
        os.unlink(path)  # nobody listening: stale from an earlier run
        return
    finally:
        probe.close()
    raise ListenerError(f"{path}: another process is already listening there")


def _bound_unix_socket(path: Path) -> socket.socket:
    """A listening Unix socket at `path` (stale socket removed first). Blocking: the path may
    be on a slow host mount, so this runs in a worker thread; asyncio's own
    `start_unix_server(path=...)` would stat and bind on the event loop."""
    _prepare_socket_path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        sock.listen(100)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ListenerError(f"{path}: cannot listen: {exc.strerror or exc}") from None
    return sock


async def open_unix(path: Path, description: str, factory: ProtocolFactory, peer: Peer) -> Listener:
    sock = await asyncio.to_thread(_bound_unix_socket, path)
    try:
        server = await asyncio.get_running_loop().create_unix_server(lambda: factory(peer), sock=sock)
    except OSError as exc:
        sock.close()
        await asyncio.to_thread(_remove_socket_file, path)
        raise ListenerError(f"{path}: cannot listen: {exc.strerror or exc}") from None
    return Listener(description, server, unlink=path)


async def open_tcp(host: str, port: int, description: str, factory: ProtocolFactory, peer: Peer) -> Listener:
    try:
        server = await asyncio.get_running_loop().create_server(lambda: factory(peer), host=host, port=port)
    except OSError as exc:
        raise ListenerError(f"tcp {host}:{port}: cannot listen: {exc.strerror or exc}") from None
    return Listener(description, server)


def vsock_available() -> bool:
    return hasattr(socket, "AF_VSOCK")


async def open_vsock(
    cid: int,
    port: int,
    description: str,
    factory: ProtocolFactory,
) -> Listener:
    """Listen on AF_VSOCK; each peer's CID (`Peer.vsock`) is mapped to its sandbox by the protocol."""
    if not vsock_available():
        raise ListenerError(f"vsock {cid}:{port}: AF_VSOCK is not supported by this Python/kernel")
    try:
        sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    except OSError as exc:
        raise ListenerError(f"vsock: AF_VSOCK unavailable: {exc.strerror or exc}") from None
    try:
        sock.bind((cid, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ListenerError(
            f"vsock {'any' if cid == VMADDR_CID_ANY else cid}:{port}: cannot listen: {exc.strerror or exc}"
        ) from None

    peer = Peer(source=description, vsock=True)
    server = await asyncio.get_running_loop().create_server(lambda: factory(peer), sock=sock)
    return Listener(description, server)


def hvsock_listen_path(vmm_socket: str | Path, port: int = TRACE_PORT) -> str:
    """Where a hybrid vsock guest connection to `port` arrives: `<vmm socket>_<port>`."""
    return f"{vmm_socket}_{port}"
