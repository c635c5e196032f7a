"""Analyse a bundle while it is written: `collect` writes `analysis/findings.json` before
its manifest without reading the bundle back (it may be a pipe, and reading gigabytes twice
would double the cost).

`EvidenceTap` is the bundle writer's member tap: it keeps what the analyzers declared in
`reads` and pushes log members through the same line scanner `diagnose` uses, on the
writer's thread, as the content goes past.
"""

from __future__ import annotations

import fnmatch
import io
import json
from collections.abc import Callable

from kata_debug.analyze.analyzer import Analyzer
from kata_debug.analyze.diagnose import Diagnosis, all_signatures, analyze_evidence, load_analyzers
from kata_debug.analyze.evidence import (
    BASE_READS,
    MAX_CAPTURE_TAP_BYTES,
    MAX_CAPTURES_READ,
    MAX_STRUCTURED_PER_BUNDLE,
    LineFeeder,
    LineScanner,
    NodeEvidence,
    is_capture_member,
    is_log_member,
    read_capture,
)
from kata_debug.bundle.reader import MAX_STRUCTURED_BYTES, BundleError
from kata_debug.bundle.writer import AsyncBundle

#: Where a bundle's own findings are written.
FINDINGS_MEMBER = "analysis/findings.json"


class EvidenceTap:
    """A `kata_debug.bundle.writer.MemberTap` that builds the evidence `diagnose` reads."""

    def __init__(self, node: str | None, analyzers: list[Analyzer] | None = None) -> None:
        self.analyzers = analyzers if analyzers is not None else load_analyzers()
        self._scanner = LineScanner(all_signatures(self.analyzers))
        self._keep = (*BASE_READS, *(r for a in self.analyzers for r in a.reads))
        self.evidence = NodeEvidence(node=node)
        self._feeders: dict[str, LineFeeder] = {}
        self._buffers: dict[str, bytearray] = {}
        self._captures: dict[str, bytearray] = {}
        self._kept = 0

    def member(self, path: str, size: int) -> Callable[[bytes], None] | None:
        ev = self.evidence
        ev.list_member(path)
        if is_log_member(path):
            feeder = self._feeders[path] = self._scanner.feeder(path, ev.hits)
            ev.log_members.append(path)
            return feeder.feed
        if is_capture_member(path):
            # Read as `diagnose` reads it in the finished bundle, so both give one answer.
            if len(ev.captures) + len(self._captures) >= MAX_CAPTURES_READ:
                ev.unread.append(f"{path}: not read (more than {MAX_CAPTURES_READ} captures in this bundle)")
                return None
            if size > MAX_CAPTURE_TAP_BYTES:
                ev.unread.append(f"{path}: not read ({size} bytes, more than {MAX_CAPTURE_TAP_BYTES >> 20} MiB)")
                return None
            capture = self._captures[path] = bytearray()
            return capture.extend
        if not any(fnmatch.fnmatchcase(path, p) for p in self._keep):
            return None
        if size > MAX_STRUCTURED_BYTES or self._kept + size > MAX_STRUCTURED_PER_BUNDLE:
            ev.skip(path, f"{size} bytes, not kept for analysis")
            return None
        self._kept += size
        buf = self._buffers[path] = bytearray()
        return buf.extend

    def done(self, path: str) -> None:
        feeder = self._feeders.pop(path, None)
        if feeder is not None:
            self.evidence.log_lines += feeder.close()
        buf = self._buffers.pop(path, None)
        if buf is not None:
            self.evidence.structured[path] = bytes(buf)
        capture = self._captures.pop(path, None)
        if capture is not None:
            try:
                self.evidence.captures.append(read_capture(io.BytesIO(capture), self._scanner, self._keep, path))
            except BundleError as exc:
                self.evidence.unread.append(f"{path}: {exc}")

    def diagnose(self, bundle: str) -> Diagnosis:
        return analyze_evidence(self.evidence, self.analyzers, bundle)


def evidence_tap(node: str | None) -> EvidenceTap | None:
    """The analyzers, ready to watch a bundle being written; None when they cannot load
    (collecting never depends on analysing). Blocking: imports the analyzer modules."""
    try:
        return EvidenceTap(node)
    except Exception:  # noqa: BLE001 - an analyzer module that does not import
        return None


async def write_findings(bundle: AsyncBundle, tap: EvidenceTap | None, output: str) -> Diagnosis | None:
    """Run the analyzers on what was written and add `analysis/findings.json` (call it
    before the manifest). A failure here costs the findings, never the bundle."""
    bundle.writer.tap = None
    if tap is None:
        return None
    try:
        # "bundle": "." inside the bundle: its evidence paths are relative to the bundle itself,
        # wherever it is moved or uploaded (and the member does not depend on --output).
        diagnosis = await bundle.run(tap.diagnose, ".")
    except Exception:  # noqa: BLE001 - the analyzers are not allowed to sink a collection
        return None
    data = json.dumps(diagnosis.to_json(), indent=2).encode() + b"\n"
    await bundle.add_bytes(FINDINGS_MEMBER, data)
    diagnosis.bundle = output
    return diagnosis
