"""Send each capture to a support endpoint (`node-agent --capture-upload URL`), in the background.

A capture is evidence the operator wants off the node before the size ring removes it, but
the endpoint may be down, slow or refusing for hours; none of that may delay the next
capture. So uploads have a queue and a task of their own (one upload at a time, so a burst
of captures does not become a burst of connections) and capturing only adds to the queue.

The queue lives on disk, as marker files next to each capture, so an agent restarted mid-way
(a node drain, a DaemonSet rollout) resumes it and never sends a capture twice:

* `<capture stem>.upload`: pending. Written before the capture is renamed into place (a
  capture committed while uploads are on is never missed); holds the attempts made so far
  and the last error.
* `<capture stem>.uploaded`: sent. Written (atomically) when the endpoint accepted it; the
  pending marker is removed after it, so a crash in between still counts as sent.

A failed attempt (any error: connection refused, 5xx, 403) is logged as one line and retried
later with exponential backoff (capped), for as long as the capture exists: the size ring
removing a capture drops it from the queue. The bearer token comes from the same
`KATA_DEBUG_UPLOAD_TOKEN` variable `kata-debug upload` reads (from a Secret in the DaemonSet).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from kata_debug.errors import UsageError
from kata_debug.upload import TOKEN_ENV, UploadError, UploadResult, UploadTarget, display_url, parse_target, upload_file

log = logging.getLogger("kata_debug.agent.upload")

CAPTURE_SUFFIX = ".tar.gz"
PENDING = ".upload"
DONE = ".uploaded"
#: `{name}` in the URL is replaced by the capture's file name (each capture to its own object).
NAME_FIELD = "{name}"
BACKOFF_INITIAL = 10.0
BACKOFF_MAX = 900.0
#: Seconds without progress before an attempt fails: a hung endpoint holds the queue no longer.
ATTEMPT_TIMEOUT = 60.0
_MARKER_BYTES = 4096  # a marker is a few dozen bytes; anything bigger is not ours


def _stem(capture: Path) -> str:
    return capture.name.removesuffix(CAPTURE_SUFFIX)


def pending_marker(capture: Path) -> Path:
    return capture.with_name(_stem(capture) + PENDING)


def done_marker(capture: Path) -> Path:
    return capture.with_name(_stem(capture) + DONE)


def markers(capture: Path) -> tuple[Path, Path]:
    """Both upload markers of a capture: removed with it (the size ring, an orphan at start)."""
    return pending_marker(capture), done_marker(capture)


def parse_capture_target(url: str, environ: Mapping[str, str] = os.environ) -> UploadTarget:
    """Check `--capture-upload URL` at start-up; UsageError (one line) for anything unusable.

    A URL with `{name}` gets each capture PUT to its own address (an object store, a WebDAV
    folder); without it every capture is POSTed to the URL, its name in Content-Disposition.
    Credentials in the URL are refused outright: unlike a `kata-debug upload` command line,
    this URL sits in the DaemonSet spec, which many more people can read than the Secret.
    """
    parts = urlsplit(url.replace(NAME_FIELD, "capture"))
    if parts.scheme in ("http", "https") and (parts.username is not None or parts.password is not None):
        raise UsageError(
            f"--capture-upload {display_url(url)}: has credentials in the URL, which the DaemonSet spec would show; "
            f"put a token in ${TOKEN_ENV} (from a Secret) instead"
        )
    method = "PUT" if NAME_FIELD in url else "POST"
    try:
        target = parse_target(
            url.replace(NAME_FIELD, "capture"), method, retries=0, timeout=ATTEMPT_TIMEOUT, environ=environ
        )
    except UsageError as exc:
        raise UsageError(str(exc).replace("--upload ", "--capture-upload ", 1)) from None
    return replace(target, url=url)


def target_for(target: UploadTarget, name: str) -> UploadTarget:
    """The target one capture goes to: its name in the URL (`{name}`) or in Content-Disposition."""
    if NAME_FIELD in target.url:
        return replace(target, url=target.url.replace(NAME_FIELD, quote(name, safe="")))
    return replace(target, headers={**target.headers, "Content-Disposition": f'attachment; filename="{name}"'})


def _read_marker(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            doc = json.loads(fh.read(_MARKER_BYTES) or b"{}")
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _write_marker(path: Path, doc: Mapping[str, Any]) -> None:
    """Atomically (write, rename): a marker read after a crash is whole or absent."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc) + "\n")
    os.replace(tmp, path)


def mark_pending(capture: Path) -> None:
    """Queue a capture for upload (blocking I/O: call it from a thread)."""
    _write_marker(pending_marker(capture), {"attempts": 0})


def remove_markers(capture: Path) -> None:
    for m in markers(capture):
        with contextlib.suppress(FileNotFoundError):
            m.unlink()


def scan(directory: Path) -> dict[str, int]:
    """The pending uploads on disk (capture name -> attempts made), oldest first.

    Tidies as it goes: a pending marker next to a done one is stale (the agent stopped
    between the two writes), and a marker whose capture is gone is dropped.
    """
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return {}
    present = set(names)
    queue: dict[str, int] = {}
    for name in names:
        if name.startswith(".") or not name.endswith((PENDING, DONE)):
            continue
        stem = name.removesuffix(PENDING) if name.endswith(PENDING) else name.removesuffix(DONE)
        capture = directory / (stem + CAPTURE_SUFFIX)
        path = directory / name
        if capture.name not in present or (name.endswith(PENDING) and stem + DONE in present):
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        if name.endswith(PENDING):
            attempts = _read_marker(path).get("attempts", 0)
            queue[capture.name] = attempts if isinstance(attempts, int) and attempts >= 0 else 0
    return queue


def _record_done(capture: Path, result: UploadResult) -> None:
    doc = {
        "time": datetime.now(UTC).isoformat(),
        "url": result.url,
        "status": result.status,
        "bytes": result.bytes,
        "sha256": result.sha256,
    }
    _write_marker(done_marker(capture), doc)
    with contextlib.suppress(FileNotFoundError):
        pending_marker(capture).unlink()
    if not capture.exists():  # the ring removed it while it was being sent
        remove_markers(capture)


@dataclass
class UploadCounters:
    uploaded: int = 0
    failed_attempts: int = 0
    dropped: int = 0  # removed (size ring) before it could be sent

    def as_dict(self, pending: int) -> dict[str, int]:
        return {
            "uploaded": self.uploaded,
            "failed_attempts": self.failed_attempts,
            "dropped": self.dropped,
            "pending": pending,
        }


@dataclass
class _Pending:
    attempts: int
    due: float  # monotonic time of the next attempt


class CaptureUploader:
    """The upload queue of one captures directory; `run` until cancelled."""

    def __init__(
        self,
        directory: Path,
        target: UploadTarget,
        backoff_initial: float = BACKOFF_INITIAL,
        backoff_max: float = BACKOFF_MAX,
    ) -> None:
        self.dir = directory
        self.target = target
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.counters = UploadCounters()
        self.pending: dict[str, _Pending] = {}
        self._wake = asyncio.Event()

    def add(self, name: str) -> None:
        """A capture (already marked pending on disk) is ready: send it as soon as the queue allows."""
        self.pending[name] = _Pending(0, 0.0)
        self._wake.set()

    def forget(self, names: list[str]) -> None:
        """Captures the size ring removed: no longer to be sent (their markers went with them)."""
        for name in names:
            if self.pending.pop(name, None) is not None:
                self.counters.dropped += 1
                log.info("capture %s: removed by --capture-size before it was uploaded", name)

    def backoff(self, attempts: int) -> float:
        """Seconds before attempt `attempts + 1`: doubling from the first, capped, with jitter."""
        grown = self.backoff_initial * 2.0 ** min(max(attempts - 1, 0), 40)  # 2**40: past any cap, no overflow
        return min(self.backoff_max, grown) * random.uniform(0.8, 1.2)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for name, attempts in (await asyncio.to_thread(scan, self.dir)).items():
            self.pending.setdefault(name, _Pending(attempts, 0.0))  # resumed at once after a restart
        if self.pending:
            log.info("capture upload: %d capture(s) still to send to %s", len(self.pending), self.shown)
        while True:
            now = loop.time()
            due = [(p.due, name) for name, p in self.pending.items() if p.due <= now]
            if not due:
                self._wake.clear()
                wait = min((p.due for p in self.pending.values()), default=now + 3600) - now
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(0.0, wait))
                continue
            await self._attempt(min(due)[1])

    @property
    def shown(self) -> str:
        return display_url(self.target.url)

    async def _attempt(self, name: str) -> None:
        loop = asyncio.get_running_loop()
        path = self.dir / name
        entry = self.pending[name]
        if not await asyncio.to_thread(path.exists):
            self.forget([name])
            await asyncio.to_thread(remove_markers, path)
            return
        try:
            result = await upload_file(path, target_for(self.target, name))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # UploadError, or anything else: the queue goes on
            error = str(exc) if isinstance(exc, UploadError) else f"{type(exc).__name__}: {exc}"
            entry.attempts += 1
            delay = self.backoff(entry.attempts)
            entry.due = loop.time() + delay
            self.counters.failed_attempts += 1
            log.warning("capture %s: upload attempt %d failed, next in %.0fs: %s", name, entry.attempts, delay, error)
            doc = {"attempts": entry.attempts, "error": error[:500], "time": datetime.now(UTC).isoformat()}
            with contextlib.suppress(OSError):  # the capture and its marker may just have been removed
                if await asyncio.to_thread(path.exists):
                    await asyncio.to_thread(_write_marker, pending_marker(path), doc)
            return
        try:
            await asyncio.to_thread(_record_done, path, result)
        except OSError as exc:  # sent, but not recorded: it would be sent again after a restart
            log.warning("capture %s: uploaded but cannot record it: %s", name, exc.strerror or exc)
        self.pending.pop(name, None)
        self.counters.uploaded += 1
        log.info(
            "capture %s: uploaded to %s (HTTP %d, %d bytes, %.1fs); sha256 %s",
            name,
            result.url,
            result.status,
            result.bytes,
            result.seconds,
            result.sha256,
        )
