"""BundleWriter stores already-compressed members (node bundles) instead of deflating them again."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import tarfile
from pathlib import Path

from kata_debug.bundle.writer import BundleWriter
from tests.bundles import read_bundle


def _bundle(precompressed: bool, payload: bytes) -> bytes:
    sink = io.BytesIO()
    w = BundleWriter(sink, "top")
    w.add_bytes("cluster/pods.json", b'{"pods": []}\n' * 2000)
    w.add_fileobj("nodes/n1/bundle.tar.gz", io.BytesIO(payload), len(payload), precompressed=precompressed)
    w.add_bytes("cluster/after.json", b'{"after": true}\n' * 2000)
    w.close({"kind": "cluster"})
    return sink.getvalue()


def test_precompressed_member_reads_back_identically_with_every_gzip_reader(tmp_path: Path) -> None:
    payload = gzip.compress(os.urandom(2 << 20))
    data = _bundle(True, payload)
    bundle = read_bundle(data)
    assert bundle.members["nodes/n1/bundle.tar.gz"] == payload
    assert bundle.members["cluster/after.json"].startswith(b'{"after": true}')
    path = tmp_path / "c.tar.gz"
    path.write_bytes(data)
    assert subprocess.run(["gzip", "-t", str(path)]).returncode == 0
    listing = subprocess.run(["tar", "tzf", str(path)], capture_output=True, text=True, check=True).stdout.split()
    assert "top/nodes/n1/bundle.tar.gz" in listing and listing[-1] == "top/manifest.json"
    with tarfile.open(path) as t:
        assert t.extractfile("top/nodes/n1/bundle.tar.gz").read() == payload  # type: ignore[union-attr]


def test_precompressed_bytes_are_stored_verbatim_not_deflated_again() -> None:
    # Compressible bytes make the difference visible: stored, they keep their full size.
    payload = b"kata" * (1 << 20)
    stored = _bundle(True, payload)
    deflated = _bundle(False, payload)
    assert len(payload) < len(stored) < len(payload) * 1.01
    assert len(deflated) < len(payload) // 50
    assert read_bundle(stored).members["nodes/n1/bundle.tar.gz"] == payload
