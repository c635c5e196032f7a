"""Shim, runtime and containerd/CRI-O logs: raw, parsed, and one file per sandbox.

Kata's shim logs to journald under the identifier `kata` (runtime-rs: also `kata`, with
`name=kata-runtime`); k3s-style distributions write containerd's log, shim lines included,
to a file instead. Each source is capped keeping the newest lines, because the lines just
before a failure are the ones that explain it. Lines that name a sandbox are also gathered
per sandbox so a maintainer can read one pod's story in order.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import IO, Any

from kata_debug.bundle import Spool
from kata_debug.logfmt import parse_line, sandbox_of
from kata_debug.redact import Redactor, StreamRedactor

from .base import CollectContext, Collector, CollectorOutput

IDENTIFIERS = ("kata", "kata-runtime", "containerd", "crio")
JOURNAL_DIRS = ("/var/log/journal", "/run/log/journal")
LOG_FILES = (
    "/var/log/containerd.log",
    "/var/log/containerd/containerd.log",
    "/var/lib/rancher/k3s/agent/containerd/containerd.log",
    "/var/lib/rancher/rke2/agent/containerd/containerd.log",
    "/var/log/crio.log",
    "/var/log/crio/crio.log",
)
_BATCH = 1 << 20
_MAX_SANDBOXES = 512
_SANDBOX_FIELD = re.compile(rb'sandbox="?([A-Za-z0-9][A-Za-z0-9_.-]*)')


@dataclass
class PerSandbox:
    """Per-sandbox spools, each capped like any other source."""

    cap: int
    spools: dict[str, Spool] = field(default_factory=dict)
    overflow: int = 0

    def write(self, sid: str, lines: bytes) -> None:
        spool = self.spools.get(sid)
        if spool is None:
            if len(self.spools) >= _MAX_SANDBOXES:
                self.overflow += 1
                return
            spool = self.spools[sid] = Spool(self.cap)
        spool.write(lines if lines.endswith(b"\n") else lines + b"\n")


@dataclass
class SourceStats:
    source: str
    lines: int = 0
    bytes: int = 0
    error: str | None = None


def _journal_message(entry: dict[str, Any]) -> str:
    msg = entry.get("MESSAGE", "")
    if isinstance(msg, list):  # journald exports non-UTF-8 messages as byte arrays
        return bytes(b & 0xFF for b in msg if isinstance(b, int)).decode("utf-8", "replace")
    return str(msg)


def _split_journal(raw: IO[bytes], ident: str, text: Spool, parsed: Spool, per_sandbox: PerSandbox,
                   redactor: Redactor, stats: SourceStats) -> None:
    """journalctl -o json lines -> readable log, parsed JSON lines, per-sandbox lines."""
    redact, redact_parsed = redactor.stream(), redactor.stream()
    text_buf: list[bytes] = []
    parsed_buf: list[bytes] = []
    size = 0

    def flush() -> None:
        nonlocal size
        if not text_buf:
            return
        text.write(redact.feed(b"".join(text_buf)))
        parsed.write(redact_parsed.feed(b"".join(parsed_buf)))
        text_buf.clear()
        parsed_buf.clear()
        size = 0

    for raw_line in raw:
        try:
            entry = json.loads(raw_line)
        except ValueError:
            continue
        if not isinstance(entry, dict):
            continue
        message = _journal_message(entry)
        try:
            ts = datetime.fromtimestamp(int(entry.get("__REALTIME_TIMESTAMP", 0)) / 1e6, timezone.utc)
        except (TypeError, ValueError, OverflowError):
            ts = datetime.fromtimestamp(0, timezone.utc)
        pid = entry.get("_PID", "")
        line = f"{ts.isoformat()} {entry.get('_HOSTNAME', '-')} {ident}[{pid}]: {message}\n".encode("utf-8", "replace")
        fields = parse_line(message)
        row = {"ts": ts.isoformat(), "identifier": ident, "pid": pid, "priority": entry.get("PRIORITY"),
               "message": message, "fields": fields}
        text_buf.append(line)
        parsed_buf.append(json.dumps(row, ensure_ascii=False).encode("utf-8", "replace") + b"\n")
        stats.lines += 1
        stats.bytes += len(line)
        size += len(line)
        sid = sandbox_of(fields)
        if sid:
            per_sandbox.write(sid, redactor.bytes(line))
        if size >= _BATCH:
            flush()
    flush()


def _copy_file(path: str, real_path: str, cap: int, out_spool: Spool, per_sandbox: PerSandbox,
               redact: StreamRedactor, stats: SourceStats) -> int:
    """Copy the newest `cap` bytes of a log file, redacted; gather sandbox lines. Returns bytes skipped."""
    skipped = 0
    with open(real_path, "rb") as src:
        size = os.fstat(src.fileno()).st_size
        if size > cap:
            src.seek(size - cap - 1)
            src.readline()
            skipped = src.tell()
        while chunk := src.read(_BATCH):
            chunk += src.readline()
            chunk = redact.feed(chunk)
            out_spool.write(chunk)
            stats.bytes += len(chunk)
            stats.lines += chunk.count(b"\n")
            _sandbox_lines(chunk, per_sandbox)
    return skipped


def _sandbox_lines(chunk: bytes, per_sandbox: PerSandbox) -> None:
    """Gather lines naming a sandbox, grouped per sandbox, one write per group.

    Go shim lines carry `sandbox=<id>`: a literal-prefixed regex finds those at C speed.
    Only chunks with runtime-rs/JSON shapes pay for the full line parser.
    """
    groups: dict[bytes, list[bytes]] = {}
    last = -1
    for m in _SANDBOX_FIELD.finditer(chunk):
        start = chunk.rfind(b"\n", 0, m.start()) + 1
        if start == last:
            continue
        last = start
        end = chunk.find(b"\n", m.end())
        end = len(chunk) if end < 0 else end + 1
        groups.setdefault(m.group(1), []).append(chunk[start:end])
    if b"kata-runtime" in chunk or b'"sandbox"' in chunk:
        for line in chunk.splitlines(keepends=True):
            if b"sandbox=" not in line and (b"kata-runtime" in line or b'"sandbox"' in line):
                sid = sandbox_of(parse_line(line.decode("utf-8", "replace")))
                if sid:
                    groups.setdefault(sid.encode(), []).append(line)
    for sid, lines in groups.items():
        per_sandbox.write(sid.decode("utf-8", "replace"), b"".join(lines))


class ShimLogsCollector(Collector):
    name = "shim-logs"
    summary = "journald entries of kata, kata-runtime, containerd, crio (raw + parsed + per sandbox) and containerd/CRI-O log files"
    reads = (*(f"journalctl -o json -t {i}" for i in IDENTIFIERS), *JOURNAL_DIRS, *LOG_FILES)

    async def collect(self, ctx: CollectContext, out: CollectorOutput) -> None:
        per_sandbox = PerSandbox(ctx.max_log_bytes)
        sources: list[SourceStats] = []
        missing: list[str] = []
        journal_dirs = [d for d in JOURNAL_DIRS if ctx.host.listdir(d)]
        try:
            if not journal_dirs:
                missing.append("no journal files under " + " or ".join(JOURNAL_DIRS))
            else:
                for ident in IDENTIFIERS:
                    sources.append(await self._journal(ctx, out, ident, per_sandbox))
            # One file at a time: the bundle writer compresses file N while file N+1 is
            # redacted and split, which keeps both cores busy.
            for path in LOG_FILES:
                real = ctx.host.resolve(path)
                if real.is_file():
                    sources.append(await self._file(ctx, out, path, str(real), per_sandbox))
            split = sorted(per_sandbox.spools)
            while per_sandbox.spools:
                sid = min(per_sandbox.spools)
                await out.add_spool(f"sandboxes/{sid}.log", per_sandbox.spools.pop(sid))
        finally:
            for spool in per_sandbox.spools.values():
                spool.close()
        if any(s.error == "journalctl not found" for s in sources):
            missing.append("journalctl not available")
        await out.add_json("summary.json", {
            "since": ctx.since_time.isoformat(),
            "cap_bytes": ctx.max_log_bytes,
            "journal_dirs": journal_dirs,
            "sources": [s.__dict__ for s in sources],
            "sandboxes": split,
            "sandboxes_not_split": per_sandbox.overflow,
            "truncated": out.truncated,
            "missing": missing,
        })

    async def _journal(self, ctx: CollectContext, out: CollectorOutput, ident: str, per_sandbox: PerSandbox) -> SourceStats:
        stats = SourceStats(source=f"journal:{ident}")
        argv = ["journalctl", "-o", "json", "--no-pager", "--since", f"@{int(ctx.since_time.timestamp())}", "-t", ident]
        if str(ctx.host.root) != "/":
            argv[1:1] = ["--root", str(ctx.host.root)]
        raw = tempfile.TemporaryFile(prefix="kata-debug-journal-")
        try:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv, stdout=raw, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
            except FileNotFoundError:
                stats.error = "journalctl not found"
                return stats
            try:
                _, err = await asyncio.wait_for(proc.communicate(), ctx.command_timeout * 3)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            if proc.returncode != 0:
                stats.error = f"journalctl exit {proc.returncode}: {err.decode(errors='replace').strip()[:300]}"
                out.item_failed(f"journal:{ident}", stats.error)
                return stats
            raw.seek(0)
            text, parsed = out.spool(ctx.max_log_bytes), out.spool(ctx.max_log_bytes)
            try:
                await asyncio.to_thread(_split_journal, raw, ident, text, parsed, per_sandbox,
                                        ctx.redactor, stats)
            except BaseException:
                text.close()
                parsed.close()
                raise
            if stats.lines == 0:  # nothing logged under this identifier: say so in summary only
                text.close()
                parsed.close()
                return stats
            await out.add_spool(f"journal/{ident}.log", text)
            await out.add_spool(f"journal/{ident}.parsed.jsonl", parsed)
            return stats
        finally:
            raw.close()

    async def _file(self, ctx: CollectContext, out: CollectorOutput, path: str, real: str, per_sandbox: PerSandbox) -> SourceStats:
        stats = SourceStats(source=f"file:{path}")
        spool = out.spool()
        try:
            skipped = await asyncio.to_thread(
                _copy_file, path, real, ctx.max_log_bytes, spool, per_sandbox, ctx.redactor.stream(), stats)
        except OSError as exc:
            spool.close()
            stats.error = exc.strerror or str(exc)
            out.item_failed(path, stats.error)
            return stats
        name = "files" + path
        await out.add_spool(name, spool)
        if skipped:
            out.truncated[f"{out.collector}/{name}"] = skipped
        return stats
