"""Deflate files while another process is still appending to them.

The scanner process writes redacted logs and per-sandbox lines to files. Compressing each
only once it is complete leaves a core idle while the scan runs and piles the per-sandbox
logs (most of the input again) into one compression burst after it. Instead, what the
scanner has flushed so far is deflated here, piece by piece, as gzip members in the
bundle's own format; the bundle splices them in when the content is complete
(`BundleWriter.add_deflated`). Members go to one temp file, so memory stays flat.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import tempfile
import threading
import weakref
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

PIECE = 1 << 20  # the largest member, like the bundle's own blocks
MIN_PIECE = 128 << 10  # smaller pieces wait for more content (or the end)


@dataclass
class Deflated:
    """Content deflated ahead: its size and hash, and where its members are in the store."""

    size: int
    sha256: str
    members: list[tuple[int, int]]


@dataclass
class _Entry:
    path: str
    fd: int = -1  # opened by the first piece, off the event loop
    submitted: int = 0  # content bytes handed to the deflate thread(s)
    size: int = 0  # content bytes whose members are in the store
    sha: hashlib._Hash = field(default_factory=hashlib.sha256)
    members: list[tuple[int, int]] = field(default_factory=list)
    last: Future[None] | None = None
    dropped: bool = False


def _deflate(entry: _Entry, offset: int, n: int, level: int, lock: threading.Lock) -> tuple[bytes, bytes]:
    if entry.dropped:
        return b"", b""
    with lock:
        if entry.fd < 0:
            entry.fd = os.open(entry.path, os.O_RDONLY)
    raw = os.pread(entry.fd, n, offset)
    if len(raw) != n:
        raise OSError(f"read {len(raw)} of {n} bytes at {offset}: the file shrank")
    return raw, gzip.compress(raw, level, mtime=0)


class StoredMembers:
    """Iterates deflated members from its own descriptor of the store; closes it when done.

    `close` is for a consumer that stops early; an iterator never consumed (its write was
    cancelled before it started) closes its descriptor when it is collected.
    """

    def __init__(self, fd: int, members: list[tuple[int, int]]) -> None:
        self._fd = fd
        self._members = iter(members)
        self._closer = weakref.finalize(self, os.close, fd)

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if not self._closer.alive:
            raise StopIteration
        for offset, length in self._members:
            return os.pread(self._fd, length, offset)
        self.close()
        raise StopIteration

    def close(self) -> None:
        self._closer()


class DeflateAhead:
    """Deflates growing files by key; `finish` waits for a key's members, `members` reads them back.

    `grow`, `drop` and `finish` are called from the event loop and never touch files there;
    create it off the loop (it makes its temp file).
    """

    def __init__(self, level: int, threads: int) -> None:
        self._level = level
        self._deflate = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="deflate-ahead")
        # Hashing and storing happen in submission order, one piece at a time.
        self._commit = ThreadPoolExecutor(max_workers=1, thread_name_prefix="deflate-commit")
        self._store = tempfile.TemporaryFile(prefix="kata-debug-deflated-", buffering=0)
        self._stored = 0  # only the commit thread writes it
        self._entries: dict[object, _Entry] = {}
        self._open_lock = threading.Lock()

    def grow(self, key: object, path: str, size: int, *, final: bool = False) -> None:
        """`path` now holds (at least) `size` flushed bytes of `key`'s content: deflate what is new.

        Never blocks: pieces are queued. Pieces under MIN_PIECE wait for more unless `final`.
        """
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry(path)
        if entry.dropped:
            return
        while size - entry.submitted >= (1 if final else MIN_PIECE):
            n = min(PIECE, size - entry.submitted)
            piece = self._deflate.submit(_deflate, entry, entry.submitted, n, self._level, self._open_lock)
            entry.submitted += n
            entry.last = self._commit.submit(self._keep, entry, piece)

    def _keep(self, entry: _Entry, piece: Future[tuple[bytes, bytes]]) -> None:
        if entry.dropped:
            return
        try:
            raw, member = piece.result()
        except BaseException:
            entry.dropped = True  # later pieces would leave a hole: finish() reports the short size
            raise
        entry.sha.update(raw)
        os.pwrite(self._store.fileno(), member, self._stored)
        entry.members.append((self._stored, len(member)))
        self._stored += len(member)
        entry.size += len(raw)

    async def finish(self, key: object, path: str, size: int) -> Deflated:
        """All of `key`'s content (`size` bytes in `path`) deflated; raises OSError if it could not be."""
        self.grow(key, path, size, final=True)
        entry = self._entries[key]
        if entry.dropped:
            raise OSError(f"{path}: not deflated ahead (dropped)")
        if entry.last is not None:
            await asyncio.wrap_future(entry.last)  # re-raises a failed read
        del self._entries[key]
        if entry.fd >= 0:
            os.close(entry.fd)  # every piece has been read: the last one is committed
        if entry.size != size:
            raise OSError(f"{path}: deflated {entry.size} of {size} bytes")
        return Deflated(entry.size, entry.sha.hexdigest(), entry.members)

    def drop(self, key: object) -> None:
        """Stop deflating `key` (its content goes to the bundle some other way)."""
        entry = self._entries.get(key)
        if entry is not None:
            entry.dropped = True  # queued pieces skip it; its file is closed by close()

    def members(self, deflated: Deflated) -> StoredMembers:
        """The members, read back from the store (on whichever thread iterates).

        The iterator holds its own handle on the store, taken now: the bundle writer splices
        on its own thread and goes on after a cancelled collector has closed this object, and
        a member whose header is already written must get every byte it promised.
        """
        return StoredMembers(os.dup(self._store.fileno()), deflated.members)

    async def close(self) -> None:
        """Cancel what is queued, wait for what runs, release the files."""
        for entry in self._entries.values():
            entry.dropped = True

        def _shutdown() -> None:
            self._deflate.shutdown(wait=True, cancel_futures=True)
            self._commit.shutdown(wait=True, cancel_futures=True)

        await asyncio.to_thread(_shutdown)
        for entry in self._entries.values():
            if entry.fd >= 0:
                os.close(entry.fd)
        self._entries.clear()
        self._store.close()
