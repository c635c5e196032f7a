"""The bundle is a valid tar stream, manifest last, every member hashed, in every compression."""

import io
from pathlib import Path

import pytest

from kata_debug.bundle.writer import BundleWriter, MemberIncomplete, OutputTarget, Spool
from kata_debug.errors import OutputError
from tests.bundles import read_bundle


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_members_and_manifest_round_trip(compression: str) -> None:
    sink = io.BytesIO()
    w = BundleWriter(sink, "kata-debug-n-1", compression)  # type: ignore[arg-type]
    w.add_bytes("host/facts.json", b'{"a": 1}')
    w.add_bytes("shim-logs/journal/kata.log", b"line\n" * 1000)
    w.close({"schema_version": 1, "collectors": []})
    bundle = read_bundle(sink.getvalue())
    assert bundle.top == "kata-debug-n-1"
    assert bundle.members["shim-logs/journal/kata.log"] == b"line\n" * 1000
    assert [f["path"] for f in bundle.manifest["files"]] == ["host/facts.json", "shim-logs/journal/kata.log"]


def test_a_source_that_shrinks_mid_copy_still_yields_a_valid_archive() -> None:
    sink = io.BytesIO()
    w = BundleWriter(sink, "t", "none")
    w.add_fileobj("log", io.BytesIO(b"short"), 10)  # header promised 10 bytes
    w.close({})
    bundle = read_bundle(sink.getvalue())
    assert bundle.members["log"] == b"short" + b"\0" * 5
    assert bundle.manifest["files"][0]["incomplete"] == "the source ended early; the last 5 bytes are NUL padding"


class _FailsAfter(io.RawIOBase):
    """A source that hands out `good` bytes, then fails the way a file closed under a reader does."""

    def __init__(self, good: bytes) -> None:
        self._good = io.BytesIO(good)

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self._good.read(n)
        if not data:
            raise ValueError("I/O operation on closed file")
        return data


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_a_source_that_fails_mid_member_is_padded_to_its_size_and_marked_incomplete(compression: str) -> None:
    sink = io.BytesIO()
    w = BundleWriter(sink, "t", compression)  # type: ignore[arg-type]
    good = b"0123456789abcde\n" * (2 << 16)  # two whole copy buffers, then the failure
    with pytest.raises(MemberIncomplete, match="closed file; the last 100000 bytes are NUL padding"):
        w.add_fileobj("shim-logs/files/containerd.log", _FailsAfter(good), len(good) + 100_000)
    w.add_bytes("shim-logs/summary.json", b"{}")
    w.close({})
    bundle = read_bundle(sink.getvalue())  # valid archive; sizes and hashes match the manifest
    assert bundle.members["shim-logs/files/containerd.log"] == good + b"\0" * 100_000
    files = {f["path"]: f for f in bundle.manifest["files"]}
    assert "NUL padding" in files["shim-logs/files/containerd.log"]["incomplete"]
    assert "incomplete" not in files["shim-logs/summary.json"]


def test_spool_keeps_the_newest_whole_lines_within_its_cap() -> None:
    spool = Spool(max_bytes=25)
    for i in range(10):
        spool.write(f"line {i:02d}\n".encode())
    reader, size, dropped = spool.tail()
    kept = reader.read(size)
    assert kept == b"line 07\nline 08\nline 09\n"  # 24 bytes: whole lines only
    assert dropped == 80 - 24


def test_member_paths_cannot_escape_the_top_directory() -> None:
    w = BundleWriter(io.BytesIO(), "t", "none")
    for bad in ("../x", "/etc/passwd", "a/../../b"):
        with pytest.raises(ValueError):
            w.add_bytes(bad, b"")


def test_output_is_written_as_partial_then_renamed(tmp_path: Path) -> None:
    target = OutputTarget(str(tmp_path / "b.tar.gz"))
    fh = target.open()
    assert (tmp_path / "b.tar.gz.partial").exists() and not (tmp_path / "b.tar.gz").exists()
    fh.write(b"x")
    target.commit()
    assert (tmp_path / "b.tar.gz").read_bytes() == b"x"
    assert not (tmp_path / "b.tar.gz.partial").exists()


def test_output_into_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="does not exist"):
        OutputTarget(str(tmp_path / "nope" / "b.tar.gz")).open()
