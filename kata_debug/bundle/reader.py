"""Read a bundle back: node or cluster, compressed tarball or extracted directory, in one pass.

Bundles can hold gigabytes of logs and a gzip or zstd tarball cannot be read out of order,
so the reader never extracts and never loads a log whole: `iter_members` streams the members
in archive order, each as a file object valid until the next one is requested. Callers keep
what they need (small structured members) and push log members through line matchers as
they go past. The manifest is the last member of a bundle, so nothing may wait for it.

A bundle comes from another machine and is input like any other: member names are checked
(no absolute paths, no `..`), only regular files are returned, and a member read as
structured data is refused past a size cap instead of being loaded.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

import zstandard

from kata_debug.errors import UsageError

#: Structured members (JSON, TOML, text facts) larger than this are not loaded whole.
MAX_STRUCTURED_BYTES = 16 << 20

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_NESTED_SUFFIXES = (".tar.gz", ".tar.zst", ".tar", ".tgz")
_BUFFER = 1 << 20


@dataclass(frozen=True)
class Member:
    """One regular file of a bundle. `path` is relative to the bundle's top directory."""

    path: str
    size: int
    fileobj: IO[bytes]

    def read_bytes(self, limit: int = MAX_STRUCTURED_BYTES) -> bytes:
        """The whole member, refused when larger than `limit` (a bundle is untrusted input)."""
        if self.size > limit:
            raise BundleError(f"{self.path}: {self.size} bytes, more than the {limit} read whole")
        return self.fileobj.read(limit + 1)[:limit]

    def lines(self) -> Iterator[tuple[int, str]]:
        """(1-based line number, text without its newline), streamed; undecodable bytes replaced."""
        text = io.TextIOWrapper(
            io.BufferedReader(_NonClosing(self.fileobj)), encoding="utf-8", errors="replace", newline="\n"
        )
        for number, line in enumerate(text, 1):
            yield number, line.rstrip("\n")
        text.detach()

    @property
    def is_nested_bundle(self) -> bool:
        return self.path.endswith(_NESTED_SUFFIXES)


class BundleError(UsageError):
    """The input is not a readable bundle (exit 2): names the input and the problem."""


class _NonClosing(io.RawIOBase):
    """Lets a TextIOWrapper read a member without closing the archive's stream under it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._raw.read(len(buf))
        buf[: len(data)] = data
        return len(data)


def safe_member_path(name: str) -> str | None:
    """A member name as a relative POSIX path, or None when it could point outside the bundle."""
    path = PurePosixPath(name)
    if path.is_absolute() or any(part in ("..", "") for part in path.parts) or not path.parts:
        return None
    parts = [p for p in path.parts if p != "."]
    return "/".join(parts) if parts else None


def _open_stream(path: Path) -> IO[bytes]:
    """The tar byte stream of a bundle file, decompressed by what its first bytes say it is."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 (closed by iter_members)
    except OSError as exc:
        raise BundleError(f"{path}: cannot read: {exc.strerror}") from None
    head = fh.read(4)
    fh.seek(0)
    if head.startswith(_GZIP_MAGIC):
        import gzip

        return gzip.GzipFile(fileobj=fh, mode="rb")  # type: ignore[return-value]
    if head.startswith(_ZSTD_MAGIC):
        return zstandard.ZstdDecompressor().stream_reader(fh, closefd=True)
    return fh


class _Prefixed(io.RawIOBase):
    """A stream whose first bytes were already read to tell its format: gives them back first."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(buf), len(self._head))
            buf[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(buf))
        buf[: len(data)] = data
        return len(data)


def _decompressing(stream: IO[bytes]) -> IO[bytes]:
    """A nested bundle's bytes as a tar stream, decompressed by what its first bytes say."""
    head = stream.read(4)
    raw = io.BufferedReader(_Prefixed(head, stream), _BUFFER)
    if head.startswith(_GZIP_MAGIC):
        import gzip

        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if head.startswith(_ZSTD_MAGIC):
        return zstandard.ZstdDecompressor().stream_reader(raw)
    return raw


def iter_members(source: str | os.PathLike[str] | IO[bytes], *, label: str | None = None) -> Iterator[Member]:
    """Every regular file of a bundle in archive order, names relative to its top directory.

    `source` is a bundle file (`.tar.gz`, `.tar.zst`, `.tar`: told apart by content, not by
    name), an extracted bundle directory, or an open byte stream of a tarball (a nested
    node bundle being read out of a cluster bundle). A bundle's members all sit under one
    top-level directory (`kata-debug-<node>-<time>/`); it is stripped.
    """
    if not isinstance(source, (str, os.PathLike)):
        stream = _decompressing(source)
        try:
            yield from _iter_tar(stream, label or "<stream>")
        finally:
            if stream is not source:
                stream.close()
        return
    path = Path(source)
    name = label or str(path)
    try:
        st = path.stat()
    except OSError as exc:
        raise BundleError(f"{name}: cannot read: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        yield from _iter_dir(path)
        return
    if not stat.S_ISREG(st.st_mode):
        raise BundleError(f"{name}: not a bundle file or directory")
    stream = _open_stream(path)
    try:
        yield from _iter_tar(stream, name)
    finally:
        stream.close()


def _iter_tar(stream: IO[bytes], name: str) -> Iterator[Member]:
    try:
        tar = tarfile.open(fileobj=stream, mode="r|")
    except (tarfile.TarError, OSError, EOFError, zstandard.ZstdError) as exc:
        raise BundleError(f"{name}: not a bundle (not a tar archive: {exc})") from None
    top: str | None = None
    try:
        for info in tar:
            rel = safe_member_path(info.name)
            if rel is None:
                raise BundleError(f"{name}: member {info.name!r} points outside the bundle")
            first, _, rest = rel.partition("/")
            if top is None:
                top = first
            if first != top or not rest:
                if info.isdir():
                    continue
                raise BundleError(f"{name}: member {info.name!r} is outside the bundle's top directory {top!r}")
            if not info.isreg():
                continue
            fileobj = tar.extractfile(info)
            if fileobj is None:
                continue
            yield Member(rest, info.size, fileobj)
    except (tarfile.TarError, OSError, EOFError, zstandard.ZstdError) as exc:
        raise BundleError(f"{name}: damaged bundle ({exc})") from None
    finally:
        tar.close()


def _iter_dir(root: Path) -> Iterator[Member]:
    """An extracted bundle: the directory itself or the one top directory inside it."""
    entries = [e for e in root.iterdir() if not e.name.startswith(".")]
    if not (root / "manifest.json").exists() and len(entries) == 1 and entries[0].is_dir():
        root = entries[0]
    # Archive order puts the manifest last; keep that for directories too.
    paths: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for f in sorted(filenames):
            paths.append(Path(dirpath) / f)
    paths.sort(key=lambda p: (p.relative_to(root).as_posix() == "manifest.json", p.relative_to(root).as_posix()))
    for p in paths:
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue  # a symlink or something we may not open: not a member
        fh = os.fdopen(fd, "rb")
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode):
                yield Member(p.relative_to(root).as_posix(), st.st_size, fh)
        finally:
            fh.close()
