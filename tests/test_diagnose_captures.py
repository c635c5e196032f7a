"""`diagnose` reads the node agent's captures inside a node bundle: the failed sandbox's lines
as they were when it failed are often the only evidence left by the time `collect` runs.

The bundles are the report tests' (the real `collect` over a synthetic Kata node whose spool
holds one capture of a sandbox that failed on a missing /dev/kvm).
"""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
from pathlib import Path

import pytest

from kata_debug.analyze.diagnose import diagnose
from kata_debug.cli.diagnose import format_text
from tests.test_report import SB2, _cluster, _collect, _node
from tests.test_report_sections import CAPTURE, _capture


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same node collected without and with the capture in its spool."""
    base = tmp_path_factory.mktemp("diagnose-captures")
    plain = asyncio.run(_collect(_node(base / "plain"), base / "plain.tar.gz"))
    root = _node(base / "captured")
    _capture(root / "var/lib/kata-debug/traces")
    return plain, asyncio.run(_collect(root, base / "captured.tar.gz"))


def _kvm(findings: list, prefix: str) -> list:
    return [
        f
        for f in findings
        if f.id == "kvm-unavailable"
        and any(e.path.startswith(prefix + f"captures/{CAPTURE}!/logs/") for e in f.evidence)
    ]


def test_a_cause_only_a_capture_shows_is_found_with_evidence_inside_the_capture(bundles: tuple[Path, Path]) -> None:
    plain, captured = bundles
    assert not _kvm(diagnose(str(plain)).findings, ""), "the node's own logs no longer show the failure"
    found = _kvm(diagnose(str(captured)).findings, "")
    assert len(found) == 1 and found[0].sandbox == SB2 and found[0].node == "kata-node-1"


def test_a_capture_repeats_no_finding_the_node_bundle_already_makes(bundles: tuple[Path, Path]) -> None:
    plain, captured = bundles
    before = diagnose(str(plain)).findings
    after = diagnose(str(captured)).findings
    keys = [(f.id, f.node, f.sandbox) for f in after]
    assert len(keys) == len(set(keys)), "one finding per cause, node and sandbox"
    assert {(f.id, f.sandbox) for f in before} <= {(f.id, f.sandbox) for f in after}


def test_captures_of_a_node_in_a_cluster_bundle_are_read_too(bundles: tuple[Path, Path], tmp_path: Path) -> None:
    _, captured = bundles
    cluster = _cluster(tmp_path, captured)
    result = diagnose(str(cluster))
    assert _kvm(result.findings, "nodes/kata-node-1/bundle.tar.gz!/")
    assert json.loads(json.dumps(result.to_json()))["nodes"] == ["kata-node-1"]


def test_a_damaged_capture_is_named_and_the_node_still_diagnosed(bundles: tuple[Path, Path], tmp_path: Path) -> None:
    _, captured = bundles
    out = tmp_path / "damaged.tar.gz"
    with tarfile.open(captured) as src, tarfile.open(out, "w:gz") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read() if m.isfile() else None  # type: ignore[union-attr]
            if data is not None and m.name.endswith(CAPTURE):
                data = b"not a tarball at all"
                m.size = len(data)
            dst.addfile(m, None if data is None else io.BytesIO(data))
    result = diagnose(str(out))
    assert [u.split(": ", 1)[0] for u in result.unread] == [f"captures/{CAPTURE}"]
    assert not _kvm(result.findings, "")
    text = io.StringIO()
    format_text(result, text)
    assert f"not read: captures/{CAPTURE}: " in text.getvalue(), "said in the output, never silently left out"


def test_collect_writes_the_same_capture_findings_diagnose_reads_back(bundles: tuple[Path, Path]) -> None:
    """`collect` analyses while it writes (no read-back): its analysis/findings.json must
    hold what `diagnose` finds in the finished bundle, captures included."""
    _, captured = bundles
    with tarfile.open(captured) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/analysis/findings.json"))
        written = json.loads(tar.extractfile(member).read())  # type: ignore[union-attr]
    kvm = [f for f in written["findings"] if f["id"] == "kvm-unavailable"]
    assert kvm and any(e["path"].startswith(f"captures/{CAPTURE}!/logs/") for e in kvm[0]["evidence"])
    read_back = diagnose(str(captured)).findings
    assert sorted((f["id"], f.get("sandbox") or "") for f in written["findings"]) == sorted(
        (f.id, f.sandbox or "") for f in read_back
    )
