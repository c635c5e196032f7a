"""Capture on failure: the node agent keeps the evidence of a sandbox that failed, before it is gone.

When the watchers (`watch.py`) see a sandbox fail, a capture starts at once: the sandbox's
state directories and OCI specs are read first (the runtime removes them within seconds;
what is already gone comes from the agent's copy), the hypervisor's command line if it is
still alive, then, `--capture-after` later, its log lines from `--capture-before` until
then, its spans from the spool, and the host facts. The result is a normal bundle (same
layout, same manifest, redacted the same way) with a `trigger` in the manifest, written as
`<spool>/captures/<UTC time>-<sandbox prefix>.tar.gz` through a `.partial` file renamed when
complete, so a capture on disk is always whole, even when SIGTERM arrives mid-capture.

Bounded on purpose: one capture per sandbox (remembered across restarts through the
records on disk), at most `--capture-rate` per node (the rest are counted), and the
directory kept under `--capture-size`, oldest removed first.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kata_debug import __version__
from kata_debug.agent.ring import Rate, RateLimit, enforce_size
from kata_debug.agent.uploads import (
    BACKOFF_INITIAL,
    DONE,
    PENDING,
    CaptureUploader,
    mark_pending,
    remove_markers,
)
from kata_debug.agent.watch import (
    Failure,
    FileFollower,
    StateWatcher,
    failure_in_line,
    follow_journal,
    spawn,
    state_files,
)
from kata_debug.analyze.base import Signature
from kata_debug.analyze.diagnose import all_signatures, diagnose, load_analyzers
from kata_debug.bundle.manifest import CollectorEntry, Manifest, NodeScope, Status, Trigger
from kata_debug.bundle.writer import AsyncBundle, BundleWriter, OutputTarget
from kata_debug.collectors import REGISTRY
from kata_debug.collectors.base import CollectContext, CollectorOutput, CollectorSkipped
from kata_debug.collectors.captures import SUFFIX, CaptureRecord, sidecar
from kata_debug.collectors.shim_logs import IDENTIFIERS, LOG_FILES
from kata_debug.node.hostroot import HostRoot
from kata_debug.node.paths import CAPTURES_SUBDIR
from kata_debug.redact.redactor import Redactor
from kata_debug.redact.user_rules import UserRules
from kata_debug.upload import UploadTarget

log = logging.getLogger("kata_debug.agent.capture")

#: Per capture: log lines kept (the newest), spans kept, time allowed for each part.
LOG_CAP = 16 << 20
SPANS_CAP = 8 << 20
PART_TIMEOUT = 20.0
#: Host-wide collectors a capture includes as they are: the facts a failed start depends on.
HOST_COLLECTORS = ("host", "kata-config")


@dataclass(frozen=True)
class CaptureConfig:
    """`node-agent --capture*` settings."""

    enabled: bool = True
    window: float = 120.0  # --capture-window
    after: float = 5.0  # --capture-after
    before: float = 600.0  # --capture-before
    rate: Rate = Rate(6, 600.0)  # --capture-rate
    size: int = 256 << 20  # --capture-size
    poll_interval: float = 0.5
    redact: bool = True
    #: `node-agent --redact-config` rules, applied to captures on top of the built-in ones.
    redact_rules: UserRules | None = None
    upload: UploadTarget | None = None  # --capture-upload
    upload_backoff: float = BACKOFF_INITIAL  # first retry delay, doubled per failure


@dataclass
class CaptureCounters:
    """What the agent's state file reports about capturing."""

    failures_seen: int = 0
    captured: int = 0
    duplicate: int = 0  # a second failure of a sandbox already captured
    rate_limited: int = 0
    failed: int = 0  # a capture that could not be written
    removed_by_size: int = 0
    latency_s: list[float] = field(default_factory=list)  # trigger seen -> capture on disk, last 100

    def as_dict(self, uploader: CaptureUploader | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "failures_seen": self.failures_seen,
            "captured": self.captured,
            "duplicate": self.duplicate,
            "rate_limited": self.rate_limited,
            "failed": self.failed,
            "removed_by_size": self.removed_by_size,
        }
        if uploader is not None:
            doc["upload"] = uploader.counters.as_dict(len(uploader.pending))
        return doc


def capture_name(when: datetime, sandbox: str) -> str:
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in sandbox)[:12] or "unknown"
    return f"{when.astimezone(UTC).strftime('%Y%m%dT%H%M%SZ')}-{safe}{SUFFIX}"


def prepare_dir(directory: Path) -> set[str]:
    """Create the captures dir, remove what an interrupted capture left, return the sandboxes captured.

    The sandbox ids come from the records; a capture without one counts by its name's prefix.
    """
    directory.mkdir(parents=True, exist_ok=True)
    captured: set[str] = set()
    for name in os.listdir(directory):
        path = directory / name
        if name.endswith(".partial") or name.startswith("."):
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        stem = next((name.removesuffix(s) for s in (".json", PENDING, DONE) if name.endswith(s)), None)
        if stem is not None and not (directory / (stem + SUFFIX)).exists():
            with contextlib.suppress(OSError):
                path.unlink()  # the record or upload marker of a capture that was never committed
            continue
        if not name.endswith(SUFFIX):
            continue
        try:
            captured.add(str(json.loads(sidecar(path).read_bytes())["sandbox"]))
        except (OSError, ValueError, KeyError, TypeError):
            captured.add("prefix:" + name.removesuffix(SUFFIX).partition("-")[2])
    return captured


def _write_sidecar(path: Path, record: CaptureRecord) -> None:
    side = sidecar(path)
    tmp = side.with_name(f".{side.name}.tmp")
    tmp.write_text(json.dumps(record.to_json(), indent=2) + "\n")
    os.replace(tmp, side)


def _hypervisor_cmdline(host: HostRoot, files: dict[str, bytes]) -> bytes | None:
    """The VMM's command line from /proc, if the pid in persist.json/state.json is still alive."""
    for path, data in files.items():
        if not path.endswith(("persist.json", "state.json")):
            continue
        try:
            doc = json.loads(data)
            pid = int(((doc.get("HypervisorState") or {}).get("Pid")) or doc.get("pid") or 0)
        except (ValueError, TypeError, AttributeError):
            continue
        if pid > 0:
            try:
                raw = host.read_bytes(f"/proc/{pid}/cmdline", 1 << 16)
            except OSError:
                return None
            return raw.replace(b"\0", b" ").strip() + b"\n"
    return None


class CaptureService:
    """Watches for failures and writes captures; `run` until cancelled."""

    def __init__(self, host: HostRoot, spool: Path, node: str, cfg: CaptureConfig) -> None:
        self.host = host
        self.spool = spool
        self.dir = spool / CAPTURES_SUBDIR
        self.node = node
        self.cfg = cfg
        self.watcher = StateWatcher(host, cfg.window)
        self.limit = RateLimit(cfg.rate)
        self.counters = CaptureCounters()
        self.captured: set[str] = set()
        #: Sandboxes refused by the rate limit, so their second signal (the line, then the vanish)
        #: counts as a duplicate, not as another failure refused. Bounded: oldest forgotten first.
        self.refused: dict[str, None] = {}
        self._inflight: set[asyncio.Task[None]] = set()
        self.signatures: list[Signature] = []  # diagnose's per-line matchers, loaded by `run`
        self.uploader: CaptureUploader | None = None
        if cfg.upload is not None:
            self.uploader = CaptureUploader(self.dir, cfg.upload, backoff_initial=cfg.upload_backoff)

    def _already(self, sid: str) -> bool:
        return sid in self.captured or any(
            c.startswith("prefix:") and sid.startswith(c[7:]) and c[7:] for c in self.captured
        )

    def trigger(self, failure: Failure) -> None:
        """Start a capture of the failure unless its sandbox was captured or the rate is spent."""
        self.counters.failures_seen += 1
        if self._already(failure.sandbox) or failure.sandbox in self.refused:
            self.counters.duplicate += 1
            self.watcher.forget(failure.sandbox)
            return
        if not self.limit.allow(time.monotonic()):
            self.counters.rate_limited = self.limit.refused
            self.refused[failure.sandbox] = None
            if len(self.refused) > 10_000:
                del self.refused[next(iter(self.refused))]
            log.info(
                "capture: sandbox %s failed (%s); not captured: --capture-rate spent", failure.sandbox, failure.reason
            )
            self.watcher.forget(failure.sandbox)
            return
        self.captured.add(failure.sandbox)
        task = asyncio.create_task(self._capture(failure), name=f"capture:{failure.sandbox[:12]}")
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def run(self) -> None:
        self.captured |= await asyncio.to_thread(prepare_dir, self.dir)
        # Sandboxes first (they vanish in seconds), then the signatures (importing the analyzers).
        for f in await asyncio.to_thread(self.watcher.poll):
            self.trigger(f)
        self.signatures = await asyncio.to_thread(_signatures)
        follower = await asyncio.to_thread(FileFollower, self.host, LOG_FILES)
        loops = [
            asyncio.create_task(self._poll(follower), name="capture-poll"),
            asyncio.create_task(self._journal(), name="capture-journal"),
        ]
        if self.uploader is not None:
            loops.append(asyncio.create_task(self._uploads(self.uploader), name="capture-upload"))
        try:
            await asyncio.gather(*loops)
        finally:
            for t in [*loops, *self._inflight]:
                t.cancel()
            await asyncio.gather(*loops, *list(self._inflight), return_exceptions=True)
            await asyncio.to_thread(follower.close)

    async def _uploads(self, uploader: CaptureUploader) -> None:
        """Uploading is an addition: if its queue dies, capturing goes on (one warning says why)."""
        try:
            await uploader.run()
        except Exception as exc:
            log.warning("capture upload off: %s: %s", type(exc).__name__, exc)

    async def _poll(self, follower: FileFollower) -> None:
        while True:
            for f in await asyncio.to_thread(self.watcher.poll):
                self.trigger(f)
            lines = await asyncio.to_thread(follower.poll)
            if lines:
                known = self.watcher.known_ids()
                now = datetime.now(UTC)
                for line in lines:
                    seen = failure_in_line(line, now, known, signatures=self.signatures)
                    if seen is not None:
                        self.trigger(seen)
            await asyncio.sleep(self.cfg.poll_interval)

    async def _journal(self) -> None:
        # aclosing: a cancelled agent kills journalctl now, not when the generator is collected.
        async with contextlib.aclosing(follow_journal(self.host.root)) as entries:
            async for message, when, priority in entries:
                f = failure_in_line(message, when, self.watcher.known_ids(), priority, self.signatures)
                if f is not None:
                    self.trigger(f)

    async def _capture(self, failure: Failure) -> None:
        try:
            record = await self.write(failure)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one capture never stops the agent
            self.counters.failed += 1
            log.warning(
                "capture of sandbox %s failed: %s: %s",
                failure.sandbox,
                type(exc).__name__,
                exc,
                exc_info=log.isEnabledFor(logging.DEBUG),
            )
            return
        finally:
            self.watcher.forget(failure.sandbox)
        latency = time.monotonic() - failure.seen
        self.counters.captured += 1
        self.counters.latency_s = [*self.counters.latency_s[-99:], latency]
        removed = await asyncio.to_thread(enforce_size, self.dir, self.cfg.size)
        self.counters.removed_by_size += len(removed)
        if self.uploader is not None:
            self.uploader.forget(removed)
            if record.id not in removed:
                self.uploader.add(record.id)
        log.info(
            "capture %s: sandbox %s%s failed (%s); %d bytes; top finding: %s",
            record.id,
            failure.sandbox,
            f" (pod {record.pod})" if record.pod else "",
            failure.reason,
            record.bytes,
            record.top_finding or "none",
        )

    async def write(self, failure: Failure) -> CaptureRecord:
        """Write one capture bundle; returns its record. Cancelling it leaves no capture behind."""
        sid = failure.sandbox
        started = datetime.now(UTC)
        copy = self.watcher.copy_of(sid)
        specs = self.watcher.specs_of(sid)
        pod = self.watcher.pod_of(sid)
        live = await asyncio.to_thread(state_files, self.host, sid)  # state first: it is what goes away
        copied = dict(copy.files) if copy is not None else {}
        from_copy = sorted(p for p in copied if p not in live)
        cmdline = await asyncio.to_thread(_hypervisor_cmdline, self.host, {**copied, **live})
        ids = {sid, *(d.rstrip("/").split("/")[-1] for d in specs), *(copy.containers if copy else ())}
        ids.discard("userdata")
        # The logs of the moments after the failure are part of the evidence.
        wait = self.cfg.after - (time.monotonic() - failure.seen)
        if wait > 0:
            await asyncio.sleep(wait)
        name = capture_name(failure.time, sid)
        path = self.dir / name
        target = OutputTarget(str(path))
        sink = await asyncio.to_thread(target.open)
        try:
            redactor = Redactor(enabled=self.cfg.redact, rules=self.cfg.redact_rules)
            bundle = AsyncBundle(BundleWriter(sink, name.removesuffix(SUFFIX), "gzip"))
            ctx = CollectContext(
                host=self.host,
                node=self.node,
                since=timedelta(seconds=self.cfg.before),
                now=started,
                redactor=redactor,
                max_log_bytes=LOG_CAP,
            )
            entries: list[CollectorEntry] = []

            async def state(out: CollectorOutput) -> None:
                for node_path, data in sorted({**copied, **live}.items()):
                    await out.add_bytes(node_path.lstrip("/"), data)
                for task_dir, spec in sorted(specs.items()):
                    await out.add_json(f"{task_dir.lstrip('/')}/config.json", json.loads(spec), oci=True)
                await out.add_json(
                    "sources.json",
                    {
                        "live": sorted(live),
                        "from_agent_copy": from_copy,
                        "oci_specs": sorted(specs),
                        "hypervisor_cmdline": cmdline is not None,
                    },
                    redact=False,
                )
                if cmdline is not None:
                    await out.add_bytes("hypervisor-cmdline.txt", cmdline)

            async def logs(out: CollectorOutput) -> None:
                since = failure.time - timedelta(seconds=self.cfg.before)
                until = failure.time + timedelta(seconds=self.cfg.after + 1)
                await _journal_lines(out, self.host, since, until, ids)
                for node_path in LOG_FILES:
                    await _file_lines(out, self.host, node_path, ids)

            async def spans(out: CollectorOutput) -> None:
                await _span_lines(out, self.spool, sid)

            parts: list[tuple[str, Any]] = [("sandbox-state", state), ("logs", logs), ("agent-traces", spans)]
            for collector in HOST_COLLECTORS:
                parts.append((collector, REGISTRY.load(collector)().collect))
            for part_name, fn in parts:
                entries.append(await _run_part(part_name, fn, bundle, ctx))
            # Read first, kept whole; what the runtime removed while the logs were read is noted.
            vanished = await asyncio.to_thread(lambda: sorted(p for p in live if not self.host.exists(p)))
            trigger = Trigger(
                reason=failure.reason,
                time=failure.time,
                sandbox=sid,
                line=redactor.text(failure.line) if failure.line is not None else None,
                pod=pod,
                from_copy=from_copy,
                vanished_during_capture=vanished,
            )
            manifest = Manifest(
                tool_version=__version__,
                scope=NodeScope(node=self.node, host_root=str(self.host.root)),
                started_at=started,
                finished_at=datetime.now(UTC),
                since=failure.time - timedelta(seconds=self.cfg.before),
                redacted=self.cfg.redact,
                interrupted=None,
                collectors=entries,
                redactions=redactor.counts,
                trigger=trigger,
            )
            await bundle.close(manifest)
        except BaseException:
            await asyncio.to_thread(_abandon, target)
            raise
        record = CaptureRecord(
            id=name,
            time=failure.time.isoformat(),
            sandbox=sid,
            reason=failure.reason,
            line=trigger.line,
            pod=pod,
            top_finding=None,
        )
        # The record first: a listing never shows the capture without it. A record alone is
        # ignored by listings and removed at the next start.
        # The upload marker too: a capture committed while uploads are on is never missed.
        try:
            await asyncio.to_thread(_write_sidecar, path, record)
            if self.uploader is not None:
                await asyncio.to_thread(mark_pending, path)
            await asyncio.to_thread(target.commit)
        except BaseException:
            await asyncio.to_thread(_abandon, target)
            with contextlib.suppress(OSError):
                await asyncio.to_thread(sidecar(path).unlink)
            await asyncio.to_thread(remove_markers, path)
            raise
        record.bytes = (await asyncio.to_thread(path.stat)).st_size
        record.top_finding = await asyncio.to_thread(_top_finding, path)
        if record.top_finding is not None:
            await asyncio.to_thread(_write_sidecar, path, record)
        return record


def _signatures() -> list[Signature]:
    """Every analyzer's per-line log signatures; none (and one warning) if they cannot load."""
    try:
        return all_signatures(load_analyzers())
    except Exception as exc:  # capturing goes on with error-level lines and the vanish rule
        log.warning("capture: diagnose signatures unavailable: %s: %s", type(exc).__name__, exc)
        return []


def _top_finding(path: Path) -> str | None:
    """`diagnose`'s top finding for the capture (`severity id: title`), None when it finds nothing."""
    try:
        result = diagnose(str(path), label=path.name)
    except Exception as exc:  # the capture is kept whatever diagnose thinks of it
        log.warning("capture %s: diagnose failed: %s: %s", path.name, type(exc).__name__, exc)
        return None
    if not result.findings:
        return None
    top = result.findings[0]
    return f"{top.severity} {top.id}: {top.title}"


def _abandon(target: OutputTarget) -> None:
    target.abandon()
    if target.partial is not None:
        with contextlib.suppress(OSError):
            target.partial.unlink()


async def _run_part(name: str, fn: Any, bundle: AsyncBundle, ctx: CollectContext) -> CollectorEntry:
    out = CollectorOutput(name, bundle, ctx)
    start = time.monotonic()
    status: Status = "ok"
    error: str | None = None
    try:
        await asyncio.wait_for(fn(ctx, out) if name in HOST_COLLECTORS else fn(out), PART_TIMEOUT)
        if out.failures:
            status, error = "partial", f"{len(out.failures)} item(s) failed; first: {out.failures[0].item}"
    except CollectorSkipped as exc:
        status, error = "skipped", str(exc)
    except TimeoutError:
        status, error = "timeout", f"did not finish within {PART_TIMEOUT:g}s"
    except Exception as exc:  # one part never sinks the capture
        status, error = "failed", f"{type(exc).__name__}: {exc}"
    return out.entry(status, error, start)


#: A journal line kept in a capture is cut here (a log line is not a blob store).
_MAX_LINE = 64 << 10


def _keep(line: bytes, ids: set[str]) -> bool:
    text = line.decode("utf-8", "replace")
    return any(i in text for i in ids)


async def _journal_lines(out: CollectorOutput, host: HostRoot, since: datetime, until: datetime, ids: set[str]) -> None:
    """The sandbox's journal lines (its id or a container's in them) between `since` and `until`."""
    argv = ["journalctl", "--no-pager", "-q", "--utc", "-o", "short-iso-precise"]
    if str(host.root) != "/":
        argv += ["--root", str(host.root)]
    argv += ["--since", f"@{since.timestamp():.6f}", "--until", f"@{until.timestamp():.6f}"]
    argv += [f"SYSLOG_IDENTIFIER={i}" for i in IDENTIFIERS]
    try:
        proc = await spawn(argv, stderr=asyncio.subprocess.PIPE)
    except FileNotFoundError:
        out.item_failed("journal", "journalctl not found")
        return
    assert proc.stdout is not None and proc.stderr is not None
    kept: collections.deque[bytes] = collections.deque()
    size = 0
    # stderr drained alongside (a chatty journalctl must not block on a full pipe), bounded.
    err_task = asyncio.ensure_future(proc.stderr.read(64 << 10))
    try:
        # Read in chunks, not `readline()`: asyncio's line limit (64 KiB) raised on one long
        # journal entry and lost the whole part. A line past _MAX_LINE is kept cut.
        pending = b""
        while chunk := await proc.stdout.read(1 << 20):
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()[:_MAX_LINE]
            for line in lines:
                line = line[:_MAX_LINE] + b"\n"
                if _keep(line, ids):
                    kept.append(line)
                    size += len(line)
                    while size > LOG_CAP and kept:
                        size -= len(kept.popleft())
        if pending and _keep(pending, ids):
            kept.append(pending + b"\n")
        err = await err_task
        code = await proc.wait()
    finally:
        err_task.cancel()
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.communicate()  # drained: its pipes close now, even when cancelled
    if code != 0:
        out.item_failed("journal", f"journalctl exit {code}: {err.decode(errors='replace').strip()[:300]}")
    await out.add_bytes("journal.log", b"".join(kept))


async def _file_lines(out: CollectorOutput, host: HostRoot, node_path: str, ids: set[str]) -> None:
    """The sandbox's lines in the newest LOG_CAP bytes of one log file (and its `.1` rotation)."""

    def read() -> list[bytes]:
        lines: list[bytes] = []
        for p in (f"{node_path}.1", node_path):
            try:
                with host.open(p) as fh:
                    fh.seek(max(0, os.fstat(fh.fileno()).st_size - LOG_CAP))
                    lines += [ln for ln in fh.read().splitlines(keepends=True) if _keep(ln, ids)]
            except OSError:
                continue
        return lines

    lines = await asyncio.to_thread(read)
    if lines:
        await out.add_bytes("files/" + node_path.strip("/").replace("/", "_"), b"".join(lines))


async def _span_lines(out: CollectorOutput, spool: Path, sid: str) -> None:
    """The spooled spans tagged with the sandbox (OTLP/JSON lines naming its id)."""

    def read() -> bytes:
        kept: list[bytes] = []
        for name in sorted(os.listdir(spool)):
            if not name.startswith("spans.jsonl"):
                continue
            try:
                with open(spool / name, "rb") as fh:
                    kept += [ln for ln in fh if sid.encode() in ln]
            except OSError:
                continue
        return b"".join(kept)[-SPANS_CAP:]

    data = await asyncio.to_thread(read)
    if data:
        await out.add_bytes("spans.jsonl", data)
