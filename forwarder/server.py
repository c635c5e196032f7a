"""The forwarder: listeners -> frame reader -> decoder -> per-sink bounded queues -> exporters.

Library API (the `forward` and `node-agent` commands are thin layers over it):

    fwd = Forwarder(ForwarderConfig(listen=["discover", "vsock://any:10240"],
                                    exports=[parse_export("file:///spool/spans.jsonl")]))
    task = asyncio.create_task(fwd.run())   # returns after stop() and the final flush
    ...
    fwd.stop()

Bad input never takes the forwarder down (see `forwarder.connection`), and what guests'
connections may hold is bounded (`forwarder.limits`). A listener that cannot be opened
is reported and, unless `require_all_listeners` is set, the others carry on.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kata_debug.forwarder.connection import ConnectionHub, TraceConnection
from kata_debug.forwarder.discovery import (
    CidResolver,
    IdentityResolver,
    SandboxSocket,
    SandboxWatcher,
    default_host_name,
)
from kata_debug.forwarder.frames import DEFAULT_MAX_FRAME_BYTES
from kata_debug.forwarder.limits import ListenerLimits
from kata_debug.forwarder.listeners import (
    TRACE_PORT,
    Listener,
    ListenerError,
    ListenSpec,
    Peer,
    hvsock_listen_path,
    open_tcp,
    open_unix,
    open_vsock,
    parse_listen,
)
from kata_debug.forwarder.pipeline import DEFAULT_QUEUE_BYTES, ExportPipeline
from kata_debug.forwarder.sink import SpanSink
from kata_debug.forwarder.sinks import make_sink
from kata_debug.forwarder.spans import Origin
from kata_debug.forwarder.stats import ForwarderStats
from kata_debug.forwarder.targets import ExportTarget
from kata_debug.node.hostroot import HostRoot

log = logging.getLogger("kata_debug.forwarder")


@dataclass
class ForwarderConfig:
    """Everything a forwarder needs; no globals, no environment reads."""

    listen: Sequence[str] = ("vsock://any:10240",)
    exports: Sequence[ExportTarget] = ()
    #: Ready-made sinks, in addition to `exports` (tests, embedding).
    sinks: Sequence[SpanSink] = ()
    format: str = "auto"
    service_name: str = "kata-agent"
    host_root: str = "/"
    node_name: str | None = None
    host_name: str | None = None  # None: the node's /etc/hostname
    queue_size: int = 10_000
    #: Per exporter, the most frame-payload bytes its queued spans may account for: with
    #: only `queue_size`, a guest sending maximum-size frames could make it hold gigabytes.
    #: Must be at least `max_frame_bytes`, or a span from a maximum-size frame could never
    #: be queued at all.
    queue_bytes: int = DEFAULT_QUEUE_BYTES
    batch_size: int = 2048
    batch_delay: float = 0.2
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    shutdown_timeout: float = 10.0
    stats_interval: float = 60.0
    discover_interval: float = 0.5
    retry_initial: float = 0.5
    retry_max: float = 30.0
    #: What guests' connections may hold (connections, idle time mid-frame, buffered bytes).
    limits: ListenerLimits = field(default_factory=ListenerLimits)
    #: Fail `run()` when any listener cannot be opened (else: log it and go on).
    require_all_listeners: bool = False


def tune_gc() -> None:
    """Make the cyclic garbage collector fit a process that mostly holds queued spans.

    Decoded spans never form reference cycles, but each is a few dozen GC-tracked objects,
    and with the default gen-0 threshold (700 allocations) the collector keeps re-walking
    every queued span: a third of the CPU per span when a backend is slow. With 100,000 a
    collection mostly finds spans that were exported and freed long ago (a tenth of the CPU
    per span at 20,000 goes to about a fifteenth), and peak RSS in `bench/forwarder.py memory`
    stays the same. A dedicated forwarder process (`forward`, the node agent, the benchmark)
    calls this once at start; the library never changes process-wide settings by itself.
    """
    gc.collect()
    gc.freeze()  # everything imported so far is permanent
    gc.set_threshold(100_000, 20, 20)


class ForwarderError(Exception):
    """The forwarder cannot run at all (no listener could be opened, bad config)."""


class Forwarder:
    def __init__(self, config: ForwarderConfig) -> None:
        self.config = config
        self.host = HostRoot.at(config.host_root)
        self.specs: list[ListenSpec] = [parse_listen(u) for u in config.listen]
        sinks: list[SpanSink] = [make_sink(t) for t in config.exports] + list(config.sinks)
        if not sinks:
            raise ForwarderError("no exporter configured")
        config.limits.check(config.max_frame_bytes)
        if config.queue_bytes < config.max_frame_bytes:
            raise ValueError(
                f"queue_bytes {config.queue_bytes} is below max_frame_bytes {config.max_frame_bytes}: "
                "a span from a frame that large could never be queued"
            )
        self.pipelines = [
            ExportPipeline(
                s,
                queue_size=config.queue_size,
                queue_bytes=config.queue_bytes,
                batch_size=config.batch_size,
                batch_delay=config.batch_delay,
                retry_initial=config.retry_initial,
                retry_max=config.retry_max,
            )
            for s in sinks
        ]
        host_name = config.host_name if config.host_name is not None else default_host_name(self.host)
        self.identities = IdentityResolver(self.host, node_name=config.node_name, host_name=host_name)
        self.cids = CidResolver(self.host)
        self._base = (("service.name", config.service_name),)
        self._stats = ForwarderStats()
        self._listeners: list[Listener] = []
        self._sandbox_listeners: dict[str, Listener] = {}
        self._hub = ConnectionHub(
            stats=self._stats,
            puts=[p.put_many for p in self.pipelines],
            origin=self._origin,
            limits=config.limits,
            max_frame_bytes=config.max_frame_bytes,
            fmt=config.format,
        )
        self._stop = asyncio.Event()
        self._started = asyncio.Event()
        self.listener_errors: list[str] = []

    # ------------------------------------------------------------------ public API

    @property
    def stats(self) -> ForwarderStats:
        s = self._stats
        s.listeners = len(self._listeners) + len(self._sandbox_listeners)
        # len(p) counts the batch being exported too: during an outage it is most of what is held.
        s.per_exporter = {p.name: (p.stats, len(p)) for p in self.pipelines}
        return s

    @property
    def listeners(self) -> list[Listener]:
        return list(self._listeners) + list(self._sandbox_listeners.values())

    async def wait_started(self) -> None:
        """Returns once every configured listener was opened (or reported as failed)."""
        await self._started.wait()

    def stop(self) -> None:
        """Ask `run()` to stop accepting, flush within the shutdown timeout and return."""
        self._stop.set()

    async def run(self) -> ForwarderStats:
        workers = [asyncio.create_task(p.run(), name=f"export {p.name}") for p in self.pipelines]
        background: list[asyncio.Task[None]] = []
        try:
            for spec in self.specs:
                if spec.kind == "discover":
                    background.append(asyncio.create_task(self._discover(), name="discover"))
                    continue
                try:
                    self._listeners.append(await self._open(spec))
                    log.info("listening on %s", spec.uri)
                except ListenerError as exc:
                    self.listener_errors.append(str(exc))
                    log.warning("cannot listen on %s: %s", spec.uri, exc)
                    if self.config.require_all_listeners:
                        raise ForwarderError(str(exc)) from None
            if not self._listeners and not background:
                raise ForwarderError("no listener could be opened: " + "; ".join(self.listener_errors))
            self._started.set()
            if self.config.limits.idle_timeout > 0:
                background.append(asyncio.create_task(self._close_idle(), name="idle"))
            if self.config.stats_interval > 0:
                background.append(asyncio.create_task(self._report(), name="stats"))
            await self._stop.wait()
        finally:
            self._started.set()
            self._hub.accepting = False
            for t in background:
                t.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self._shutdown(workers)
        return self.stats

    # ------------------------------------------------------------------ internals

    async def _open(self, spec: ListenSpec) -> Listener:
        if spec.kind == "vsock":
            assert spec.cid is not None and spec.port is not None
            return await open_vsock(spec.cid, spec.port, spec.uri, self._connection)
        if spec.kind == "hvsock":
            assert spec.path is not None and spec.port is not None
            node_path = await asyncio.to_thread(self.host.resolve, spec.path)  # walks the host's symlinks
            path = Path(hvsock_listen_path(node_path, spec.port))
            return await open_unix(path, spec.uri, self._connection, Peer(spec.uri, spec.sandbox_id))
        if spec.kind == "unix":
            assert spec.path is not None
            return await open_unix(Path(spec.path), spec.uri, self._connection, Peer(spec.uri, spec.sandbox_id))
        if spec.kind == "tcp":
            assert spec.host is not None and spec.port is not None
            return await open_tcp(spec.host, spec.port, spec.uri, self._connection, Peer(spec.uri, spec.sandbox_id))
        raise ListenerError(f"{spec.uri}: not a socket listener")

    async def _discover(self) -> None:
        watcher = SandboxWatcher(self.host, self.config.discover_interval)
        try:
            async for change, sb in watcher.changes():
                if change == "added":
                    await self._attach(sb)
                else:
                    await self._detach(sb)
        finally:
            for path in list(self._sandbox_listeners):
                listener = self._sandbox_listeners.pop(path)
                await listener.close()

    async def _attach(self, sb: SandboxSocket) -> None:
        path = Path(hvsock_listen_path(await asyncio.to_thread(self.host.resolve, sb.node_path), TRACE_PORT))
        desc = f"hvsock://{sb.node_path}"
        try:
            listener = await open_unix(path, desc, self._connection, Peer(desc, sb.sandbox_id))
        except ListenerError as exc:
            log.warning("sandbox=%s: cannot attach trace listener: %s", sb.sandbox_id, exc)
            return
        self._sandbox_listeners[sb.node_path] = listener
        log.info("sandbox=%s: attached %s listener on %s_%d", sb.sandbox_id, sb.hypervisor, sb.node_path, TRACE_PORT)

    async def _detach(self, sb: SandboxSocket) -> None:
        listener = self._sandbox_listeners.get(sb.node_path)
        if listener is not None:
            await listener.close()  # counted as a listener until its socket file is gone
            self._sandbox_listeners.pop(sb.node_path, None)
            log.info("sandbox=%s: gone; detached its trace listener", sb.sandbox_id)
        self.identities.forget(sb.sandbox_id)

    def _connection(self, peer: Peer) -> TraceConnection:
        return TraceConnection(self._hub, peer)

    async def _origin(self, peer: Peer, cid: int | None) -> Origin:
        sandbox_id = peer.sandbox_id
        if sandbox_id is None and cid is not None:
            sandbox_id = await self.cids(cid)
        identity = await self.identities.identity(sandbox_id)
        if sandbox_id is None and cid is not None:
            identity = identity + (("kata.vsock.cid", cid),)
        return Origin.make(sandbox_id, peer.source, self._base, identity)

    async def _close_idle(self) -> None:
        """Close connections stalled mid-frame (`idle_timeout`), checked a few times per timeout."""
        loop = asyncio.get_running_loop()
        interval = min(1.0, self.config.limits.idle_timeout / 4)
        while True:
            await asyncio.sleep(interval)
            self._hub.close_idle(loop.time())

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(self.config.stats_interval)
            log.info("counters: %s", self.stats.line())

    async def _shutdown(self, workers: list[asyncio.Task[None]]) -> None:
        for listener in self._listeners:
            await listener.close()
        for path in list(self._sandbox_listeners):
            await self._sandbox_listeners.pop(path).close()
        self._hub.close_all()
        await asyncio.sleep(0)  # let the transports report their connections lost
        for p in self.pipelines:
            p.close()
        deadline = time.monotonic() + max(0.0, self.config.shutdown_timeout)
        pending = set(workers)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=max(0.0, deadline - time.monotonic()))
        for p, w in zip(self.pipelines, workers):
            if w in pending:
                w.cancel()
                left = p.abandon()
                log.warning(
                    "exporter %s: shutdown timeout (%.1fs) passed; %d spans not delivered",
                    p.name,
                    self.config.shutdown_timeout,
                    left,
                )
            else:
                p.finish()
        await asyncio.gather(*workers, return_exceptions=True)
        log.info("final counters: %s", self.stats.line())
