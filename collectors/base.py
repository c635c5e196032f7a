"""The one interface every collector implements, and what it writes through.

A collector declares what it reads (for the README and `--help`, like sos plugins), then
writes evidence through `CollectorOutput`, never into the tar directly: the output applies
redaction, caps sizes, spools unknown-length content to disk and records per-item failures
so one bad file turns the collector `partial` instead of failing it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from kata_debug.bundle.manifest import CollectorEntry, ItemFailure, Status
from kata_debug.bundle.writer import AsyncBundle, MemberIncomplete, Spool, safe_component
from kata_debug.node.hostroot import HostRoot, describe
from kata_debug.node.oci import SPEC_PARSE_CAP
from kata_debug.node.paths import TRACE_SPOOL_DIR
from kata_debug.redact.redactor import Redactor, StreamRedactor

_CHUNK = 1 << 20
#: What is read past a chunk to finish its last line; a longer line is cut (`StreamRedactor.cut`).
_LINE_TAIL_MAX = 1 << 20
DEFAULT_LOG_CAP = 50 * 1024 * 1024
#: What a member path component may never be: empty, `.`/`..`, or hold control characters.
_UNSAFE_COMPONENT = re.compile(r"[\x00-\x1f\x7f]")


def member_name(part: str) -> str:
    """One bundle path component made from node data (a sandbox id, a namespace, a file name).

    Kept as it is when it is already plain (`[A-Za-z0-9._-]`, not `.` or `..`); otherwise
    sanitised and suffixed with a short hash of the original, so two odd names that
    sanitise alike (`a b`, `a:b`) stay two members.
    """
    safe = safe_component(part)
    if safe == part and part not in (".", ".."):
        return part
    return f"{safe.strip('.') or '_'}-{hashlib.sha256(part.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"


_T = TypeVar("_T")


@dataclass(frozen=True)
class CollectorOptions:
    """Settings only some collectors read, typed so a misspelt one fails the type check, not a run."""

    #: Node path of the node agent's span spool (`collect --trace-spool-dir`), for `agent-traces`.
    trace_spool_dir: str = TRACE_SPOOL_DIR


@dataclass
class CollectContext:
    """Everything a collector may depend on; nothing global."""

    host: HostRoot
    node: str
    since: timedelta
    now: datetime
    redactor: Redactor
    max_log_bytes: int = DEFAULT_LOG_CAP
    #: Spec and state files (config.json, persist.json) larger than this are kept raw, not parsed.
    max_parse_bytes: int = SPEC_PARSE_CAP
    all_runtimes: bool = False
    #: Whether the node's own binaries (containerd, kata-runtime) may be executed: `--host-root /`
    #: or `--run-host-tools`. Under another root they are files of a filesystem we were shown.
    run_host_tools: bool = True
    command_timeout: float = 20.0
    options: CollectorOptions = field(default_factory=CollectorOptions)

    @property
    def since_time(self) -> datetime:
        return self.now - self.since


def host_tool_note(ctx: CollectContext, exe: str) -> str:
    """Where a node binary runs, for the bundle: a reader must know whose /etc and /dev it saw."""
    if str(ctx.host.root) == "/":
        return f"ran {exe} on the node (--host-root /)"
    return (
        f"ran {exe} from host root {ctx.host.root} inside this process's mount namespace "
        "(--run-host-tools): it sees this container's /etc, /proc and devices, pointed at the node's files where it can be"
    )


class CollectorSkipped(Exception):
    """Raised by a collector that does not apply to this node (status `skipped`)."""


class CollectorOutput:
    """A collector's view of the bundle: its own directory, redaction, failures."""

    def __init__(self, collector: str, bundle: AsyncBundle, ctx: CollectContext) -> None:
        self.collector = collector
        self._bundle = bundle
        self._ctx = ctx
        self.files: list[str] = []
        self.failures: list[ItemFailure] = []
        self.truncated: dict[str, int] = {}
        #: Members handed to the bundle writer when the collector was cancelled: the writer
        #: finishes (or never starts) each; the runner lists the finished ones in `files`.
        self.in_flight: list[str] = []

    def entry(self, status: Status, error: str | None, started: float) -> CollectorEntry:
        """This collector's manifest entry: what it wrote, failed and cut (`started`: monotonic)."""
        return CollectorEntry(
            name=self.collector,
            status=status,
            duration_s=round(time.monotonic() - started, 3),
            error=error,
            files=list(self.files),
            items_failed=list(self.failures),
            truncated=dict(self.truncated),
        )

    def _path(self, name: str) -> str:
        """The member path of `name`; a component that could not be one (`..`, empty, control
        characters) is replaced by its `member_name`, so node data never breaks the archive."""
        parts = [
            p if p not in (".", "..") and not _UNSAFE_COMPONENT.search(p) else member_name(p)
            for p in name.split("/")
            if p
        ]
        return "/".join([self.collector, *parts])

    async def _write(self, path: str, write: Awaitable[_T]) -> _T:
        """Await one member's write and list it in `files`, also when its source failed
        part-way (the member is in the bundle, padded and marked incomplete)."""
        try:
            result = await write
        except asyncio.CancelledError:
            self.in_flight.append(path)
            raise
        except MemberIncomplete:
            self.files.append(path)
            raise
        self.files.append(path)
        return result

    def item_failed(self, item: str, reason: str) -> None:
        """One item could not be collected; the collector goes on and ends `partial`."""
        self.failures.append(ItemFailure(item, reason))

    async def add_bytes(self, name: str, data: bytes, *, redact: bool = True) -> None:
        """`redact=False` skips the secret rules only: `--obfuscate-hosts` pseudonyms apply to everything."""
        redactor = self._ctx.redactor
        if redact:
            data = await asyncio.to_thread(redactor.bytes, data)
        elif redactor.hosts is not None:
            data = await asyncio.to_thread(redactor.pseudonymise, data)
        await self._add_final(name, data)

    async def _add_final(self, name: str, data: bytes) -> None:
        await self._write(self._path(name), self._bundle.add_bytes(self._path(name), data))

    async def add_text(self, name: str, text: str, *, redact: bool = True) -> None:
        await self.add_bytes(name, text.encode("utf-8", "surrogateescape"), redact=redact)

    async def add_json(self, name: str, value: Any, *, redact: bool = True, oci: bool = False) -> None:
        """Write JSON; with `oci=True`, env values and secret annotations are masked too."""
        redactor = self._ctx.redactor
        value = redactor.json_value(value, oci=oci) if redact else redactor.pseudonymise_json(value)
        data = json.dumps(value, indent=2, default=str).encode() + b"\n"
        await self._add_final(name, data)

    async def add_jsonl(self, name: str, rows: Sequence[Any], *, redact: bool = True) -> None:
        redactor = self._ctx.redactor
        rows = [redactor.json_value(r) if redact else redactor.pseudonymise_json(r) for r in rows]
        data = b"".join(json.dumps(r, default=str).encode() + b"\n" for r in rows)
        await self._add_final(name, data)

    async def add_host_file(
        self,
        name: str,
        node_path: str | Path,
        *,
        max_bytes: int | None = None,
        redact: bool = True,
        oci: bool = False,
    ) -> bool:
        """Copy a node file (resolved in the host root), keeping its newest `max_bytes`.

        `oci`: the file is an OCI spec kept raw because it does not parse; it is redacted
        whole (`Redactor.oci_text`), so it must be small (a `max_bytes` cap is required).
        Returns False (and records the item as failed) when it cannot be read.
        """
        host = self._ctx.host
        redactor = self._ctx.redactor
        stream: StreamRedactor | _PseudonymsOnly | None = None
        if not oci:
            stream = redactor.stream() if redact else _PseudonymsOnly.maybe(redactor)
        if oci and max_bytes is None:
            raise ValueError("an OCI spec is redacted whole: give max_bytes")

        def _copy() -> Spool:
            # Resolving walks the host root (lstat per component): a worker thread's job.
            with host.open(node_path) as src:
                spool = Spool(max_bytes)
                try:
                    if oci:
                        assert max_bytes is not None  # refused above
                        data = src.read(max_bytes)
                        size = os.fstat(src.fileno()).st_size
                        if size > len(data):  # the head is kept: it holds ociVersion, process, root
                            self.truncated[self._path(name)] = size - len(data)
                        spool.write(redactor.oci_text(data) if redact else redactor.pseudonymise(data))
                        return spool
                    if max_bytes is not None:
                        # Skip what the cap would drop anyway; start on a line boundary.
                        size = os.fstat(src.fileno()).st_size
                        if size > max_bytes:
                            src.seek(size - max_bytes - 1)
                            src.readline()
                            self.truncated[self._path(name)] = src.tell()
                    # A line longer than a chunk (a file with no newline at all) is read a
                    # bounded piece at a time and cut where no secret straddles the cut.
                    carry = b""
                    while chunk := src.read(_CHUNK):
                        chunk = carry + chunk + src.readline(_LINE_TAIL_MAX)
                        carry = b""
                        if stream is not None and not chunk.endswith(b"\n"):
                            chunk, carry = stream.cut(chunk)
                        spool.write(stream.feed(chunk) if stream else chunk)
                    if carry:
                        spool.write(stream.feed(carry) if stream else carry)
                except BaseException:
                    spool.close()
                    raise
            return spool

        try:
            spool = await asyncio.to_thread(_copy)
        except OSError as exc:
            self.item_failed(str(node_path), describe(exc))
            return False
        await self._add_spool(name, spool)
        return True

    async def add_command(
        self,
        name: str,
        argv: Sequence[str],
        *,
        max_bytes: int | None = None,
        redact: bool = True,
        timeout: float | None = None,
        env: dict[str, str] | None = None,
    ) -> int | None:
        """Run a command, streaming stdout to the bundle; stderr goes to `<name>.stderr`.

        Returns the exit code, or None when the command does not exist. The process is
        killed if the collector is cancelled or the timeout passes.
        """
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                stdin=asyncio.subprocess.DEVNULL,
                env=env,
            )
        except (FileNotFoundError, PermissionError):
            return None
        spool = Spool(max_bytes)
        redactor = self._ctx.redactor
        stream: StreamRedactor | _PseudonymsOnly | None = (
            redactor.stream() if redact else _PseudonymsOnly.maybe(redactor)
        )
        assert proc.stdout is not None and proc.stderr is not None

        async def _pump() -> bytes:
            pending = b""
            while chunk := await proc.stdout.read(_CHUNK):  # type: ignore[union-attr]
                pending += chunk
                cut = pending.rfind(b"\n") + 1
                if not cut and len(pending) > _LINE_TAIL_MAX:
                    # A command printing a line without end: held in bounded pieces, cut where no
                    # secret straddles the cut (or as it came, when nothing is redacted).
                    block, pending = stream.cut(pending) if stream else (pending, b"")
                    await asyncio.to_thread(spool.write, stream.feed(block) if stream else block)
                    continue
                if cut:
                    block, pending = pending[:cut], pending[cut:]
                    await asyncio.to_thread(spool.write, stream.feed(block) if stream else block)
            if pending:
                await asyncio.to_thread(spool.write, stream.feed(pending) if stream else pending)
            return await proc.stderr.read()  # type: ignore[union-attr]

        try:
            err = await asyncio.wait_for(_pump(), timeout or self._ctx.command_timeout)
            code = await proc.wait()
        except BaseException:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            spool.close()
            raise
        await self._add_spool(name, spool)
        if err.strip():
            await self.add_bytes(f"{name}.stderr", err[-65536:], redact=redact)
        return code

    @property
    def deflate_level(self) -> int | None:
        """zlib level for `add_deflated` content; None when the bundle cannot take it (not gzip)."""
        return self._bundle.writer.deflate_level

    async def add_deflated(self, name: str, size: int, sha256: str, members: Iterable[bytes]) -> None:
        """Add content that was already redacted and deflated as gzip members (see bundle.add_deflated)."""
        path = self._path(name)
        await self._write(path, self._bundle.add_deflated(path, size, sha256, members))

    def spool(self, max_bytes: int | None = None) -> Spool:
        """A temp file to fill (from a thread) and hand to `add_spool`."""
        return Spool(max_bytes)

    async def add_spool(self, name: str, spool: Spool) -> None:
        await self._add_spool(name, spool)

    async def _add_spool(self, name: str, spool: Spool) -> None:
        path = self._path(name)
        _, dropped = await self._write(path, self._bundle.add_spool(path, spool))
        if dropped:
            self.truncated[path] = self.truncated.get(path, 0) + dropped


class _PseudonymsOnly:
    """A stream for content kept unredacted (`redact=False`) that still gets `--obfuscate-hosts`."""

    def __init__(self, redactor: Redactor) -> None:
        self._r = redactor

    @classmethod
    def maybe(cls, redactor: Redactor) -> _PseudonymsOnly | None:
        return cls(redactor) if redactor.hosts is not None else None

    def feed(self, chunk: bytes) -> bytes:
        return self._r.pseudonymise(chunk)

    def cut(self, chunk: bytes) -> tuple[bytes, bytes]:
        """Where to cut a line longer than a chunk: at a separator, as the redacting stream does."""
        return self._r.stream().cut(chunk)


class Collector(ABC):
    """One kind of evidence. Subclasses set the class attributes and implement `collect`."""

    #: Name on the command line (`--collector NAME`) and directory in the bundle.
    name: ClassVar[str]
    #: One line for `kata-debug collectors` and the README.
    summary: ClassVar[str]
    #: Node paths (relative to the host root) and commands this collector reads.
    reads: ClassVar[tuple[str, ...]]

    @abstractmethod
    async def collect(self, ctx: CollectContext, out: CollectorOutput) -> None:
        """Write evidence through `out`; raise only for a failure of the whole collector."""
