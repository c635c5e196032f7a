"""Node files a collector lists and then reads are read inside the host root, never by a path
that may by then lead elsewhere (issue 9: "host files are opened once ... never reopened by path").

The shim-logs side (logs measured, then copied or scanned) is in test_shim_logs_scanner.py;
this covers the captures collector, whose records and tarballs are listed, then read.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from kata_debug.collect.runner import CollectOptions, run_collection
from kata_debug.collectors.captures import list_captures
from kata_debug.node.paths import CAPTURES_SUBDIR, TRACE_SPOOL_DIR
from tests.bundles import read_bundle


def _record(sid: str, reason: str, line: str) -> str:
    when = datetime.now(UTC) - timedelta(minutes=5)
    return json.dumps({"time": when.isoformat(), "sandbox": sid, "reason": reason, "line": line})


async def test_capture_records_and_tarballs_planted_as_outside_links_are_never_read(tmp_path: Path) -> None:
    root = tmp_path / "host"
    captures = root / TRACE_SPOOL_DIR.lstrip("/") / CAPTURES_SUBDIR
    captures.mkdir(parents=True)
    outside_json = tmp_path / "outside.json"
    outside_json.write_text(_record("sbside", "OUTSIDE-REASON", "OUTSIDE-LINE"))
    outside_tar = tmp_path / "outside.tar.gz"
    outside_tar.write_bytes(b"OUTSIDE-TARBALL")
    stamp = (datetime.now(UTC) - timedelta(minutes=5)).strftime("%Y%m%dT%H%M%SZ")
    (captures / f"{stamp}-sbgood.tar.gz").write_bytes(b"inside-capture")
    (captures / f"{stamp}-sbgood.json").write_text(_record("sbgood", "error-line", "inside-line"))
    (captures / f"{stamp}-sbside.tar.gz").write_bytes(b"inside-capture-2")
    (captures / f"{stamp}-sbside.json").symlink_to(outside_json)
    (captures / f"{stamp}-sbevil.tar.gz").symlink_to(outside_tar)
    (captures / f"{stamp}-sbevil.json").write_text(_record("sbevil", "error-line", "evil"))

    listed = {r.sandbox: r for r in list_captures(captures)}
    assert set(listed) == {"sbgood", "sbside"}, "a capture that is a link is not one the agent wrote"
    assert listed["sbgood"].line == "inside-line" and listed["sbside"].reason == "unknown"

    out = tmp_path / "b.tgz"
    await run_collection(CollectOptions(host_root=root, output=str(out), collectors=["captures"]))
    bundle = read_bundle(out)
    raw = b"".join(bundle.members.values())
    assert b"OUTSIDE" not in raw
    index = bundle.json("captures/index.json")["captures"]
    assert {(c["sandbox"], c["reason"], c["line"]) for c in index} == {
        ("sbgood", "error-line", "inside-line"),
        ("sbside", "unknown", None),
    }
    assert bundle.members[f"captures/{stamp}-sbgood.tar.gz"] == b"inside-capture"


def test_the_capture_watch_never_follows_a_log_swapped_for_an_outside_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node agent follows log files across rotation, reopening them by node path. Here,
    right after every lookup the agent makes, the log becomes a link to a file outside the
    root (the worst moment a rotation or an attacker could pick): what it reads is the
    node's lines or nothing, never the outside file's."""
    from kata_debug.agent.watch import FileFollower
    from kata_debug.node.hostroot import HostRoot

    root = tmp_path / "host"
    log = root / "var/log/containerd.log"
    log.parent.mkdir(parents=True)
    secret = tmp_path / "secret.log"
    secret.write_bytes(b"OUTSIDE\n" * 10)

    def swap() -> None:
        if not log.is_symlink():
            log.unlink()
            log.symlink_to(secret)

    for name in ("open", "resolve", "stat"):
        real = getattr(HostRoot, name)

        def then_swap(self: HostRoot, path: Any, _real: Any = real) -> Any:
            try:
                return _real(self, path)
            finally:
                swap()

        monkeypatch.setattr(HostRoot, name, then_swap)
    seen: list[str] = []
    log.write_bytes(b"start\n")
    follower = FileFollower(HostRoot.at(root), ["/var/log/containerd.log"])
    try:
        for i in range(5):
            log.unlink()
            log.write_bytes(f"inside {i}\n".encode())  # rotated: a new file, then a link again
            seen += follower.poll()
            seen += follower.poll()
    finally:
        follower.close()
    assert "OUTSIDE" not in seen
    assert seen and all(line.startswith("inside") for line in seen), seen  # the node's lines do come through
