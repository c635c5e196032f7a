"""The support bundle: a tar stream written as evidence arrives, manifest last.

This is the only module that knows tar and the bundle layout. Members are written one at a
time, in full, by a single writer thread: the compressor and file copies never run on the
event loop, members never interleave, and an interrupted collection can still queue the
manifest behind whatever member is being written and end with a valid archive.
Sizes must be known before a member's header, so content of unknown length is spooled to a
temp file first (see `Spool`), never held whole in memory.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import os
import re
import stat
import tarfile
import tempfile
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, BinaryIO, Literal, Protocol, TypeVar, cast

import zstandard

from kata_debug.bundle.manifest import Manifest, to_json
from kata_debug.errors import OutputError

Compression = Literal["gzip", "zstd", "none"]
_COPY_BUF = 1 << 20
_T = TypeVar("_T")

# On shim and containerd logs zlib level 1 compresses about as well as level 3 (ratio 0.180
# vs 0.179) and 2.5x faster than gzip's default 6; level 6 would make bundles ~15% smaller at
# 2.5x the compression time. With the parallel compressor at level 1 a bundle is written
# about as fast as `tar czf` of the same files (bench/bundle.py).
GZIP_LEVEL = 1

SUFFIXES: dict[str, str] = {"gzip": ".tar.gz", "zstd": ".tar.zst", "none": ".tar"}
#: zstd's window: 128 MiB, the most `zstd -d` and `tar --zstd` accept without `--long`.
#: Logs repeat themselves over far more than gzip's 32 KiB (the same shim lines for every
#: sandbox, rotations overlapping): the regular match finder finds that within the window.
ZSTD_WINDOW_LOG = 27
#: Level 2 without long-distance matching (LDM): on bench/bundle.py's logs level 3 with LDM
#: cost ~2.3x the CPU (5.5-6.1 vs 2.4-2.6 cpu-s per GiB) for the same size (6.31 vs 6.30 MB per 50
#: MiB). What only LDM finds is an exact repeat many MiB back, across zstd's jobs: a 12 MiB
#: block repeated 12 MiB later compresses to 2.7 MB instead of 1.5 (3.0 unrepeated); logs
#: repeat lines, seldom megabytes. Compression is the largest single cost of a collection,
#: and `tar czf` is the bar.
ZSTD_LEVEL = 2
#: zstd's worker threads take jobs of this much input. Without LDM zstd would size them from
#: the window (512 MiB): it would buffer that much before compressing (348 MiB RSS for 300
#: MiB of logs); 4 MiB jobs keep the compressor under 100 MiB, as fast.
ZSTD_JOB_BYTES = 4 << 20


def zstd_compressor(level: int | None = None) -> zstandard.ZstdCompressor:
    """The bundle's default compressor: level 2, long window, on all cores (zstd's own threads)."""
    params = zstandard.ZstdCompressionParameters.from_level(
        ZSTD_LEVEL if level is None else level,
        window_log=ZSTD_WINDOW_LOG,
        threads=max(1, min(4, os.cpu_count() or 1)),
        job_size=ZSTD_JOB_BYTES,
    )
    return zstandard.ZstdCompressor(compression_params=params)


def compression_for(output: str | None) -> Compression:
    """The compression an output name asks for: `.tar.gz`/`.tgz` gzip, `.tar` none, else zstd (the default)."""
    name = (output or "").lower()
    if name.endswith((".tar.gz", ".tgz", ".gz")):
        return "gzip"
    if name.endswith(".tar"):
        return "none"
    return "zstd"


@dataclass(frozen=True)
class FileRecord:
    """One member as `manifest.json` lists it.

    `incomplete` says why a member's content ends early (its source shrank or failed while
    it was being written): the rest, up to the size its header declared, is NUL padding.
    `sha256` is then the hash of what the archive holds, or None when that is not known
    (content deflated elsewhere).
    """

    path: str
    size: int
    sha256: str | None
    incomplete: str | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"path": self.path, "size": self.size, "sha256": self.sha256}
        if self.incomplete is not None:
            doc["incomplete"] = self.incomplete
        return doc


class MemberIncomplete(OSError):
    """A member's source failed part-way: the member was finished with NUL padding (the
    archive stays valid) and the manifest says so; the caller's collector should not pass as ok."""


class _HashingExactReader:
    """Feeds tarfile exactly `size` bytes, hashing them.

    A live log can shrink or grow between stat and read; the header already promised
    `size` bytes, so a short source is padded with NULs and a long one is cut, keeping the
    archive valid either way. A source that fails part-way (a read error, a file closed
    under it) is padded the same way: once the header is out, tarfile must get every byte.
    """

    def __init__(self, src: IO[bytes], size: int, sink: Callable[[bytes], None] | None = None) -> None:
        self._src = src
        self._left = size
        self.sha = hashlib.sha256()
        self.short_by = 0
        self.error: str | None = None
        self._sink = sink

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        want = self._left if n < 0 else min(n, self._left)
        data = b""
        if self.short_by == 0:
            try:
                data = self._src.read(want)
            except (OSError, ValueError) as exc:  # ValueError: the file was closed under us
                self.error = f"{type(exc).__name__}: {exc}"
        if len(data) < want:
            self.short_by += want - len(data)
            data += b"\0" * (want - len(data))
        self._left -= len(data)
        self.sha.update(data)
        if self._sink is not None:
            self._sink(data)
        return data


class MemberTap(Protocol):
    """Sees each member's content as it is written (collect analyses what it collected
    without reading the bundle back, which may be a pipe)."""

    def member(self, path: str, size: int) -> Callable[[bytes], None] | None:
        """A sink for this member's bytes, or None when the tap does not want them."""

    def done(self, path: str) -> None:
        """The member is complete."""


def _inflated(members: Iterable[bytes], sink: Callable[[bytes], None]) -> Iterator[bytes]:
    """Pass gzip members through unchanged, feeding their inflated content to `sink`."""
    d = zlib.decompressobj(31)
    for chunk in members:
        data = chunk
        while data:
            sink(d.decompress(data))
            data = d.unused_data
            if d.eof:
                d = zlib.decompressobj(31)
        yield chunk


def _until_failure(members: Iterable[bytes], failed: list[Exception]) -> Iterator[bytes]:
    """`members` until they end or fail; a failure is put in `failed` instead of raised, so
    a member whose header is written can still be finished."""
    it = iter(members)
    while True:
        try:
            member = next(it)
        except StopIteration:
            return
        except Exception as exc:
            failed.append(exc)
            return
        yield member


def safe_component(part: str, fallback: str = "_") -> str:
    """A name usable as one path component in a bundle (node, pod, namespace names)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", part).strip("-") or fallback


def bundle_stem(label: str, started: datetime) -> str:
    """`kata-debug-<label>-<UTC time>`: the top directory and default file name of a bundle."""
    return f"kata-debug-{safe_component(label, 'node')}-{started.strftime('%Y%m%dT%H%M%SZ')}"


class Sink(Protocol):
    """Where the compressed bundle goes: a file, a pipe, stdout."""

    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...


class DigestingSink:
    """The output, counted and hashed as it is written.

    The size and sha256 a vendor is quoted then exist for every output, stdout and FIFOs
    included (which cannot be read back), and a regular file is not read a second time.
    """

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes, /) -> int:
        self._raw.write(data)
        self._sha.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        self._raw.flush()

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()


class _CountingWriter:
    """Write-only stream with tell(): all tarfile's "w" mode needs, pipes and stdout included."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self._pos = 0

    def write(self, data: bytes) -> int:
        self._raw.write(data)
        self._pos += len(data)
        return len(data)

    def tell(self) -> int:
        return self._pos

    def skip(self, n: int) -> None:
        """Account for `n` bytes that reached the stream around this writer (spliced members)."""
        self._pos += n


class _GzipMembers:
    """A gzip stream written as a series of gzip members, compressed on several cores.

    RFC 1952 allows members to be concatenated and every reader (gzip, tar, Python's
    gzip module) inflates them as one stream. That lets each 1 MiB block be deflated on
    its own worker thread (zlib releases the GIL), pigz-style, while the collectors keep
    the other core busy; blocks are written out in order and at most `2 * workers` are in
    flight, so memory stays flat. `set_level(0)` stores already-compressed content (node
    bundles inside a cluster bundle) at memcpy speed instead of deflating it again.
    """

    BLOCK = 1 << 20

    def __init__(self, sink: Sink, level: int, workers: int | None = None) -> None:
        self._sink = sink
        self.level = level
        self._workers = max(1, min(4, workers or os.cpu_count() or 1))
        self._pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="gzip")
        self._pending: deque[Future[bytes]] = deque()
        self._buf: list[bytes] = []
        self._buffered = 0

    def write(self, data: bytes) -> int:
        self._buf.append(data if isinstance(data, bytes) else bytes(data))
        self._buffered += len(data)
        if self._buffered >= self.BLOCK:
            self._submit()
        return len(data)

    def _submit(self) -> None:
        if not self._buffered:
            return
        block = b"".join(self._buf)
        self._buf, self._buffered = [], 0
        self._pending.append(self._pool.submit(gzip.compress, block, self.level, mtime=0))
        while len(self._pending) > 2 * self._workers:
            self._sink.write(self._pending.popleft().result())

    def _drain(self) -> None:
        self._submit()
        while self._pending:
            self._sink.write(self._pending.popleft().result())

    def splice(self, members: Iterable[bytes]) -> int:
        """Append gzip members deflated elsewhere, after what is buffered; returns their content size.

        The content they inflate to must be exactly what would have been written here; each
        member's trailer (ISIZE) says how much that is.
        """
        self._submit()
        size = 0
        for member in members:
            size += int.from_bytes(member[-4:], "little")
            done: Future[bytes] = Future()
            done.set_result(member)
            self._pending.append(done)
            while len(self._pending) > 2 * self._workers:
                self._sink.write(self._pending.popleft().result())
        return size

    def set_level(self, level: int) -> None:
        if level != self.level:
            self._submit()  # what is buffered belongs to the old level
            self.level = level

    def flush(self) -> None:
        self._drain()
        self._sink.flush()

    def close(self) -> None:
        try:
            self._drain()
        finally:
            self._pool.shutdown(wait=True)


class BundleWriter:
    """Synchronous tar writer; use through `AsyncBundle` from async code."""

    def __init__(
        self,
        sink: Sink,
        top: str,
        compression: Compression = "gzip",
        level: int | None = None,
    ) -> None:
        self.top = top
        self.records: list[FileRecord] = []
        self._sink = sink
        self._compressor: Any
        if compression == "gzip":
            self._compressor = _GzipMembers(sink, GZIP_LEVEL if level is None else level)
        elif compression == "zstd":
            # zstandard only calls write() and flush() on it (its stub asks for a whole IO[bytes]).
            self._compressor = zstd_compressor(level).stream_writer(cast(IO[bytes], sink), closefd=False)
        elif compression == "none":
            self._compressor = sink
        else:
            raise ValueError(f"unknown compression {compression!r}")
        self._compression = compression
        # Plain "w" mode on a write-only, tell()-able stream: tarfile writes headers and
        # data straight through instead of re-buffering every byte as "w|" does.
        self._out = _CountingWriter(self._compressor)
        self._tar = tarfile.open(fileobj=self._out, mode="w", format=tarfile.PAX_FORMAT)  # type: ignore[call-overload]
        self._tar.copybufsize = _COPY_BUF
        self._dirs: set[str] = set()
        self._closed = False
        self.tap: MemberTap | None = None
        #: `--obfuscate-hosts`: rewrites member names and the manifest's text, so a node name
        #: or address in a path or an error message reaches the bundle only as its pseudonym.
        self.pseudonymise: Callable[[str], str] | None = None
        self.pseudonymise_json: Callable[[Any], Any] | None = None

    def _info(self, path: str, size: int, mtime: float | None, mode: int = 0o644) -> tarfile.TarInfo:
        info = tarfile.TarInfo(f"{self.top}/{path}")
        info.size = size
        info.mtime = int(time.time() if mtime is None else mtime)
        info.mode = mode
        info.uname = info.gname = "root"
        return info

    def _ensure_dirs(self, path: str) -> None:
        parts = path.split("/")[:-1]
        for i in range(0, len(parts) + 1):
            d = "/".join(parts[:i])
            if d in self._dirs:
                continue
            self._dirs.add(d)
            info = tarfile.TarInfo(f"{self.top}/{d}".rstrip("/"))
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            info.mtime = int(time.time())
            self._tar.addfile(info)

    def add_fileobj(
        self, path: str, src: IO[bytes], size: int, mtime: float | None = None, *, precompressed: bool = False
    ) -> FileRecord:
        """Add `size` bytes of `src`; `precompressed` content (a .tar.gz) is stored, not deflated again."""
        if self.pseudonymise is not None:
            path = self.pseudonymise(path)
        _check_member_path(path)
        self._ensure_dirs(path)
        sink = self.tap.member(path, size) if self.tap is not None else None
        reader = _HashingExactReader(src, size, sink)
        if precompressed and isinstance(self._compressor, _GzipMembers):
            level = self._compressor.level
            self._switch_level(0)
            try:
                self._tar.addfile(self._info(path, size, mtime), reader)
            finally:
                self._switch_level(level)
        else:
            self._tar.addfile(self._info(path, size, mtime), reader)
        incomplete = None
        if reader.short_by:
            cause = reader.error or "the source ended early"
            incomplete = f"{cause}; the last {reader.short_by} bytes are NUL padding"
        record = FileRecord(path=path, size=size, sha256=reader.sha.hexdigest(), incomplete=incomplete)
        self.records.append(record)
        if sink is not None and self.tap is not None:
            self.tap.done(path)
        if reader.error is not None:
            raise MemberIncomplete(f"{path}: {incomplete}")
        return record

    def add_bytes(self, path: str, data: bytes, mtime: float | None = None) -> FileRecord:
        return self.add_fileobj(path, io.BytesIO(data), len(data), mtime)

    @property
    def deflate_level(self) -> int | None:
        """The zlib level content for `add_deflated` is deflated at; None: not a gzip bundle."""
        return self._compressor.level if isinstance(self._compressor, _GzipMembers) else None

    def add_deflated(
        self, path: str, size: int, sha256: str, members: Iterable[bytes], mtime: float | None = None
    ) -> FileRecord:
        """Add `size` bytes someone deflated ahead of time, as gzip members at `deflate_level`.

        Lets a producer compress content while it is still being produced (on other cores)
        instead of in one go here; the members are spliced into the stream as they are.
        """
        if not isinstance(self._compressor, _GzipMembers):
            raise ValueError("add_deflated needs a gzip bundle")
        if self.pseudonymise is not None:
            path = self.pseudonymise(path)
        _check_member_path(path)
        self._ensure_dirs(path)
        info = self._info(path, size, mtime)
        header = info.tobuf(self._tar.format, self._tar.encoding, self._tar.errors)
        self._out.write(header)
        sink = self.tap.member(path, size) if self.tap is not None else None
        failed: list[Exception] = []
        try:
            spliced = self._compressor.splice(_until_failure(_inflated(members, sink) if sink else members, failed))
        finally:
            close = getattr(members, "close", None)
            if close is not None:
                close()
        if spliced > size:  # the archive is already wrong: say so loudly
            raise ValueError(f"{path}: deflated members hold {spliced} bytes, not {size}")
        incomplete = None
        if spliced < size:  # the header promised `size` bytes: pad, so the archive stays valid
            cause = f"{type(failed[0]).__name__}: {failed[0]}" if failed else f"deflated members hold {spliced} bytes"
            incomplete = f"{cause}; the last {size - spliced} bytes are NUL padding"
            for start in range(spliced, size, _COPY_BUF):
                self._compressor.write(tarfile.NUL * min(_COPY_BUF, size - start))
        self._out.skip(size)
        pad = -size % tarfile.BLOCKSIZE
        if pad:
            self._out.write(tarfile.NUL * pad)
        # What tarfile.addfile itself records for a member it writes.
        self._tar.offset += len(header) + size + pad
        self._tar.members.append(info)
        record = FileRecord(path=path, size=size, sha256=None if incomplete else sha256, incomplete=incomplete)
        self.records.append(record)
        if sink is not None and self.tap is not None:
            self.tap.done(path)
        if incomplete is not None:
            raise MemberIncomplete(f"{path}: {incomplete}")
        return record

    def _switch_level(self, level: int) -> None:
        # tarfile writes through unbuffered, so the switch lands exactly on a member boundary.
        self._compressor.set_level(level)

    def close(self, manifest: dict[str, Any]) -> None:
        """Write `manifest.json` (with the file list) last and finish the stream."""
        if self._closed:
            return
        if self.pseudonymise_json is not None:
            manifest = self.pseudonymise_json(manifest)
        manifest = {**manifest, "files": [r.to_json() for r in self.records]}
        data = json.dumps(manifest, indent=2, sort_keys=False).encode() + b"\n"
        self._ensure_dirs("manifest.json")
        self._tar.addfile(self._info("manifest.json", len(data), None), io.BytesIO(data))
        self._tar.close()
        if self._compressor is not self._sink:
            self._compressor.close() if self._compression == "gzip" else self._compressor.flush(zstandard.FLUSH_FRAME)
        self._sink.flush()
        self._closed = True


def _check_member_path(path: str) -> None:
    if path.startswith("/") or ".." in path.split("/") or not path:
        raise ValueError(f"bad bundle member path {path!r}")


class Spool:
    """A temp file for content whose size is not known up front (command output, redacted text).

    Keeps at most `max_bytes` of the *newest* content when asked: logs are read oldest
    first, and the newest lines are the ones that explain a failure.
    """

    def __init__(self, max_bytes: int | None = None) -> None:
        self.max_bytes = max_bytes
        self.file: IO[bytes] = tempfile.TemporaryFile(prefix="kata-debug-")
        self.written = 0

    @classmethod
    def adopt(cls, file: IO[bytes], max_bytes: int | None = None) -> Spool:
        """A spool over a file filled elsewhere (a scanner process's output); closing it closes `file`."""
        spool = cls.__new__(cls)
        spool.max_bytes = max_bytes
        spool.file = file
        spool.written = file.seek(0, os.SEEK_END)
        return spool

    def write(self, data: bytes | bytearray) -> None:
        self.file.write(data)
        self.written += len(data)

    def tail(self) -> tuple[IO[bytes], int, int]:
        """(reader, size, bytes dropped) keeping the newest whole lines within the cap."""
        self.file.flush()
        total = self.written
        start = 0
        if self.max_bytes is not None and total > self.max_bytes:
            start = total - self.max_bytes
            self.file.seek(start)
            rest = self.file.read(min(self.max_bytes, 1 << 20))
            nl = rest.find(b"\n")
            start += nl + 1 if nl >= 0 else 0
        self.file.seek(start)
        return self.file, total - start, start

    def close(self) -> None:
        self.file.close()


class AsyncBundle:
    """Serialises all bundle writes on one worker thread so the event loop never blocks."""

    def __init__(self, writer: BundleWriter) -> None:
        self.writer = writer
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bundle")

    async def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def add_bytes(self, path: str, data: bytes, mtime: float | None = None) -> FileRecord:
        return await self.run(self.writer.add_bytes, path, data, mtime)

    async def add_spool(self, path: str, spool: Spool, *, precompressed: bool = False) -> tuple[FileRecord, int]:
        """Add a spool's (tail-capped) content; returns the record and bytes dropped."""

        def _do() -> tuple[FileRecord, int]:
            try:
                reader, size, dropped = spool.tail()
                return self.writer.add_fileobj(path, reader, size, precompressed=precompressed), dropped
            finally:
                spool.close()

        return await self.run(_do)

    async def add_deflated(self, path: str, size: int, sha256: str, members: Iterable[bytes]) -> FileRecord:
        """See `BundleWriter.add_deflated`; `members` is iterated on the writer thread."""
        return await self.run(self.writer.add_deflated, path, size, sha256, members)

    async def close(self, manifest: Manifest) -> None:
        """Write the manifest (with the file list) last and finish the stream."""
        try:
            await self.run(self.writer.close, to_json(manifest))
        finally:
            self._pool.shutdown(wait=True)


class OutputTarget:
    """Where the bundle goes: a regular file written as `FILE.partial` and renamed, a device or
    FIFO written straight through, or stdout.

    The `.partial` is created with O_EXCL: two runs never write into one file. A default
    output name (`unique_suffix` given) is made unique instead of refused: `NAME-2.tar.gz`,
    `NAME-3.tar.gz`..., and the finished file is linked into place without replacing one
    that appeared meanwhile. `-o /dev/null`, `-o /dev/stdout` or a FIFO is never replaced by a
    regular file: it is opened and written like a pipe, with no `.partial` and no rename.
    """

    def __init__(self, path: str, *, unique_suffix: str | None = None) -> None:
        self.path = path
        self._asked = path
        self.to_stdout = path == "-"
        self._unique_suffix = unique_suffix
        self._fh: BinaryIO | None = None
        self._digest: DigestingSink | None = None
        self._committed = False
        self.direct = False  # a character device or FIFO: written in place
        self.partial = Path(path + ".partial") if not self.to_stdout else None

    @staticmethod
    def _kind(path: str) -> int | None:
        try:
            return os.stat(path).st_mode
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise OutputError(f"--output {path}: {exc.strerror}") from None

    @staticmethod
    def check(path: str | None) -> None:
        """Refuse, before any work, an output that cannot be written (None: the default name)."""
        if path is None:
            return
        if path == "-":
            import sys

            if sys.stdout.isatty():
                raise OutputError("--output -: standard output is a terminal; redirect it to a file or a pipe")
            return
        mode = OutputTarget._kind(path)
        if mode is not None:
            if stat.S_ISDIR(mode):
                raise OutputError(f"--output {path}: is a directory (give a file name)")
            if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
                if stat.S_ISCHR(mode) and _is_tty(path):
                    raise OutputError(f"--output {path}: is a terminal; give a file, a pipe or -")
                return  # written in place
            if not stat.S_ISREG(mode):
                raise OutputError(f"--output {path}: not a regular file, character device or FIFO; refused")
        parent = Path(path + ".partial").parent
        if not parent.is_dir():
            raise OutputError(f"--output {path}: directory {parent} does not exist")

    def _candidates(self) -> Iterable[str]:
        yield self._asked
        suffix = self._unique_suffix
        if suffix is None or not self._asked.endswith(suffix):
            return
        stem = self._asked[: -len(suffix)]
        for n in range(2, 1000):
            yield f"{stem}-{n}{suffix}"

    @property
    def written(self) -> tuple[int, str] | None:
        """(bytes, sha256) of the bundle as written, once it is committed; None before."""
        d = self._digest
        return (d.size, d.sha256) if d is not None and self._committed else None

    def open(self) -> DigestingSink:
        """Open the output; what is written through the returned sink is counted and hashed."""
        self._committed = False
        self._digest = DigestingSink(self._open())
        return self._digest

    def _open(self) -> BinaryIO:
        self.check(self.path)
        if self.to_stdout:
            import sys

            self._fh = sys.stdout.buffer
            return self._fh
        mode = self._kind(self.path)
        if mode is not None and (stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)):
            try:
                # A FIFO blocks here until its reader opens it, like a shell redirection.
                fd = os.open(self.path, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
            except OSError as exc:
                raise OutputError(f"--output {self.path}: cannot write: {exc.strerror}") from None
            self.direct, self.partial = True, None
            self._fh = os.fdopen(fd, "wb")
            return self._fh
        for candidate in self._candidates():
            if self._unique_suffix is not None and os.path.lexists(candidate):
                continue
            partial = Path(candidate + ".partial")
            try:
                # 0600: a bundle is node evidence, redacted or not; its owner decides who reads it.
                # O_EXCL: a second run never truncates and shares the first one's file.
                fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                if self._unique_suffix is not None:
                    continue
                raise OutputError(
                    f"--output {self.path}: {partial} exists: another collect is writing it, "
                    "or an interrupted one left it (remove it and run again)"
                ) from None
            except OSError as exc:
                raise OutputError(f"--output {self.path}: cannot write: {exc.strerror}") from None
            self.path, self.partial = candidate, partial
            self._fh = os.fdopen(fd, "wb")
            return self._fh
        raise OutputError(f"--output {self.path}: no free name next to it")

    def commit(self) -> None:
        """Make the finished bundle visible under its real name."""
        if self._fh is None:
            return
        if self.to_stdout:
            self._fh.flush()
            self._committed = True
            return
        self._fh.close()
        if self.direct:
            self._committed = True
            return
        assert self.partial is not None
        if self._unique_suffix is None:
            os.replace(self.partial, self.path)
            self._committed = True
            return
        # A default name: never replace a bundle another run finished meanwhile under it.
        for candidate in self._candidates():
            try:
                os.link(self.partial, candidate)
            except FileExistsError:
                continue
            self.path = candidate
            os.unlink(self.partial)
            self._committed = True
            return
        raise OutputError(f"--output {self.path}: no free name next to it; the bundle is {self.partial}")

    def abandon(self) -> None:
        """Give up the output after an error: close it, never raising again (the disk may be full)."""
        fh, self._fh = self._fh, None
        if fh is None or self.to_stdout:
            return
        try:
            fh.close()
        except OSError:
            # close() flushes first; on a full disk that fails again and the fd stays open.
            try:
                os.close(fh.fileno())
            except (OSError, ValueError):
                pass


def _is_tty(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return os.isatty(fd)
    finally:
        os.close(fd)
