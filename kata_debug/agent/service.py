"""The node agent: the trace forwarder as a DaemonSet runs it on every Kata node.

It is `forwarder.Forwarder` with the settings a node needs, nothing of its own on the data
path: `discover` attaches a hybrid vsock listener (`<uds>_10240`) to every Cloud Hypervisor /
Firecracker / runtime-rs sandbox as it appears, `vsock://any:10240` takes QEMU sandboxes'
streams, spans are tagged with the sandbox id and the pod (from the sandbox's OCI
annotations) and go to the configured OTLP backends and always to a size-capped, rotated
spool on the node, which the `agent-traces` collector packs into bundles.

What is added here: a one-line account when AF_VSOCK cannot be used (the runtime's default
seccomp profile blocks it; hybrid vsock still works), and a state file rewritten every few
seconds that the kubelet's exec probes read (the agent opens no port to probe).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kata_debug.agent.capture import CaptureConfig, CaptureService
from kata_debug.errors import UsageError
from kata_debug.forwarder.limits import ListenerLimits
from kata_debug.forwarder.listeners import TRACE_PORT
from kata_debug.forwarder.server import Forwarder, ForwarderConfig, ForwarderStats
from kata_debug.forwarder.targets import ExportTarget, parse_export, target_from_env
from kata_debug.node.hostroot import HostRoot
from kata_debug.node.paths import TRACE_SPOOL_DIR

log = logging.getLogger("kata_debug.agent")

SPOOL_FILE = "spans.jsonl"
SPOOL_FILES = 4  # the live file and 3 rotations share the cap
STATE_INTERVAL = 10.0
_OTLP_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


@dataclass
class AgentConfig:
    host_root: Path = Path("/")
    #: A node path, resolved under host_root like `collect --trace-spool-dir`; None: TRACE_SPOOL_DIR.
    spool_dir: Path | None = None
    spool_bytes: int = 128 << 20  # total, all rotations included
    exports: Sequence[str] = ()  # --export URIs; empty: the OTEL_EXPORTER_OTLP_* variables, if any
    vsock_port: int = TRACE_PORT
    state_file: Path | None = None
    node_name: str | None = None
    stats_interval: float = 60.0
    shutdown_timeout: float = 10.0
    discover_interval: float = 0.5
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    #: What guests' trace connections may hold (`--max-connections`, `--idle-timeout`, `--buffer-budget`).
    limits: ListenerLimits = field(default_factory=ListenerLimits)
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))

    @property
    def spool(self) -> Path:
        node_path = str(self.spool_dir) if self.spool_dir is not None else TRACE_SPOOL_DIR
        return _absolute(self.host_root / node_path.lstrip("/"))

    def absolute(self) -> AgentConfig:
        """The same settings with every path absolute.

        The agent hands paths to the forwarder (host root, spool file) and keeps using them
        for as long as it runs; resolving `--host-root hr` once, against the directory it was
        started in, is what the user meant.
        """
        return replace(
            self,
            host_root=_absolute(self.host_root),
            state_file=_absolute(self.state_file) if self.state_file is not None else None,
        )


def _absolute(path: Path) -> Path:
    """Absolute and normalised (`a/../b` -> `/cwd/b`), symlinks left alone."""
    return Path(os.path.abspath(path))


def vsock_problem(port: int) -> str | None:
    """Why the vsock trace listener cannot open, or None when it can (bound and released)."""
    family = getattr(socket, "AF_VSOCK", None)
    if family is None:
        return "this Python has no AF_VSOCK support"
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        return f"socket(AF_VSOCK) refused: {exc.strerror or exc} (seccomp profile, or no vsock module)"
    try:
        sock.bind((getattr(socket, "VMADDR_CID_ANY", 0xFFFFFFFF), port))
    except OSError as exc:
        return f"cannot bind vsock port {port}: {exc.strerror or exc}"
    finally:
        sock.close()
    return None


def export_targets(cfg: AgentConfig) -> tuple[list[ExportTarget], str | None]:
    """The OTLP targets (UsageError for bad URIs) and a note when there are none."""
    targets: list[ExportTarget] = []
    for uri in cfg.exports:
        try:
            targets.append(parse_export(uri))
        except ValueError as exc:
            raise UsageError(f"--export {exc}") from None
    if targets:
        return targets, None
    if any(cfg.environ.get(v) for v in _OTLP_ENDPOINT_VARS):
        try:
            return [target_from_env(cfg.environ)], None
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    return [], "no OTLP endpoint configured (--export or OTEL_EXPORTER_OTLP_ENDPOINT): spans go to the spool only"


def spool_target(cfg: AgentConfig) -> ExportTarget:
    """The size-capped, rotated OTLP/JSON spool; fails now (UsageError) if it cannot be written."""
    spool = cfg.spool
    per_file = max(1, cfg.spool_bytes // SPOOL_FILES)
    try:
        spool.mkdir(parents=True, exist_ok=True)
        with open(spool / SPOOL_FILE, "ab"):
            pass
    except OSError as exc:
        given = cfg.spool_dir if cfg.spool_dir is not None else TRACE_SPOOL_DIR
        raise UsageError(f"--spool-dir {given} ({spool}): cannot write: {exc.strerror or exc}") from None
    # Built directly, not parsed from a file:// string: a path is not a URI, and `?` or `#` in
    # it would become a query or a fragment. The URI is only the exporter's name in logs.
    path = spool / SPOOL_FILE
    backups = SPOOL_FILES - 1
    return ExportTarget(
        uri=f"{path.as_uri()}?max_bytes={per_file}&backups={backups}",
        kind="file",
        path=str(path),
        max_bytes=per_file,
        backups=backups,
    )


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Atomically replace the probe's state file (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


class NodeAgent:
    def __init__(self, cfg: AgentConfig) -> None:
        cfg = cfg.absolute()
        if not cfg.host_root.is_dir():
            raise UsageError(f"--host-root {cfg.host_root}: not a directory")
        if not 0 < cfg.vsock_port < 1 << 32:
            raise UsageError(f"--vsock-port {cfg.vsock_port}: not a port number")
        self.cfg = cfg
        targets, self.export_note = export_targets(cfg)
        self.spool = spool_target(cfg)
        self.vsock_problem = vsock_problem(cfg.vsock_port)
        listen = ["discover"] + ([] if self.vsock_problem else [f"vsock://any:{cfg.vsock_port}"])
        self.forwarder = Forwarder(
            ForwarderConfig(
                listen=listen,
                exports=[*targets, self.spool],
                host_root=str(cfg.host_root),
                node_name=cfg.node_name,
                stats_interval=cfg.stats_interval,
                shutdown_timeout=cfg.shutdown_timeout,
                discover_interval=cfg.discover_interval,
                limits=cfg.limits,
            )
        )
        self.capture: CaptureService | None = None
        if cfg.capture.enabled:
            node = cfg.node_name or cfg.environ.get("NODE_NAME") or socket.gethostname()
            self.capture = CaptureService(HostRoot.at(cfg.host_root), cfg.spool, node, cfg.capture)
        self._started = False
        self._stopping = False

    def stop(self) -> None:
        self._stopping = True
        self.forwarder.stop()

    def state(self) -> dict[str, Any]:
        fwd = self.forwarder
        ready = self._started and not self._stopping
        reason = None
        if self._stopping:
            reason = "shutting down"
        elif not self._started:
            reason = "starting"
        return {
            "updated_at": time.time(),
            "pid": os.getpid(),
            "ready": ready,
            "reason": reason,
            "listeners": [ln.description for ln in fwd.listeners],
            "vsock": self.vsock_problem or "listening",
            "spool": str(self.spool.path),
            "counters": fwd.stats.as_dict(),
            "capture": self.capture.counters.as_dict(self.capture.uploader) if self.capture is not None else None,
        }

    async def _keep_state(self) -> None:
        assert self.cfg.state_file is not None
        while True:
            try:
                await asyncio.to_thread(write_state, self.cfg.state_file, self.state())
            except OSError as exc:
                log.warning("cannot write state file %s: %s", self.cfg.state_file, exc)
            await asyncio.sleep(STATE_INTERVAL)

    async def _run_capture(self, service: CaptureService) -> None:
        """Run capturing on an event loop of its own, in its own thread, until cancelled.

        Why not on the forwarder's loop: while guests send spans as fast as they can, each of
        that loop's iterations runs many connections' reads and decodes, and a capture's
        hundred-odd awaits (file reads, bundle writes, journalctl) each waited behind one:
        a capture that takes 0.4 s took 9 s (bench/capture.py). On a loop of its own it only
        shares the interpreter, in the GIL's 5 ms turns. Cancelling this cancels the capture
        loop's task and waits for it, so an unfinished capture is still removed on SIGTERM.
        Capturing is an addition: if it cannot run, spans still flow (one warning says why).
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        ready = threading.Event()
        inner: list[tuple[asyncio.AbstractEventLoop, asyncio.Task[Any]]] = []

        async def capture_main() -> None:
            task = asyncio.current_task()
            assert task is not None
            inner.append((asyncio.get_running_loop(), task))
            ready.set()
            try:
                await service.run()
            except OSError as exc:
                log.warning("capture off: %s: %s", service.dir, exc.strerror or exc)

        def finish(exc: BaseException | None) -> None:
            if done.done():
                return
            if exc is None:
                done.set_result(None)
            else:
                done.set_exception(exc)

        def thread_main() -> None:
            error: BaseException | None = None
            try:
                asyncio.run(capture_main())
            except asyncio.CancelledError:
                pass
            except BaseException as exc:  # reported on the agent's loop, where it is awaited
                error = exc
            finally:
                ready.set()
                with contextlib.suppress(RuntimeError):  # the agent's loop already closed
                    loop.call_soon_threadsafe(finish, error)

        threading.Thread(target=thread_main, name="capture", daemon=True).start()
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:
            await asyncio.to_thread(ready.wait)
            if inner:
                capture_loop, task = inner[0]
                with contextlib.suppress(RuntimeError):  # its loop already finished
                    capture_loop.call_soon_threadsafe(task.cancel)
            with contextlib.suppress(Exception):
                await done
            raise

    async def run(self) -> ForwarderStats:
        """Until stop() (SIGTERM/SIGINT when run by `main`): then flush and return the counters."""
        if self.vsock_problem:
            log.warning(
                "vsock trace ingress off (%s): QEMU sandboxes' spans cannot arrive; hybrid vsock sandboxes "
                "(Cloud Hypervisor, Firecracker, runtime-rs) are still traced",
                self.vsock_problem,
            )
        if self.export_note:
            log.info("%s", self.export_note)
        log.info(
            "spooling spans to %s (at most %d bytes in %d files)", self.spool.path, self.cfg.spool_bytes, SPOOL_FILES
        )
        task = asyncio.create_task(self.forwarder.run(), name="forwarder")
        keeper: asyncio.Task[None] | None = None
        capture: asyncio.Task[None] | None = None
        if self.capture is not None:
            log.info(
                "capturing failed sandboxes into %s (at most %d per %gs, %d bytes)",
                self.capture.dir,
                self.capture.cfg.rate.count,
                self.capture.cfg.rate.seconds,
                self.capture.cfg.size,
            )
            if self.capture.uploader is not None:
                log.info("uploading each capture to %s", self.capture.uploader.shown)
            capture = asyncio.create_task(self._run_capture(self.capture), name="capture")
        try:
            await self.forwarder.wait_started()
            self._started = not task.done()
            if self.cfg.state_file is not None:
                keeper = asyncio.create_task(self._keep_state(), name="state")
            return await task
        finally:
            if capture is not None:  # an unfinished capture is removed, never left half-written
                capture.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await capture
            if keeper is not None:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper
            if self.cfg.state_file is not None:
                self._stopping = True
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(write_state, self.cfg.state_file, self.state())


async def main(cfg: AgentConfig) -> ForwarderStats:
    """Run the agent with SIGTERM/SIGINT wired to a clean stop."""
    agent = await asyncio.to_thread(NodeAgent, cfg)  # checks and creates paths on the host
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.stop)
    try:
        return await agent.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
