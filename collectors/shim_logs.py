"""Shim, runtime, containerd/CRI-O and kubelet logs, and the kernel's: each stored once.

Kata's shim logs to journald under the identifier `kata` (runtime-rs: also `kata`, with
`name=kata-runtime`); k3s-style distributions write containerd's log, shim lines included,
to a file instead. Each source is capped keeping the newest lines, because the lines just
before a failure are the ones that explain it.

Every log is stored once, redacted. The per-sandbox view is an index (`sandboxes.json`:
per sandbox, per log member, how many lines name it and where the first and last are), not
a second copy: bundles go to vendors and tickets, and a copy per view made them twice the
size of the logs themselves. Parsed views are `diagnose`'s job, on demand.

Redacting and indexing is pure Python on every byte; for large log files it runs in a
scanner process (`kata_debug.logs.scan_client`) so the bundle's compressor keeps its core.

Each log file is opened once, component by component inside the host root (`HostRoot.open`),
and that descriptor is what is measured, filtered, copied, or handed to the scanner process:
a log swapped for a symlink while we work can never lead a read outside the root.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import BinaryIO

from kata_debug.bundle.deflate_ahead import DeflateAhead
from kata_debug.collectors.base import CollectContext, Collector, CollectorOutput
from kata_debug.logs.journal import forward_blocks, journalctl_argv, lead_in_forward, read_reverse
from kata_debug.logs.nodelogs import (
    NodeZone,
    audit_stamp,
    filter_audit,
    filter_window,
    klog_stamp,
    node_zone,
    syslog_filter,
    syslog_stamp,
)
from kata_debug.logs.scan import SandboxIndex, SourceStats, copy_log, write_indexed
from kata_debug.logs.scan_client import Progress, ScannerGone, ScannerProcess
from kata_debug.logs.since import Stamp, first_offset_since, line_time
from kata_debug.node.hostroot import HostRoot

IDENTIFIERS = ("kata", "kata-runtime", "containerd", "crio", "kubelet")
JOURNAL_DIRS = ("/var/log/journal", "/run/log/journal")
JOURNAL_MEMBER = "journal/journal.log"
LOG_FILES = (
    "/var/log/containerd.log",
    "/var/log/containerd/containerd.log",
    "/var/lib/rancher/k3s/agent/containerd/containerd.log",
    "/var/lib/rancher/rke2/agent/containerd/containerd.log",
    "/var/log/crio.log",
    "/var/log/crio/crio.log",
)
#: The node's own logs (see `kata_debug.logs.nodelogs`): path and how to read it. `kernel`
#: and `klog` are stored whole within `--since`; `syslog` keeps only the kernel's and
#: IDENTIFIERS' lines, `audit` only AVC events (proctitle decoded).
NODE_LOGS = (
    ("/var/log/kern.log", "kernel"),
    ("/var/log/syslog", "syslog"),
    ("/var/log/messages", "syslog"),
    ("/var/log/kubelet.log", "klog"),
    ("/var/log/audit/audit.log", "audit"),
)
#: Rotations read per log, the newest: each is held open from measuring to copying, so a node
#: with thousands of `kern.log.N` cannot exhaust our descriptors (logrotate keeps 4-52).
MAX_ROTATIONS = 64
# Below this many bytes of log files to read, a scanner process costs more than it saves.
SCANNER_MIN_BYTES = 16 << 20


class ShimLogsCollector(Collector):
    name = "shim-logs"
    summary = (
        "journald entries of kata, kata-runtime, containerd, crio, kubelet and the kernel (one time-ordered, "
        "redacted log, newest first up to the cap) and containerd/CRI-O log files, each stored once with a "
        "per-sandbox line index"
    )
    reads = (
        "journalctl --reverse " + " ".join(f"SYSLOG_IDENTIFIER={i}" for i in IDENTIFIERS) + " + _TRANSPORT=kernel",
        *JOURNAL_DIRS,
        *LOG_FILES,
        *(f"{p}.<N> (rotated)" for p in LOG_FILES),
        *(p for p, _ in NODE_LOGS),
        *(f"{p}.<N> / {p}-<YYYYMMDD> (rotated)" for p, _ in NODE_LOGS),
        "/etc/localtime (the node's time zone, for syslog and klog stamps)",
    )

    async def collect(self, ctx: CollectContext, out: CollectorOutput) -> None:
        index = SandboxIndex()
        sources: list[SourceStats] = []
        missing: list[str] = []
        journal_dirs = [d for d in JOURNAL_DIRS if await asyncio.to_thread(ctx.host.listdir, d)]
        zone = await asyncio.to_thread(node_zone, ctx.host)
        files, unreadable = await asyncio.to_thread(_log_files, ctx, zone)
        scanner: ScannerProcess | None = None
        ahead: DeflateAhead | None = None
        filtered_dir: str | None = None
        try:
            if any(f.kind in _FILTERS for f in files):
                filtered_dir = await asyncio.to_thread(tempfile.mkdtemp, prefix="kata-debug-filtered-")
                files, failed = await asyncio.to_thread(_prefilter, files, filtered_dir, ctx.max_log_bytes)
                unreadable += failed
            for path, reason in unreadable:
                out.item_failed(path, reason)
                sources.append(SourceStats(source=f"file:{path}", error=reason))
            if sum(f.cap for f in files) >= SCANNER_MIN_BYTES:
                scanner = await ScannerProcess.start()  # its start-up overlaps the journal read
            if not journal_dirs:
                missing.append("no journal files under " + " or ".join(JOURNAL_DIRS))
            else:
                sources.append(await self._journal(ctx, out, index))
            if scanner is None:
                for f in files:
                    sources.append(await self._file(ctx, out, f, index))
            else:
                if out.deflate_level is not None:
                    ahead = await asyncio.to_thread(DeflateAhead, out.deflate_level, _ahead_threads())
                sources += await self._scanned(ctx, out, files, index, scanner, ahead)
        finally:
            await asyncio.to_thread(_close_all, files)
            if ahead is not None:
                await ahead.close()
            if scanner is not None:
                await scanner.close()
            if filtered_dir is not None:
                await asyncio.to_thread(shutil.rmtree, filtered_dir, True)
        if any(s.error == "journalctl not found" for s in sources):
            missing.append("journalctl not available")
        await out.add_json(
            "sandboxes.json",
            {
                "how_to_read": "per sandbox, per member: `grep -n -F <sandbox id> <member>` lists its lines",
                "sandboxes": index.to_json(),
                "lines_not_indexed": index.overflow,
                "lines_with_invalid_sandbox_ids": index.rejected,
            },
            redact=False,
        )
        await out.add_json(
            "summary.json",
            {
                "since": ctx.since_time.isoformat(),
                "node_time_zone": zone.name,
                # diagnose reads year-less syslog/klog stamps with this (the zone's name is
                # not always known: a mounted /etc/localtime is a file, not a link).
                "node_utc_offset_seconds": _utc_offset(zone),
                "cap_bytes": ctx.max_log_bytes,
                "journal_dirs": journal_dirs,
                "sources": [s.__dict__ for s in sources],
                "sandboxes": sorted(index.sandboxes),
                "sandboxes_not_indexed_lines": index.overflow,
                "lines_with_invalid_sandbox_ids": index.rejected,
                "truncated": out.truncated,
                "missing": missing,
            },
        )

    async def _journal(self, ctx: CollectContext, out: CollectorOutput, index: SandboxIndex) -> SourceStats:
        """The journal entries, newest first up to the cap, stored oldest first and redacted."""
        stats = SourceStats(source="journal:" + ",".join((*IDENTIFIERS, "_TRANSPORT=kernel")))
        argv = journalctl_argv(str(ctx.host.root), ctx.since_time, IDENTIFIERS, kernel=True)
        read = await read_reverse(argv, ctx.max_log_bytes, ctx.command_timeout * 3)
        if read.missing:
            stats.error = "journalctl not found"
            return stats
        if read.file is None:
            stats.error = read.error
            out.item_failed("journal", read.error or "not read")
            return stats
        fh = read.file
        spool = out.spool()
        stream = ctx.redactor.stream()
        member = f"{out.collector}/{JOURNAL_MEMBER}"

        def forward() -> None:
            stream.feed(lead_in_forward(read))  # state only: a key block the cap cut starts in here
            for block in forward_blocks(fh, read.size):
                write_indexed(stream.feed(block), spool, index, member, stats)

        try:
            await asyncio.to_thread(forward)
        except BaseException:
            spool.close()
            raise
        finally:
            await asyncio.to_thread(fh.close)
        if stats.lines == 0:  # nothing logged: say so in the summary only
            spool.close()
            return stats
        await out.add_spool(JOURNAL_MEMBER, spool)
        if read.capped:
            out.truncated[member] = read.cut
        return stats

    async def _file(self, ctx: CollectContext, out: CollectorOutput, f: LogFile, index: SandboxIndex) -> SourceStats:
        stats = SourceStats(source=f"file:{f.path}")
        spool = out.spool()
        member = f"{out.collector}/files{f.path}"
        try:
            skipped = await asyncio.to_thread(
                copy_log, f.file, f.cap, spool, index, member, ctx.redactor.stream(), stats
            )
        except OSError as exc:
            spool.close()
            stats.error = exc.strerror or str(exc)
            out.item_failed(f.path, stats.error)
            return stats
        name = "files" + f.path
        await out.add_spool(name, spool)
        _record_cut(out, name, f, skipped)
        return stats

    async def _scanned(
        self,
        ctx: CollectContext,
        out: CollectorOutput,
        files: list[LogFile],
        index: SandboxIndex,
        scanner: ScannerProcess,
        ahead: DeflateAhead | None,
    ) -> list[SourceStats]:
        """The log files, redacted and indexed by the scanner process while this one compresses.

        In a gzip bundle what the scanner has written is deflated ahead (`ahead`) as it
        goes, so compressing the redacted copies overlaps the scan instead of following it;
        each file goes into the bundle as soon as the scanner is done with it.
        """
        sources = [SourceStats(source=f"file:{f.path}") for f in files]
        done = 0

        def progress(p: Progress) -> None:
            assert ahead is not None
            if p.output is not None:
                ahead.grow(("file", done), p.output, p.size)

        try:
            await scanner.send(
                [(f.file, f.cap, f"{out.collector}/files{f.path}") for f in files],
                known=index.known,
                redact=ctx.redactor.enabled,
                rules=ctx.redactor.rules,
                hosts=ctx.redactor.hosts.spec() if ctx.redactor.hosts is not None else None,
            )
            await asyncio.to_thread(_close_all, files)  # the scanner holds its own copies
            for f, stats in zip(files, sources):
                path = f.path
                result = await scanner.next_file(progress if ahead is not None else None)
                key = ("file", done)
                done += 1
                ctx.redactor.add_counts(result.redactions)
                ctx.redactor.add_pseudonyms(result.pseudonyms)
                index.merge(result.index)
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


def _record_cut(out: CollectorOutput, name: str, f: LogFile, skipped: int) -> None:
    """Truncation is what the size cap left out; entries older than `--since` were not asked for."""
    cut = skipped - f.before_since
    if cut > 0:
        out.truncated[f"{out.collector}/{name}"] = cut


@dataclass(frozen=True)
class LogFile:
    """A log file on the node, open, and how much of its end to read."""

    path: str  # node path
    #: The file as opened inside the host root and measured; read only through this, never reopened.
    file: BinaryIO
    size: int
    #: Bytes before the first entry within `--since` (not read; not "truncated" either).
    before_since: int
    #: Bytes to read from the end: the newest within `--since`, at most the size cap.
    cap: int
    #: How its lines are stamped and chosen (NODE_LOGS), "" for the runtimes' logs.
    kind: str = ""


def _with_rotations(host: HostRoot, path: str) -> list[tuple[str, bool]]:
    """`path`'s uncompressed rotations oldest first, then `path`.

    (node path, is a rotation). Rotations are `name.1`, `name.2`, ... (logrotate, auditd:
    the higher, the older) or `name-YYYYMMDD` (logrotate's dateext, RHEL's default).
    logrotate's compressed `.gz` rotations are left out: their text cannot be redacted
    without unpacking them.
    """
    directory, _, name = path.rpartition("/")
    names = host.listdir(directory or "/")
    prefix = name + "."
    numbers = sorted(
        (int(n[len(prefix) :]) for n in names if n.startswith(prefix) and n[len(prefix) :].isdigit()),
        reverse=True,
    )
    dated = sorted(n for n in names if n.startswith(name + "-") and len(n) == len(name) + 9 and n[-8:].isdigit())
    return (
        [(f"{directory}/{n}", True) for n in dated]
        + [(f"{directory}/{prefix}{n}", True) for n in numbers]
        + [(path, False)]
    )


def _utc_offset(zone: NodeZone) -> int:
    """The node zone's offset from UTC now, in seconds."""
    offset = datetime.now(UTC).astimezone(zone.zone).utcoffset()
    return int(offset.total_seconds()) if offset is not None else 0


def _stamp(kind: str, zone: NodeZone, now: datetime) -> Stamp:
    if kind in ("kernel", "syslog"):
        return syslog_stamp(zone.zone, now)
    if kind == "klog":
        return klog_stamp(zone.zone, now)
    if kind == "audit":
        return audit_stamp
    return line_time


def _log_files(ctx: CollectContext, zone: NodeZone) -> tuple[list[LogFile], list[tuple[str, str]]]:
    """The log files present on the node, each bounded by `--since` and the size cap, and
    the (node path, reason) of those present that cannot be read.

    An absent file is simply not there (most nodes have none of them); one that is there but
    cannot be opened (permissions, a FIFO, a dangling link) is evidence missing from the
    bundle and must say so. A rotation whose entries are all older than `--since` is left
    out altogether.
    """
    found: list[LogFile] = []
    unreadable: list[tuple[str, str]] = []
    now = datetime.now(UTC)
    try:
        for base, kind in [(p, "") for p in LOG_FILES] + list(NODE_LOGS):
            stamp = _stamp(kind, zone, now)
            paths = _with_rotations(ctx.host, base)
            older = len(paths) - 1 - MAX_ROTATIONS
            if older > 0:
                unreadable.append((f"{base}.*", f"{older} older rotations not read (the newest {MAX_ROTATIONS} are)"))
                paths = paths[older:]
            for path, rotated in paths:
                try:
                    fh = ctx.host.open(path)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    unreadable.append((path, exc.strerror or str(exc)))
                    continue
                try:
                    size = os.fstat(fh.fileno()).st_size
                    before = first_offset_since(fh, size, ctx.since_time, stamp)
                except OSError as exc:
                    fh.close()
                    unreadable.append((path, exc.strerror or str(exc)))
                    continue
                except BaseException:
                    fh.close()
                    raise
                if rotated and before >= size:
                    fh.close()
                    continue
                cap = size - before if kind in _FILTERS else min(ctx.max_log_bytes, size - before)
                found.append(LogFile(path, fh, size, before, cap, kind))
    except BaseException:
        _close_all(found)
        raise
    return found, unreadable


def _close_all(files: list[LogFile]) -> None:
    for f in files:
        f.file.close()


_FILTERS: dict[str, Callable[[BinaryIO, int, BinaryIO], int]] = {
    "syslog": lambda src, start, out: filter_window(src, start, out, syslog_filter(IDENTIFIERS)),
    "audit": filter_audit,
}


def _prefilter(files: list[LogFile], directory: str, max_bytes: int) -> tuple[list[LogFile], list[tuple[str, str]]]:
    """Syslog and audit files: their wanted lines within `--since`, each into a file in
    `directory`, which stands in for the original from then on (stored, indexed, capped).

    The cap applies to what is kept, not to the file: a busy syslog must not crowd out the
    few kernel lines that matter. Files with nothing wanted are left out.
    """
    kept: list[LogFile] = []
    unreadable: list[tuple[str, str]] = []
    try:
        for i, f in enumerate(files):
            pick = _FILTERS.get(f.kind)
            if pick is None:
                kept.append(f)
                continue
            # Read through the node file's descriptor into a file of ours, which is kept
            # open and read back through its own descriptor: nothing is reopened by path.
            dst: BinaryIO | None = None
            try:
                with f.file:
                    dst = open(os.path.join(directory, f"{i}.log"), "x+b")
                    pick(f.file, f.before_since, dst)
                    dst.flush()
                    size = dst.tell()
            except OSError as exc:
                if dst is not None:
                    dst.close()
                unreadable.append((f.path, exc.strerror or str(exc)))
                continue
            if size:
                kept.append(replace(f, file=dst, size=size, before_since=0, cap=min(max_bytes, size), kind=""))
            else:
                dst.close()
    except BaseException:  # closing twice is harmless: close all there is
        _close_all(files)
        _close_all(kept)
        raise
    return kept, unreadable


def _ahead_threads() -> int:
    """Deflate-ahead threads: the scanner process keeps one core busy, they get the rest."""
    return max(1, min(4, (os.cpu_count() or 1) - 1))
