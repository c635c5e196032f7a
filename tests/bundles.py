"""Read a support bundle back the way a maintainer would: tar, manifest, members."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard


@dataclass
class Bundle:
    top: str
    members: dict[str, bytes]  # path relative to the top directory -> content
    manifest: dict[str, Any]

    def json(self, path: str) -> Any:
        return json.loads(self.members[path])

    def collector(self, name: str) -> dict[str, Any]:
        return next(c for c in self.manifest["collectors"] if c["name"] == name)


def open_tar(data: bytes) -> tarfile.TarFile:
    if data[:4] == b"\x28\xb5\x2f\xfd":
        data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
        return tarfile.open(fileobj=io.BytesIO(data), mode="r:")
    return tarfile.open(fileobj=io.BytesIO(data), mode="r:*")


def read_bundle(source: Path | bytes) -> Bundle:
    """Parse a bundle and check its own integrity claims (manifest last, sizes, sha256)."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    members: dict[str, bytes] = {}
    order: list[str] = []
    with open_tar(data) as tar:
        names = [m for m in tar.getmembers() if m.isfile()]
        tops = {m.name.split("/", 1)[0] for m in tar.getmembers()}
        assert len(tops) == 1, f"one top-level directory expected, got {tops}"
        top = tops.pop()
        for m in names:
            f = tar.extractfile(m)
            assert f is not None
            rel = m.name.split("/", 1)[1]
            members[rel] = f.read()
            order.append(rel)
    assert order and order[-1] == "manifest.json", "manifest.json must be the last member"
    manifest = json.loads(members["manifest.json"])
    listed = {f["path"]: f for f in manifest["files"]}
    assert set(listed) == set(members) - {"manifest.json"}, "manifest files must list every other member"
    for path, rec in listed.items():
        assert rec["size"] == len(members[path]), path
        assert rec["sha256"] == hashlib.sha256(members[path]).hexdigest(), path
    return Bundle(top=top, members=members, manifest=manifest)
