"""Content deflated while it is still being written, spliced into a gzip bundle as it is."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import os
import random
import tarfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kata_debug.bundle.deflate_ahead import MIN_PIECE, PIECE, DeflateAhead
from kata_debug.bundle.writer import GZIP_LEVEL, AsyncBundle, BundleWriter, MemberIncomplete
from tests.bundles import read_bundle


def _text(n: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    words = [b"sandbox", b"level=info", b"msg=x", b"virtio_blk", b"0123456789abcdef", b"\n"]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words) + b" "
    return bytes(out[:n])


def test_deflated_members_land_in_the_bundle_between_ordinary_ones() -> None:
    sink = io.BytesIO()
    writer = BundleWriter(sink, "top", "gzip")
    assert writer.deflate_level == GZIP_LEVEL
    body = _text(3 * PIECE + 12345)
    members = [gzip.compress(body[i : i + 100_000], 3, mtime=0) for i in range(0, len(body), 100_000)]
    writer.add_bytes("a/before.txt", b"before\n")
    writer.add_deflated("b/deflated.log", len(body), hashlib.sha256(body).hexdigest(), iter(members))
    writer.add_bytes("a/after.txt", b"after" * 1000)
    writer.close({"schema_version": 1})
    bundle = read_bundle(sink.getvalue())  # checks sizes and hashes against the manifest
    assert bundle.members["b/deflated.log"] == body
    assert bundle.members["a/after.txt"] == b"after" * 1000
    assert [f["path"] for f in bundle.manifest["files"]] == ["a/before.txt", "b/deflated.log", "a/after.txt"]


def test_deflated_content_needs_a_gzip_bundle_and_the_size_it_claims() -> None:
    with pytest.raises(ValueError, match="gzip bundle"):
        BundleWriter(io.BytesIO(), "top", "zstd").add_deflated("x", 1, "0" * 64, [gzip.compress(b"x")])
    assert BundleWriter(io.BytesIO(), "top", "none").deflate_level is None
    writer = BundleWriter(io.BytesIO(), "top", "gzip")
    with pytest.raises(ValueError, match="hold 5 bytes, not 4"):
        writer.add_deflated("x", 4, "0" * 64, [gzip.compress(b"abcde")])


def test_deflated_members_that_fail_part_way_leave_a_valid_archive_that_says_so() -> None:
    """The header is out before the members are read: when they stop early the member is
    finished with NULs at its declared size, listed as incomplete, and the caller is told."""
    body = _text(2 * PIECE)

    def members() -> Iterator[bytes]:
        yield gzip.compress(body[:PIECE], GZIP_LEVEL, mtime=0)
        raise ValueError("I/O operation on closed file")

    sink = io.BytesIO()
    writer = BundleWriter(sink, "top", "gzip")
    with pytest.raises(MemberIncomplete, match=f"closed file; the last {PIECE} bytes are NUL padding"):
        writer.add_deflated("x.log", len(body), hashlib.sha256(body).hexdigest(), members())
    writer.add_bytes("after.txt", b"after\n")
    writer.close({"schema_version": 1})
    with tarfile.open(fileobj=io.BytesIO(sink.getvalue()), mode="r:gz") as tar:
        content = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    assert content["top/x.log"] == body[:PIECE] + b"\0" * PIECE
    assert content["top/after.txt"] == b"after\n"
    files = {f["path"]: f for f in json.loads(content["top/manifest.json"])["files"]}
    assert files["x.log"]["sha256"] is None  # what the padded member hashes to is not known here
    assert "NUL padding" in files["x.log"]["incomplete"]
    assert "incomplete" not in files["after.txt"]


async def test_a_growing_file_is_deflated_piece_by_piece_into_exactly_its_content(tmp_path: Path) -> None:
    path = tmp_path / "growing.log"
    body = _text(5 * PIECE + 777)
    ahead = DeflateAhead(level=3, threads=2)
    try:
        with open(path, "wb") as fh:
            written = 0
            for step in (1000, MIN_PIECE - 1, MIN_PIECE + 5, PIECE + 3, 2 * PIECE + PIECE // 3, len(body)):
                fh.write(body[written:step])
                fh.flush()
                written = step
                ahead.grow("k", str(path), written)
        deflated = await ahead.finish("k", str(path), len(body))
        members = list(ahead.members(deflated))
        assert deflated.size == len(body) and deflated.sha256 == hashlib.sha256(body).hexdigest()
        assert b"".join(gzip.decompress(m) for m in members) == body
        assert max(len(gzip.decompress(m)) for m in members) <= PIECE
        assert all(len(gzip.decompress(m)) >= MIN_PIECE for m in members[:-1])  # small pieces waited
    finally:
        await ahead.close()


async def test_dropped_or_shrunk_content_is_refused_not_spliced(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    path.write_bytes(_text(3 * MIN_PIECE))
    ahead = DeflateAhead(level=3, threads=1)
    try:
        ahead.grow("dropped", str(path), 2 * MIN_PIECE)
        ahead.drop("dropped")
        with pytest.raises(OSError, match="dropped"):
            await ahead.finish("dropped", str(path), 3 * MIN_PIECE)
        with pytest.raises(OSError, match="shrank"):
            await ahead.finish("short", str(path), 4 * MIN_PIECE)
    finally:
        await ahead.close()
    assert all(
        not str(os.readlink(f"/proc/self/fd/{fd}")).endswith("a.log")
        for fd in map(int, os.listdir("/proc/self/fd"))
        if os.path.exists(f"/proc/self/fd/{fd}")
    )


class _HoldingTap:
    """Holds the writer thread inside a member's content until released: the moment a
    collector's timeout, the deadline or SIGINT can land."""

    def __init__(self) -> None:
        self.inside = threading.Event()
        self.release = threading.Event()

    def member(self, path: str, size: int) -> Callable[[bytes], None]:
        def sink(data: bytes) -> None:
            self.inside.set()
            self.release.wait(30)

        return sink

    def done(self, path: str) -> None:
        pass


async def test_a_member_being_spliced_when_its_collector_is_cancelled_is_still_written_whole(
    tmp_path: Path,
) -> None:
    """The collector's cleanup closes its DeflateAhead as soon as it is cancelled, while the
    writer thread is still splicing that content: the member must come out whole anyway
    (its header already promised every byte), not end early and break the archive."""
    path = tmp_path / "containerd.log"
    body = _text(3 * PIECE + 4321)
    await asyncio.to_thread(path.write_bytes, body)
    ahead = await asyncio.to_thread(DeflateAhead, GZIP_LEVEL, 2)
    sink = io.BytesIO()
    bundle = AsyncBundle(BundleWriter(sink, "top", "gzip"))
    tap = _HoldingTap()
    bundle.writer.tap = tap
    try:
        deflated = await ahead.finish("f", str(path), len(body))
        adding = asyncio.create_task(
            bundle.add_deflated(
                "shim-logs/files/containerd.log", deflated.size, deflated.sha256, ahead.members(deflated)
            )
        )
        assert await asyncio.to_thread(tap.inside.wait, 30)
        adding.cancel()  # what --timeout does to the collector awaiting it
        await asyncio.gather(adding, return_exceptions=True)
    finally:
        await ahead.close()  # the collector's `finally`, while the writer thread is mid-member
        tap.release.set()
    await bundle.run(bundle.writer.close, {"schema_version": 1})
    written = read_bundle(sink.getvalue())  # a valid archive whose sizes and hashes match the manifest
    assert written.members["shim-logs/files/containerd.log"] == body
