"""The line scanner: one prefilter over raw bytes, the same answer however the bytes arrive."""

from __future__ import annotations

import io

from hypothesis import given, settings
from hypothesis import strategies as st

from kata_debug.analyze.diagnose import all_signatures, load_analyzers
from kata_debug.analyze.evidence import LineScanner

LINES = [
    "level=info msg=ok",
    'level=error msg="qemu-system-x86_64: Could not access KVM kernel module: No such file or directory" sandbox=abc',
    "ctr: open /dev/vhost-vsock: no such device: unknown",
    'level=warning msg="Could not add /dev/mshv to the devices cgroup"',
    'error="failed to get sandbox runtime: no runtime for \\"kata\\" is configured"',
    "",
    "x" * 300,
]


def _scan_chunks(data: bytes, sizes: list[int]) -> tuple[dict[str, list[tuple[int, str]]], int]:
    scanner = LineScanner(all_signatures(load_analyzers()))
    hits: dict = {}
    feeder = scanner.feeder("log", hits)
    pos = 0
    for n in sizes:
        feeder.feed(data[pos : pos + n])
        pos += n
    feeder.feed(data[pos:])
    lines = feeder.close()
    return {k: [(m.line, m.text) for m in v.first] for k, v in hits.items()}, lines


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(LINES), max_size=30), st.lists(st.integers(min_value=1, max_value=97), max_size=40))
def test_chunk_boundaries_do_not_change_matches_or_line_numbers(lines: list[str], sizes: list[int]) -> None:
    data = "".join(line + "\n" for line in lines).encode()
    whole, count = _scan_chunks(data, [])
    assert _scan_chunks(data, sizes) == (whole, count)
    assert count == len(lines)
    expected = [(i + 1, line) for i, line in enumerate(lines) if "KVM kernel module" in line]
    assert whole.get("kvm.qemu", []) == expected[:8]


def test_noise_lines_match_no_signature() -> None:
    scanner = LineScanner(all_signatures(load_analyzers()))
    assert scanner.match_line('level=warning msg="Could not add /dev/mshv to the devices cgroup" source=cgroups') == []
    hits: dict = {}
    assert scanner.scan("log", io.BytesIO(b"a\nb\nc"), hits) == 3 and hits == {}


def test_a_line_matches_in_its_escaped_form_too() -> None:
    """containerd quotes the shim's message: `\\"` inside `error="..."`."""
    scanner = LineScanner(all_signatures(load_analyzers()))
    found = scanner.match_line(
        r'error="failed to mount \"/run/kata-containers/shared/containers/c1/rootfs\" to \"/run/kata-containers/c1/rootfs\", with error: ENOENT: No such file"'
    )
    assert [s.name for s, _ in found] == ["rootfs.enoent"]


def test_a_broken_analyzer_is_reported_and_the_others_still_run() -> None:
    from kata_debug.analyze.analyzer import Analyzer
    from kata_debug.analyze.base import Finding
    from kata_debug.analyze.diagnose import analyze_evidence
    from kata_debug.analyze.evidence import EvidenceView, NodeEvidence

    class Broken(Analyzer):
        name = "broken"
        causes = ()

        def analyze(self, view: EvidenceView) -> list[Finding]:
            raise KeyError("facts")

    analyzers = [Broken(), *load_analyzers()]
    scanner = LineScanner(all_signatures(analyzers))
    ev = NodeEvidence(node="n1")
    ev.log_members.append("shim-logs/x.log")
    ev.log_lines = scanner.scan(
        "shim-logs/x.log", io.BytesIO(b"ctr: open /dev/vhost-vsock: no such device: unknown\n"), ev.hits
    )
    d = analyze_evidence(ev, analyzers, "b")
    assert d.analyzers[0].to_json() == {"id": "broken", "status": "failed", "error": "KeyError: 'facts'"}
    assert all(a.status == "ok" for a in d.analyzers[1:])
    assert [f.id for f in d.findings] == ["vhost-vsock-unavailable"] and d.findings[0].node == "n1"
