"""`kata-debug captures` as an operator scripts it: `--format json` is one object, and `export`
copies a capture out of the spool without following a link out of the host root."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.conftest import kata_debug
from tests.test_report_sections import CAPTURE, SB2, _capture

SPOOL = "var/lib/kata-debug/traces"


def _root(tmp_path: Path) -> Path:
    root = tmp_path / "node"
    _capture(root / SPOOL)
    return root


def test_the_listing_as_json_is_one_object_with_every_capture(tmp_path: Path) -> None:
    root = _root(tmp_path)
    proc = kata_debug("captures", "--host-root", str(root), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(proc.stdout)
    assert [(c["id"], c["sandbox"], c["reason"]) for c in listed["captures"]] == [(CAPTURE, SB2, "error-line")]
    assert listed["directory"].endswith(f"{SPOOL}/captures")


def test_an_empty_spool_as_json_is_an_empty_list_not_a_sentence(tmp_path: Path) -> None:
    proc = kata_debug("captures", "--host-root", str(tmp_path), "--format", "json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["captures"] == []


def test_export_copies_the_capture_byte_for_byte(tmp_path: Path) -> None:
    root = _root(tmp_path)
    out = tmp_path / "out.tar.gz"
    proc = kata_debug("captures", "export", CAPTURE, "-o", str(out), "--host-root", str(root))
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == (root / SPOOL / "captures" / CAPTURE).read_bytes()


def test_export_of_a_capture_swapped_for_a_link_out_of_the_root_copies_nothing_from_outside(tmp_path: Path) -> None:
    root = _root(tmp_path)
    outside = tmp_path / "outside-secret"
    outside.write_text("not the node's: the host running kata-debug\n")
    capture = root / SPOOL / "captures" / CAPTURE
    capture.unlink()
    os.symlink(outside, capture)
    out = tmp_path / "out.tar.gz"
    proc = kata_debug("captures", "export", CAPTURE, "-o", str(out), "--host-root", str(root))
    assert proc.returncode == 2 and b"no such capture" in proc.stderr and b"Traceback" not in proc.stderr
    assert not out.exists() or b"not the node's" not in out.read_bytes()


def test_a_record_with_a_time_that_is_no_time_is_listed_from_its_name_and_collect_still_carries_it(
    tmp_path: Path,
) -> None:
    root = _root(tmp_path)
    record = root / SPOOL / "captures" / CAPTURE.replace(".tar.gz", ".json")
    doc = json.loads(record.read_text())
    record.write_text(json.dumps({**doc, "time": "yesterday-ish"}))
    listed = json.loads(kata_debug("captures", "--host-root", str(root), "--format", "json").stdout)
    assert [(c["id"], c["reason"]) for c in listed["captures"]] == [(CAPTURE, "unknown")]
    out = tmp_path / "b.tar.gz"
    proc = kata_debug(
        "collect", "--host-root", str(root), "-c", "captures", "-o", str(out), "--since", "36500d", "--format", "json"
    )
    summary = json.loads(proc.stdout)
    captures = next(c for c in summary["collectors"] if c["name"] == "captures")
    assert captures["status"] == "ok", captures
