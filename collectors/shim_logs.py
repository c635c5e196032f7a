"""Shim, runtime and containerd/CRI-O logs: raw, parsed, and one file per sandbox.

Kata's shim logs to journald under the identifier `kata` (runtime-rs: also `kata`, with
`name=kata-runtime`); k3s-style distributions write containerd's log, shim lines included,
to a file instead. Each source is capped keeping the newest lines, because the lines just
before a failure are the ones that explain it. Lines that name a sandbox are also gathered
per sandbox so a maintainer can read one pod's story in order.

Redacting and splitting is pure Python on every byte; for large log files it runs in a
scanner process (`kata_debug.logs.scan_client`) so the bundle's compressor keeps its core.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

from kata_debug.bundle.deflate_ahead import DeflateAhead
from kata_debug.bundle.writer import Spool
from kata_debug.collectors.base import CollectContext, Collector, CollectorOutput
from kata_debug.logs.logfmt import parse_line, sandbox_of
from kata_debug.logs.scan import BATCH, PerSandbox, SourceStats, copy_log
from kata_debug.logs.scan_client import Progress, ScannerGone, ScannerProcess
from kata_debug.logs.since import first_offset_since
from kata_debug.node.hostroot import HostRoot, open_regular
from kata_debug.redact.redactor import Redactor

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
# Below this many bytes of log files to read, a scanner process costs more than it saves.
SCANNER_MIN_BYTES = 16 << 20


def _journal_message(entry: dict[str, Any]) -> str:
    msg = entry.get("MESSAGE", "")
    if isinstance(msg, list):  # journald exports non-UTF-8 messages as byte arrays
        return bytes(b & 0xFF for b in msg if isinstance(b, int)).decode("utf-8", "replace")
    return str(msg)


def _split_journal(
    raw: IO[bytes],
    ident: str,
    text: Spool,
    parsed: Spool,
    per_sandbox: PerSandbox,
    redactor: Redactor,
    stats: SourceStats,
) -> None:
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
            ts = datetime.fromtimestamp(int(entry.get("__REALTIME_TIMESTAMP", 0)) / 1e6, UTC)
        except (TypeError, ValueError, OverflowError):
            ts = datetime.fromtimestamp(0, UTC)
        pid = entry.get("_PID", "")
        line = f"{ts.isoformat()} {entry.get('_HOSTNAME', '-')} {ident}[{pid}]: {message}\n".encode("utf-8", "replace")
        fields = parse_line(message)
        row = {
            "ts": ts.isoformat(),
            "identifier": ident,
            "pid": pid,
            "priority": entry.get("PRIORITY"),
            "message": message,
            "fields": fields,
        }
        text_buf.append(line)
        parsed_buf.append(json.dumps(row, ensure_ascii=False).encode("utf-8", "replace") + b"\n")
        stats.lines += 1
        stats.bytes += len(line)
        size += len(line)
        sid = sandbox_of(fields)
        if sid:
            per_sandbox.write(sid, redactor.bytes(line))
        if size >= BATCH:
            flush()
    flush()


class ShimLogsCollector(Collector):
    name = "shim-logs"
    summary = "journald entries of kata, kata-runtime, containerd, crio (raw + parsed + per sandbox) and containerd/CRI-O log files"
    reads = (
        *(f"journalctl -o json -t {i}" for i in IDENTIFIERS),
        *JOURNAL_DIRS,
        *LOG_FILES,
        *(f"{p}.<N> (rotated)" for p in LOG_FILES),
    )

    async def collect(self, ctx: CollectContext, out: CollectorOutput) -> None:
        per_sandbox: PerSandbox[Spool] = PerSandbox(lambda sid: Spool(ctx.max_log_bytes))
        sources: list[SourceStats] = []
        missing: list[str] = []
        journal_dirs = [d for d in JOURNAL_DIRS if await asyncio.to_thread(ctx.host.listdir, d)]
        files = await asyncio.to_thread(_log_files, ctx)
        scanner: ScannerProcess | None = None
        ahead: DeflateAhead | None = None
        if sum(f.cap for f in files) >= SCANNER_MIN_BYTES:
            scanner = await ScannerProcess.start()  # its start-up overlaps the journal reads
        try:
            if not journal_dirs:
                missing.append("no journal files under " + " or ".join(JOURNAL_DIRS))
            else:
                for ident in IDENTIFIERS:
                    sources.append(await self._journal(ctx, out, ident, per_sandbox))
            if scanner is None:
                for f in files:
                    sources.append(await self._file(ctx, out, f, per_sandbox))
            else:
                if out.deflate_level is not None:
                    ahead = await asyncio.to_thread(DeflateAhead, out.deflate_level, _ahead_threads())
                sources += await self._scanned(ctx, out, files, per_sandbox, scanner, ahead)
            scanned = scanner.sandbox_files if scanner else {}
            split = sorted(per_sandbox.sinks.keys() | scanned.keys())
            for sid in split:
                journal = per_sandbox.sinks.pop(sid, None)
                if sid in scanned:
                    assert scanner is not None
                    await self._add_scanned_sandbox(ctx, out, sid, journal, scanner, ahead)
                else:
                    assert journal is not None
                    await out.add_spool(f"sandboxes/{sid}.log", journal)
        finally:
            for spool in per_sandbox.sinks.values():
                spool.close()
            if ahead is not None:
                await ahead.close()
            if scanner is not None:
                await scanner.close()
        if any(s.error == "journalctl not found" for s in sources):
            missing.append("journalctl not available")
        await out.add_json(
            "summary.json",
            {
                "since": ctx.since_time.isoformat(),
                "cap_bytes": ctx.max_log_bytes,
                "journal_dirs": journal_dirs,
                "sources": [s.__dict__ for s in sources],
                "sandboxes": split,
                "sandboxes_not_split": per_sandbox.overflow,
                "truncated": out.truncated,
                "missing": missing,
            },
        )

    async def _journal(
        self, ctx: CollectContext, out: CollectorOutput, ident: str, per_sandbox: PerSandbox
    ) -> SourceStats:
        stats = SourceStats(source=f"journal:{ident}")
        argv = ["journalctl", "-o", "json", "--no-pager", "--since", f"@{int(ctx.since_time.timestamp())}", "-t", ident]
        if str(ctx.host.root) != "/":
            argv[1:1] = ["--root", str(ctx.host.root)]
        raw = await asyncio.to_thread(tempfile.TemporaryFile, "w+b", prefix="kata-debug-journal-")
        try:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv, stdout=raw, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL
                )
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
                await asyncio.to_thread(_split_journal, raw, ident, text, parsed, per_sandbox, ctx.redactor, stats)
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

    async def _file(
        self, ctx: CollectContext, out: CollectorOutput, f: LogFile, per_sandbox: PerSandbox[Spool]
    ) -> SourceStats:
        stats = SourceStats(source=f"file:{f.path}")
        spool = out.spool()
        try:
            skipped = await asyncio.to_thread(copy_log, f.real, f.cap, spool, per_sandbox, ctx.redactor.stream(), stats)
        except OSError as exc:
            spool.close()
            stats.error = exc.strerror or str(exc)
            out.item_failed(f.path, stats.error)
            return stats
        await self._add_file(out, f, spool, skipped)
        return stats

    async def _scanned(
        self,
        ctx: CollectContext,
        out: CollectorOutput,
        files: list[LogFile],
        per_sandbox: PerSandbox[Spool],
        scanner: ScannerProcess,
        ahead: DeflateAhead | None,
    ) -> list[SourceStats]:
        """The log files, redacted and split by the scanner process while this one compresses.

        What the scanner has written is deflated ahead (`ahead`) as it goes, so compressing
        the redacted copies and the per-sandbox lines overlaps the scan instead of following
        it; each file goes into the bundle as soon as the scanner is done with it.
        """
        sources = [SourceStats(source=f"file:{f.path}") for f in files]
        journal_sids = set(per_sandbox.sinks)  # their lines join journal spools: not deflated ahead
        done = 0

        def progress(p: Progress) -> None:
            assert ahead is not None
            if p.output is not None:
                ahead.grow(("file", done), p.output, p.size)
            for sid, (path, size) in p.sandboxes.items():
                if sid in journal_sids:
                    continue
                if size > ctx.max_log_bytes:  # will be cut to its newest lines: added as a spool
                    ahead.drop(("sandbox", sid))
                else:
                    ahead.grow(("sandbox", sid), path, size)

        try:
            await scanner.send([(f.real, f.cap) for f in files], present=journal_sids, redact=ctx.redactor.enabled)
            for f, stats in zip(files, sources):
                path = f.path
                result = await scanner.next_file(progress if ahead is not None else None)
                key = ("file", done)
                done += 1
                ctx.redactor.add_counts(result.redactions)
                per_sandbox.overflow += result.overflow
                stats.lines, stats.bytes, stats.error = result.lines, result.bytes, result.error
                if result.output is None:
                    out.item_failed(path, result.error or "not read")
                    if ahead is not None:
                        ahead.drop(key)
                    continue
                name = "files" + path
                if not await self._add_deflated(out, name, ahead, key, result.output, result.size):
                    await out.add_spool(name, await scanner.adopt(result.output))
                _record_cut(out, name, f, result.skipped)
            await scanner.finish()
        except ScannerGone as exc:
            for f, stats in list(zip(files, sources))[done:]:
                stats.error = str(exc)
                out.item_failed(f.path, str(exc))
            if done == len(files):
                out.item_failed("log scanner", str(exc))
        return sources

    async def _add_scanned_sandbox(
        self,
        ctx: CollectContext,
        out: CollectorOutput,
        sid: str,
        journal: Spool | None,
        scanner: ScannerProcess,
        ahead: DeflateAhead | None,
    ) -> None:
        """One sandbox's lines from the scanned files, after its journal lines if it has any."""
        name = f"sandboxes/{sid}.log"
        key = ("sandbox", sid)
        size = scanner.sandbox_sizes.get(sid, 0)
        if journal is None and size <= ctx.max_log_bytes:
            if await self._add_deflated(out, name, ahead, key, scanner.sandbox_files[sid], size):
                return
        elif ahead is not None:
            ahead.drop(key)
        spool = await scanner.take_sandbox(sid, ctx.max_log_bytes)
        if journal is not None:
            try:
                await asyncio.to_thread(_append, journal, spool)  # journal lines first, as one spool had them
            except BaseException:
                journal.close()
                raise
            spool = journal
        await out.add_spool(name, spool)

    async def _add_deflated(
        self, out: CollectorOutput, name: str, ahead: DeflateAhead | None, key: object, path: str, size: int
    ) -> bool:
        """Add content deflated ahead; False (nothing added) when it was not."""
        if ahead is None:
            return False
        try:
            deflated = await ahead.finish(key, path, size)
        except OSError:
            return False
        await out.add_deflated(name, deflated.size, deflated.sha256, ahead.members(deflated))
        return True

    async def _add_file(self, out: CollectorOutput, f: LogFile, spool: Spool, skipped: int) -> None:
        name = "files" + f.path
        await out.add_spool(name, spool)
        _record_cut(out, name, f, skipped)


def _record_cut(out: CollectorOutput, name: str, f: LogFile, skipped: int) -> None:
    """Truncation is what the size cap left out; entries older than `--since` were not asked for."""
    cut = skipped - f.before_since
    if cut > 0:
        out.truncated[f"{out.collector}/{name}"] = cut


@dataclass(frozen=True)
class LogFile:
    """A log file on the node, and how much of its end to read."""

    path: str  # node path
    real: str
    size: int
    #: Bytes before the first entry within `--since` (not read; not "truncated" either).
    before_since: int
    #: Bytes to read from the end: the newest within `--since`, at most the size cap.
    cap: int


def _with_rotations(host: HostRoot, path: str) -> list[tuple[str, bool]]:
    """`path`'s uncompressed rotations (`name.1`, `name.2`, ...) oldest first, then `path`.

    (node path, is a rotation). logrotate's compressed `.gz` rotations are left out: their
    text cannot be redacted without unpacking them.
    """
    directory, _, name = path.rpartition("/")
    prefix = name + "."
    numbers = sorted(
        (
            int(n[len(prefix) :])
            for n in host.listdir(directory or "/")
            if n.startswith(prefix) and n[len(prefix) :].isdigit()
        ),
        reverse=True,
    )
    return [(f"{directory}/{prefix}{n}", True) for n in numbers] + [(path, False)]


def _log_files(ctx: CollectContext) -> list[LogFile]:
    """The log files present on the node, each bounded by `--since` and the size cap.

    A rotation whose entries are all older than `--since` is left out altogether.
    """
    found = []
    for base in LOG_FILES:
        for path, rotated in _with_rotations(ctx.host, base):
            real = ctx.host.resolve(path)
            try:
                with open_regular(real) as fh:
                    size = os.fstat(fh.fileno()).st_size
                    before = first_offset_since(fh, size, ctx.since_time)
            except OSError:
                continue
            if rotated and before >= size:
                continue
            found.append(LogFile(path, str(real), size, before, min(ctx.max_log_bytes, size - before)))
    return found


def _ahead_threads() -> int:
    """Deflate-ahead threads: the scanner process keeps one core busy, they get the rest."""
    return max(1, min(4, (os.cpu_count() or 1) - 1))


def _append(spool: Spool, more: Spool) -> None:
    """Copy one spool's content to the end of another, closing the source."""
    try:
        more.file.seek(0)
        while block := more.file.read(BATCH):
            spool.write(block)
    finally:
        more.close()
