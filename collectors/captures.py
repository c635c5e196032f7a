"""Capture bundles the node agent kept of failed sandboxes, and the record beside each.

The node agent writes a capture when a sandbox fails (see `kata_debug.agent.capture`): a
normal, already redacted bundle `<spool>/captures/<UTC time>-<sandbox prefix>.tar.gz`, and
next to it `<same name>.json`, the record `kata-debug captures` lists without opening the
tarball. This collector puts the captures of the `--since` window into the bundle, newest
first, so the evidence of a start that failed an hour ago travels with today's bundle.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import stat
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kata_debug.collectors.base import CollectContext, Collector, CollectorOutput, CollectorSkipped
from kata_debug.node.paths import CAPTURES_SUBDIR, TRACE_SPOOL_DIR

SUFFIX = ".tar.gz"


@dataclass
class CaptureRecord:
    """What one capture is about: the sidecar `<id minus .tar.gz>.json`, and the manifest's `trigger`."""

    id: str  # the capture's file name
    time: str  # ISO 8601 UTC: when the failure was seen
    sandbox: str
    reason: str  # error-line | vanished | diagnose
    line: str | None  # the log line that triggered it (None for `vanished`)
    pod: str | None = None  # namespace/name from the sandbox's OCI annotations
    top_finding: str | None = None
    bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: Any, name: str) -> CaptureRecord:
        """The record from a sidecar's JSON; ValueError names what is wrong."""
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        try:
            when = str(doc["time"])
            datetime.fromisoformat(when)  # `when` is read later, outside any guard: checked here
        except KeyError as exc:
            raise ValueError(f"no {exc.args[0]!r} field") from None
        except ValueError:
            raise ValueError(f"'time' is no ISO 8601 time: {when[:40]!r}") from None
        try:
            return cls(
                id=name,
                time=when,
                sandbox=str(doc["sandbox"]),
                reason=str(doc["reason"]),
                line=None if doc.get("line") is None else str(doc["line"]),
                pod=None if doc.get("pod") is None else str(doc["pod"]),
                top_finding=None if doc.get("top_finding") is None else str(doc["top_finding"]),
                bytes=int(doc.get("bytes") or 0),
            )
        except KeyError as exc:
            raise ValueError(f"no {exc.args[0]!r} field") from None

    @property
    def when(self) -> datetime:
        t = datetime.fromisoformat(self.time)
        return t if t.tzinfo else t.replace(tzinfo=UTC)


def sidecar(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(SUFFIX) + ".json")


def list_captures(directory: Path) -> list[CaptureRecord]:
    """Every finished capture in `directory`, newest first (blocking I/O).

    A capture whose sidecar is missing or unreadable is still listed, with what its name
    says (time and sandbox prefix) and `reason` "unknown": the tarball is the evidence.
    """
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return []
    try:
        return list_captures_at(fd)
    finally:
        os.close(fd)


def list_captures_at(dir_fd: int) -> list[CaptureRecord]:
    """`list_captures` of a directory held open (a node directory walked inside the host root).

    Entries are looked at and sidecars read relative to the descriptor, never following a
    link: captures and records are regular files the agent wrote, and a symlink planted in
    their place (or swapped in while we list) is skipped, not followed out of the root.
    """
    records: list[CaptureRecord] = []
    for name in os.listdir(dir_fd):
        if not name.endswith(SUFFIX) or name.startswith(".") or "/" in name:
            continue
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        try:
            rec = CaptureRecord.from_json(json.loads(_read_sidecar(dir_fd, sidecar(Path(name)).name)), name)
        except (OSError, ValueError):
            rec = _from_name(name)
        rec.bytes = st.st_size
        records.append(rec)
    records.sort(key=lambda r: (r.time, r.id), reverse=True)
    return records


def _read_sidecar(dir_fd: int, name: str) -> bytes:
    """A record's bytes (at most 1 MiB) if it is a regular file in the directory; OSError if not."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", name)
        return fh.read(1 << 20)


def _from_name(name: str) -> CaptureRecord:
    stamp, _, sid = name.removesuffix(SUFFIX).partition("-")
    try:
        when = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).isoformat()
    except ValueError:
        when = datetime.fromtimestamp(0, UTC).isoformat()
    return CaptureRecord(id=name, time=when, sandbox=sid, reason="unknown", line=None)


class CapturesCollector(Collector):
    name = "captures"
    summary = "capture bundles the node agent kept of failed sandboxes (newest first, within --since)"
    reads = (f"{TRACE_SPOOL_DIR}/{CAPTURES_SUBDIR}/*.tar.gz and their .json records",)

    async def collect(self, ctx: CollectContext, out: CollectorOutput) -> None:
        if ctx.redactor.hosts is not None:
            # Captures are compressed bundles written by the agent: their text cannot be given
            # pseudonyms without unpacking them, so they stay out rather than leak originals.
            raise CollectorSkipped("--obfuscate-hosts: capture bundles are compressed and cannot be pseudonymised")
        node_dir = f"{ctx.options.trace_spool_dir.rstrip('/')}/{CAPTURES_SUBDIR}"

        def listing() -> list[CaptureRecord] | None:
            try:
                with ctx.host.open_dir(node_dir) as d:
                    return list_captures_at(d.fd)
            except (FileNotFoundError, NotADirectoryError):
                return None

        records = await asyncio.to_thread(listing)
        if records is None:
            raise CollectorSkipped(f"no captures directory {node_dir} (the node agent has not captured anything)")
        since = ctx.since_time
        kept: list[dict[str, Any]] = []
        budget = ctx.max_log_bytes
        left_out = 0
        for rec in records:
            if rec.when < since:
                continue
            if rec.bytes > budget:
                left_out += 1
                continue
            # Already redacted when the agent wrote it, and compressed: copied as it is.
            if await out.add_host_file(rec.id, f"{node_dir}/{rec.id}", redact=False):
                budget -= rec.bytes
                kept.append(rec.to_json())
        await out.add_json(
            "index.json",
            {
                "since": since.isoformat(),
                "captures": kept,
                "left_out_over_cap": left_out,
                "missing": [] if kept else ["no capture within --since"],
            },
            redact=False,
        )
