"""What the node agent watches to see a sandbox fail: runtime logs and the runtime's directories.

Two signals, either enough:

- a runtime log line at error level that names a sandbox (or one of its containers), from
  journald (`journalctl --follow -o json`, the identifiers `shim-logs` reads, in the host
  root's journal) or from the containerd/CRI-O log files (followed across rotation); both
  start at "now", so a restarted agent never re-reads the lines it already acted on;
- the vanish rule: a Kata sandbox whose state directory appeared and disappeared within the
  capture window before any of its app containers appeared failed to start, even when
  nothing was logged at error level (a Job whose containers ran is not a failure).

The runtime deletes a failed sandbox's OCI specs and state within seconds, often before its
error line is read. So from the moment a Kata sandbox appears until it has run for the
window, `StateWatcher` keeps a small in-memory copy of its specs and state files, which the
capture uses for whatever is gone by the time it looks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import stat
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from time import monotonic
from typing import Any, Literal

from kata_debug.analyze.base import Signature
from kata_debug.collectors.sandboxes import STATE_ROOTS
from kata_debug.collectors.shim_logs import IDENTIFIERS, LOG_FILES
from kata_debug.logs.logfmt import parse_line, sandbox_of
from kata_debug.node.hostroot import HostRoot
from kata_debug.node.oci import CONTAINERD_TASK_ROOT, CRIO_ROOT, read_bundle

log = logging.getLogger("kata_debug.agent.capture")

Reason = Literal["error-line", "vanished", "diagnose"]
ERROR_LEVELS = frozenset({"error", "err", "fatal", "panic", "critical", "crit"})
#: Per file and per sandbox caps of the in-memory copy: specs and state files are kilobytes;
#: anything larger (a console log someone put there) is not what the copy is for.
COPY_FILE_MAX = 256 << 10
COPY_SANDBOX_MAX = 2 << 20
_ID_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{5,127}")


#: A followed log file is read at most this much per poll, and a line kept at most this long.
_READ_PER_POLL = 4 << 20
_MAX_LINE = 64 << 10


@dataclass(frozen=True)
class Failure:
    """One sandbox failure as the watcher saw it: the capture's `trigger`."""

    reason: Reason
    time: datetime  # when it happened (the log line's time, or when the state was seen gone)
    sandbox: str
    line: str | None = None
    seen: float = field(default_factory=monotonic)  # when the agent saw it (latency)


@dataclass
class SandboxCopy:
    """A young sandbox: when it appeared, its containers, and a copy of its specs and state files."""

    sandbox: str
    appeared: float  # wall-clock seconds
    files: dict[str, bytes] = field(default_factory=dict)  # node path -> content
    size: int = 0
    containers: set[str] = field(default_factory=set)  # app container ids seen
    pod: str | None = None
    copying: bool = True  # False once older than the window: the copy is dropped

    def keep(self, node_path: str, data: bytes) -> None:
        old = self.files.get(node_path)
        grow = len(data) - (len(old) if old is not None else 0)
        if len(data) > COPY_FILE_MAX or self.size + grow > COPY_SANDBOX_MAX:
            return
        self.files[node_path] = data
        self.size += grow


@dataclass
class _Task:
    """A task bundle seen once: its spec is read when it appears, never again."""

    sandbox: str | None
    kind: str  # sandbox | container | unknown
    kata: bool
    pod: str | None
    spec: bytes | None


def _read_small(host: HostRoot, real: Path, limit: int = COPY_FILE_MAX) -> bytes | None:
    """A small node file found under the root (walked again from the root: a file swapped
    for a link since it was listed is read inside the root, never outside it)."""
    try:
        with host.open(real) as fh:
            data = fh.read(limit + 1)
    except OSError:
        return None
    return data if len(data) <= limit else None


def state_files(host: HostRoot, sid: str) -> dict[str, bytes]:
    """Every regular file under the sandbox's Kata state dirs (sockets and FIFOs skipped), node path -> bytes."""
    found: dict[str, bytes] = {}
    total = 0
    for root in STATE_ROOTS:
        top = host.resolve(f"{root}/{sid}")
        if not top.is_dir() or top.is_symlink():
            continue
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
            for name in sorted(filenames):
                real = Path(dirpath) / name
                try:
                    if not stat.S_ISREG(real.lstat().st_mode):
                        continue
                except OSError:
                    continue
                data = _read_small(host, real)
                if data is None or total + len(data) > COPY_SANDBOX_MAX:
                    continue
                found[host.node_path(real)] = data
                total += len(data)
    return found


class StateWatcher:
    """Polls the Kata state roots and the task directories; keeps copies; reports vanished sandboxes.

    Listing a few directories every half second is cheap and sees the same thing inotify
    would, in a host root where inotify on /run of another mount namespace is not reliable.

    `poll` runs in a worker thread while the capture loop asks what is known and forgets
    what was captured: one lock keeps the two from changing the maps under each other, and
    what leaves the watcher is a snapshot.
    """

    def __init__(self, host: HostRoot, window: float, clock: Callable[[], float] = time.time) -> None:
        self.host = host
        self.window = window
        self.clock = clock
        self.sandboxes: dict[str, SandboxCopy] = {}
        self.tasks: dict[str, _Task] = {}  # task bundle node dir -> what it is
        self._primed = False
        self._gone: set[str] = set()  # vanished, copy kept for the capture
        self._live_tasks: set[str] = set()
        self._lock = threading.Lock()

    def known_ids(self) -> dict[str, str]:
        """Every sandbox and container id the watcher knows -> its sandbox id."""
        with self._lock:
            ids = {sid: sid for sid in self.sandboxes}
            for task_dir, task in self.tasks.items():
                if task.sandbox:
                    ids[_task_id(task_dir)] = task.sandbox
            return ids

    def copy_of(self, sid: str) -> SandboxCopy | None:
        """A snapshot of the sandbox's copy (the next poll goes on changing the original)."""
        with self._lock:
            copy = self.sandboxes.get(sid)
            if copy is None:
                return None
            return replace(copy, files=dict(copy.files), containers=set(copy.containers))

    def specs_of(self, sid: str) -> dict[str, bytes]:
        """The OCI specs the watcher read for the sandbox and its containers (task dir -> config.json)."""
        with self._lock:
            return {d: t.spec for d, t in self.tasks.items() if t.sandbox == sid and t.spec is not None}

    def pod_of(self, sid: str) -> str | None:
        with self._lock:
            copy = self.sandboxes.get(sid)
            if copy is not None and copy.pod:
                return copy.pod
            return next((t.pod for t in self.tasks.values() if t.sandbox == sid and t.pod), None)

    def poll(self) -> list[Failure]:
        """One look at the node (blocking I/O: run it in a thread); the sandboxes that vanished."""
        with self._lock:
            return self._poll()

    def _poll(self) -> list[Failure]:
        now = self.clock()
        self._poll_tasks()
        present: dict[str, float] = {}
        for root in STATE_ROOTS:
            for sid in self.host.listdir(root):
                real = self.host.resolve(f"{root}/{sid}")
                try:
                    st = real.stat()
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    present[sid] = min(present.get(sid, st.st_ctime), st.st_ctime)
        failures: list[Failure] = []
        for sid, created in present.items():
            copy = self.sandboxes.get(sid)
            if copy is None:
                # At start-up, a sandbox's age is its directory's; one that appears later is new now.
                appeared = min(created, now) if not self._primed else now
                copy = self.sandboxes[sid] = SandboxCopy(sid, appeared, copying=now - appeared <= self.window)
            if copy.copying and now - copy.appeared > self.window:
                copy.copying = False
                copy.files.clear()
                copy.size = 0
            if copy.copying:
                for path, data in state_files(self.host, sid).items():
                    copy.keep(path, data)
            for task_dir, task in self.tasks.items():
                if task.sandbox == sid:
                    if task.kind == "container":
                        copy.containers.add(_task_id(task_dir))
                    if task.pod and not copy.pod:
                        copy.pod = task.pod
        for sid in [s for s in self.sandboxes if s not in present and s not in self._gone]:
            copy = self.sandboxes[sid]
            if copy.copying and not copy.containers and now - copy.appeared <= self.window:
                failures.append(Failure("vanished", datetime.fromtimestamp(now, UTC), sid))
                self._gone.add(sid)  # its copy stays until the capture took it: `forget`
            else:
                del self.sandboxes[sid]
        self._primed = True
        return failures

    def forget(self, sid: str) -> None:
        """A capture has what it needs of a sandbox: drop the copy of a vanished one and its dead tasks."""
        with self._lock:
            if sid in self._gone:
                self._gone.discard(sid)
                self.sandboxes.pop(sid, None)
            for d in [d for d, t in self.tasks.items() if t.sandbox == sid and d not in self._live_tasks]:
                del self.tasks[d]

    def _poll_tasks(self) -> None:
        live: set[str] = set()
        for ns in self.host.listdir(CONTAINERD_TASK_ROOT):
            for cid in self.host.listdir(f"{CONTAINERD_TASK_ROOT}/{ns}"):
                live.add(f"{CONTAINERD_TASK_ROOT}/{ns}/{cid}")
        for cid in self.host.listdir(CRIO_ROOT):
            live.add(f"{CRIO_ROOT}/{cid}/userdata")
        for node_dir in live - self.tasks.keys():
            crio = node_dir.startswith(CRIO_ROOT)
            engine = "cri-o" if crio else "containerd"
            namespace = None if crio else node_dir.split("/")[-2]
            try:
                b = read_bundle(self.host, engine, namespace, node_dir, _task_id(node_dir))
            except OSError:
                continue  # gone already, or not a directory: looked at again next poll
            e = b.entry
            pod = f"{e.pod_namespace}/{e.pod_name}" if e.pod_name else None
            spec = json.dumps(b.spec).encode() if b.spec is not None and e.kata else None
            self.tasks[node_dir] = _Task(e.sandbox_id, e.type, e.kata, pod, spec)
        # Tasks of sandboxes still tracked stay known after their dir is gone (the capture wants them).
        tracked = set(self.sandboxes) | self._gone
        for gone in [d for d in self.tasks if d not in live and self.tasks[d].sandbox not in tracked]:
            del self.tasks[gone]
        self._live_tasks = live


def _task_id(node_dir: str) -> str:
    parts = node_dir.rstrip("/").split("/")
    return parts[-2] if parts[-1] == "userdata" else parts[-1]


def failure_in_line(
    message: str,
    when: datetime,
    known: dict[str, str],
    priority: int | None = None,
    signatures: Sequence[Signature] = (),
) -> Failure | None:
    """A failure when `message` is an error-level runtime line naming a sandbox or one of its containers.

    A line at another level is a failure too when it matches one of `signatures` (the
    diagnose analyzers' per-line matchers): reason `diagnose`.
    The level is the line's own (`level=error`, JSON `"level":"error"`) or, for lines that
    carry none, the journal priority (err or worse). The sandbox is the line's own field
    (`sandbox=`, runtime-rs `source=`) or a known sandbox/container id anywhere in the line.
    """
    fields = parse_line(message)
    level = fields.get("level")
    reason: Reason = "error-line"
    if isinstance(level, str) and level.lower() in ERROR_LEVELS:
        pass
    elif not isinstance(level, str) and priority is not None and priority <= 3:
        pass
    elif any(sig.match(message) for sig in signatures):
        reason = "diagnose"  # a known failure signature, whatever level it was logged at
    else:
        return None
    sid = sandbox_of(fields)
    if sid is not None:
        sid = known.get(sid, sid)
    else:
        for key in ("container", "cid", "container_id", "id"):
            value = fields.get(key)
            if isinstance(value, str) and value in known:
                sid = known[value]
                break
    if sid is None:
        for token in _ID_TOKEN.findall(message):
            if token in known:
                sid = known[token]
                break
    if sid is None:
        return None
    return Failure(reason, when, sid, message)


async def spawn(argv: list[str], **kwargs: Any) -> asyncio.subprocess.Process:
    """Start `argv` with stdout piped; a cancellation while it starts kills it instead of leaking it.

    `create_subprocess_exec` may have started the process when the cancellation lands, and
    then nobody would ever kill it: a `journalctl --follow` would outlive the agent's loop.
    """
    starting = asyncio.ensure_future(
        asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL, **kwargs
        )
    )
    try:
        return await asyncio.shield(starting)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            proc = await starting
            proc.kill()
            await proc.communicate()
        raise


def journal_argv(host_root: Path, identifiers: Iterable[str] = IDENTIFIERS) -> list[str]:
    """`journalctl --follow -o json`, from now on, of the runtime identifiers in the host root's journal."""
    argv = ["journalctl", "--follow", "--no-pager", "-q", "-o", "json", "--lines", "0"]
    if str(host_root) != "/":
        argv += ["--root", str(host_root)]
    return argv + [f"SYSLOG_IDENTIFIER={i}" for i in identifiers]


def journal_entry(raw: bytes) -> tuple[str, datetime, int | None] | None:
    """(MESSAGE, time, PRIORITY) of one `journalctl -o json` line; None when it is not an entry."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    msg = doc.get("MESSAGE")
    if isinstance(msg, list):  # journald sends non-UTF-8 messages as a byte array
        msg = bytes(b & 0xFF for b in msg if isinstance(b, int)).decode("utf-8", "replace")
    if not isinstance(msg, str):
        return None
    try:
        when = datetime.fromtimestamp(int(doc["__REALTIME_TIMESTAMP"]) / 1e6, UTC)
    except (KeyError, TypeError, ValueError):
        when = datetime.now(UTC)
    prio = doc.get("PRIORITY")
    return msg, when, int(prio) if isinstance(prio, str) and prio.isdigit() else None


async def follow_journal(host_root: Path) -> AsyncGenerator[tuple[str, datetime, int | None], None]:
    """Entries of the runtime identifiers as journald gets them; ends when journalctl does."""
    try:
        proc = await spawn(journal_argv(host_root), stderr=asyncio.subprocess.DEVNULL, limit=4 << 20)
    except FileNotFoundError:
        log.warning("capture: journalctl not found: failures are seen from log files and state directories only")
        return
    assert proc.stdout is not None
    ended = False
    try:
        while True:
            try:
                raw = await proc.stdout.readline()
            except ValueError:  # one entry larger than the limit: skip it
                continue
            if not raw:
                ended = True
                break
            entry = journal_entry(raw)
            if entry is not None:
                yield entry
    finally:
        # journalctl that closed its output is exiting: wait for it, never kill it. `kill()`
        # polls the child first, which can reap it before asyncio's watcher thread does; the
        # watcher then logs "Unknown child process" and reports exit 255 instead of journalctl's.
        if not ended:
            with contextlib.suppress(ProcessLookupError):  # it may have exited on its own
                proc.kill()
        with contextlib.suppress(ProcessLookupError):
            await proc.communicate()  # to EOF: the pipes close now, not when the loop is gone
        if proc.returncode not in (0, -9):
            log.warning(
                "capture: journalctl --follow ended (exit %s): failures are seen from log files "
                "and state directories only",
                proc.returncode,
            )


class FileFollower:
    """New complete lines of the runtime's log files, from now on, across rotation and truncation.

    A rotated file is read to its end before the new one is opened, so lines written just
    before the rotation are not lost.
    """

    def __init__(self, host: HostRoot, paths: Iterable[str] = LOG_FILES) -> None:
        self.host = host
        self.paths = list(paths)
        self._open: dict[str, tuple[Any, int, bytes]] = {}  # node path -> (file, inode, partial line)
        for p in self.paths:
            self._reopen(p, at_end=True)

    def _reopen(self, path: str, at_end: bool) -> None:
        try:
            fh = self.host.open(path)  # one descriptor, walked inside the root
        except OSError:
            return
        if at_end:
            fh.seek(0, os.SEEK_END)
        self._open[path] = (fh, os.fstat(fh.fileno()).st_ino, b"")

    def poll(self) -> list[str]:
        """Lines written since the last poll (blocking I/O: run it in a thread)."""
        lines: list[str] = []
        for path in self.paths:
            state = self._open.get(path)
            if state is None:
                self._reopen(path, at_end=False)  # appeared since: everything in it is new
                state = self._open.get(path)
                if state is None:
                    continue
            fh, ino, partial = state
            # Bounded per poll: a file that appears whole or a burst is read over several polls,
            # and a "line" with no newline is kept to _MAX_LINE bytes, never grown without end.
            data = partial[-_MAX_LINE:] + fh.read(_READ_PER_POLL)
            try:
                st = self.host.stat(path)
                rotated = st.st_ino != ino
                truncated = not rotated and st.st_size < fh.tell()
            except OSError:
                rotated, truncated = True, False
            *complete, partial = data.split(b"\n")
            lines += [ln.decode("utf-8", "replace") for ln in complete if ln]
            if rotated or truncated:
                fh.close()
                del self._open[path]
                if partial:
                    lines.append(partial.decode("utf-8", "replace"))
                self._reopen(path, at_end=False)
                fresh = self._open.get(path)
                if fresh is not None:  # the new file's lines, in this same poll
                    nfh, nino, _ = fresh
                    *complete, rest = nfh.read(_READ_PER_POLL).split(b"\n")
                    lines += [ln.decode("utf-8", "replace") for ln in complete if ln]
                    self._open[path] = (nfh, nino, rest)
            else:
                self._open[path] = (fh, ino, partial)
        return lines

    def close(self) -> None:
        for fh, _, _ in self._open.values():
            fh.close()
        self._open.clear()
