"""What `diagnose` keeps in memory of an untrusted bundle is bounded in total, not only per
member, and what it leaves out is said (an analyzer note), never silently dropped."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from kata_debug.analyze.analyzer import Analyzer
from kata_debug.analyze.diagnose import all_signatures, analyze_evidence, load_analyzers
from kata_debug.analyze.evidence import (
    MAX_SKIPPED_LISTED,
    MAX_STRUCTURED_PER_BUNDLE,
    MAX_STRUCTURED_TOTAL,
    NodeEvidence,
    read_bundle_evidence,
)
from kata_debug.cli.diagnose import format_text

KIB = 1 << 10


def _node_bundle(root: Path, members: int, size: int) -> Path:
    """A node bundle whose `host/files/` members (read by cri-config) add up to members*size."""
    (root / "host/files/etc").mkdir(parents=True)
    (root / "manifest.json").write_text(json.dumps({"node": "n1"}))
    for i in range(members):
        (root / f"host/files/etc/f{i:05}.conf").write_bytes(b"x" * size)
    return root


def _read(
    source: str | io.BytesIO, limit: int, per_bundle: int = MAX_STRUCTURED_PER_BUNDLE
) -> tuple[list[Analyzer], NodeEvidence]:
    analyzers = load_analyzers()
    reads = [r for a in analyzers for r in a.reads]
    return analyzers, read_bundle_evidence(
        source, all_signatures(analyzers), reads, label="b", limit=limit, per_bundle=per_bundle
    )


def test_default_caps_are_64_mib_per_bundle_and_256_mib_in_total() -> None:
    assert (MAX_STRUCTURED_PER_BUNDLE, MAX_STRUCTURED_TOTAL) == (64 << 20, 256 << 20)


def test_one_bundle_is_held_to_its_own_cap_below_the_total(tmp_path: Path) -> None:
    bundle = _node_bundle(tmp_path / "b", members=40, size=64 * KIB)
    analyzers, ev = _read(str(bundle), limit=4096 * KIB, per_bundle=1024 * KIB)
    assert sum(len(v) for v in ev.structured.values()) <= 1024 * KIB
    d = analyze_evidence(ev, analyzers, "b")
    assert "past 1 MiB in this bundle" in (next(a for a in d.analyzers if a.id == "cri-config").note or "")


def test_many_members_past_the_total_are_skipped_counted_and_noted(tmp_path: Path) -> None:
    bundle = _node_bundle(tmp_path / "b", members=MAX_SKIPPED_LISTED + 400, size=64 * KIB)
    analyzers, ev = _read(str(bundle), limit=1024 * KIB, per_bundle=4096 * KIB)
    assert sum(len(v) for v in ev.structured.values()) <= 1024 * KIB
    assert len([p for p in ev.structured if p.startswith("host/files/")]) == 16
    # manifest.json comes last (archive order) and is past the total too
    assert ev.skipped_count == MAX_SKIPPED_LISTED + 400 + 1 - 16
    assert len(ev.skipped_members) == MAX_SKIPPED_LISTED  # named up to the cap, the rest counted
    d = analyze_evidence(ev, analyzers, "b")
    notes = {a.id: a.note for a in d.analyzers}
    assert "host/files/etc/f00016.conf" in (notes["cri-config"] or "")
    assert (notes["cri-config"] or "").startswith(
        f"{MAX_SKIPPED_LISTED + 400 + 1 - 16} member(s) it reads were skipped"
    )
    assert "structured members past 1 MiB in total" in (notes["cri-config"] or "")
    assert all(a.status == "ok" for a in d.analyzers)
    assert d.to_json()["analyzers"][0].keys() >= {"id", "status", "error"}
    out = io.StringIO()
    format_text(d, out)
    assert "analyzer cri-config: 585 member(s) it reads were skipped" in out.getvalue()


def test_under_the_cap_nothing_is_noted(tmp_path: Path) -> None:
    bundle = _node_bundle(tmp_path / "b", members=10, size=KIB)
    analyzers, ev = _read(str(bundle), limit=1024 * KIB)
    d = analyze_evidence(ev, analyzers, "b")
    assert ev.skipped_count == 0
    assert all(a.note is None and "note" not in a.to_json() for a in d.analyzers)


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_nested_node_bundles_share_one_total(tmp_path: Path) -> None:
    """A cluster bundle with many nodes: the cap is per diagnosis, not per node."""
    node = {"manifest.json": b'{"node": "n"}'} | {f"host/files/etc/f{i}.conf": b"y" * 64 * KIB for i in range(8)}
    cluster = {f"b/nodes/n{i}.tar": _tar({f"n{i}/" + k: v for k, v in node.items()}) for i in range(6)}
    cluster["b/manifest.json"] = b'{"scope": "cluster"}'
    analyzers, ev = _read(io.BytesIO(_tar(cluster)), limit=1024 * KIB)
    kept = sum(len(v) for n in [ev, *ev.nested] for v in n.structured.values())
    assert len(ev.nested) == 6 and kept <= 1024 * KIB
    assert 6 * 8 - 16 <= sum(n.skipped_count for n in ev.nested) <= 6 * 9 - 15
    d = analyze_evidence(ev, analyzers, "b")
    note = next(a for a in d.analyzers if a.id == "cri-config").note or ""
    assert "nodes/n1.tar!/host/files/etc/f7.conf" in note and "past 1 MiB in total" in note
    assert "nodes/n5.tar!/host/files/etc/f7.conf" in ev.nested[5].skipped[-1]
