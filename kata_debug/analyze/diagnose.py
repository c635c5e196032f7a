"""Diagnose a bundle: one read, every analyzer on every node's evidence, ranked findings.

Blocking (it reads the bundle): callers on an event loop run it in a worker thread.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import IO, Any, Literal

from kata_debug import analyze as registry
from kata_debug.analyze.analyzer import Analyzer
from kata_debug.analyze.base import Finding, Signature
from kata_debug.analyze.evidence import (
    BASE_READS,
    EvidenceView,
    NodeEvidence,
    read_bundle_evidence,
)
from kata_debug.analyze.ranking import rank

AnalyzerState = Literal["ok", "failed"]


@dataclass
class AnalyzerStatus:
    id: str
    status: AnalyzerState
    error: str | None = None
    #: What the analyzer did not get to see (members the read caps left out): its findings
    #: may be incomplete. In the JSON only when there is one.
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "status": self.status, "error": self.error}
        if self.note:
            out["note"] = self.note
        return out


def _notes(analyzers: list[Analyzer], evs: list[NodeEvidence], statuses: dict[str, AnalyzerStatus]) -> None:
    """Tell each analyzer which of the members it declared in `reads` were not read, and why."""
    unnamed = sum(ev.skipped_count - len(ev.skipped_members) for ev in evs)
    for analyzer in analyzers:
        patterns = (*BASE_READS, *analyzer.reads)
        missed = [
            (ev.path_prefix + p, why)
            for ev in evs
            for p, why in ev.skipped_members
            if any(fnmatch.fnmatchcase(p, r) for r in patterns)
        ]
        if not missed and not unnamed:
            continue
        reasons = "; ".join(dict.fromkeys(why for _, why in missed))
        shown = ", ".join(p for p, _ in missed[:3]) + (f" and {len(missed) - 3} more" if len(missed) > 3 else "")
        if unnamed:
            # Past the named ones only a count is kept: any of them may be one it reads.
            shown += f"{', ' if shown else ''}{unnamed} more skipped member(s) not named"
        statuses[analyzer.name].note = (
            f"{len(missed) + unnamed if unnamed else len(missed)} member(s) it reads were skipped"
            f"{f' ({reasons})' if reasons else ''}, findings may be incomplete: {shown}"
        )


@dataclass
class Diagnosis:
    bundle: str
    cluster: bool
    nodes: list[str]
    findings: list[Finding]
    analyzers: list[AnalyzerStatus]
    log_lines: int = 0
    skipped: list[str] = field(default_factory=list)
    #: Nested bundles (nodes' and captures) that could not be read, each with why.
    unread: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 without error findings, 1 with (input errors are raised before, exit 2)."""
        return 1 if any(f.severity == "error" for f in self.findings) else 0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"bundle": self.bundle}
        if self.cluster:
            out["nodes"] = self.nodes
        else:
            out["node"] = self.nodes[0] if self.nodes else None
        out["findings"] = [f.to_json(with_node=self.cluster) for f in self.findings]
        out["analyzers"] = [a.to_json() for a in self.analyzers]
        return out


def load_analyzers() -> list[Analyzer]:
    return [registry.load(name)() for name in registry.REGISTRY]


def all_signatures(analyzers: list[Analyzer]) -> list[Signature]:
    return [s for a in analyzers for s in a.signatures]


def run_analyzers(analyzers: list[Analyzer], view: EvidenceView, statuses: dict[str, AnalyzerStatus]) -> list[Finding]:
    """Every analyzer on one view; a broken analyzer is recorded, the others still run."""
    findings: list[Finding] = []
    for analyzer in analyzers:
        status = statuses.setdefault(analyzer.name, AnalyzerStatus(analyzer.name, "ok"))
        try:
            found = analyzer.analyze(view)
        except Exception as exc:  # one analyzer never sinks the diagnosis
            where = f" (node {view.node})" if view.cluster is False and view.prefix else ""
            status.status = "failed"
            status.error = status.error or f"{type(exc).__name__}: {exc}{where}"
            continue
        for f in found:
            f.node = f.node or view.node
        findings.extend(found)
    return findings


def analyze_evidence(ev: NodeEvidence, analyzers: list[Analyzer], bundle: str) -> Diagnosis:
    """Findings for a bundle already read: a node bundle, or a cluster bundle and its nodes."""
    statuses: dict[str, AnalyzerStatus] = {}
    cluster = bool(ev.nested) or any(m.startswith("cluster/") for m in ev.members)
    views: list[EvidenceView] = [EvidenceView(ev, cluster=cluster)]
    views += [EvidenceView(n) for n in ev.nested]
    findings: list[Finding] = []
    for view in views:
        findings.extend(run_analyzers(analyzers, view, statuses))
    every = [ev, *ev.nested]
    for node_ev, view in zip(every, views, strict=True):
        for capture in node_ev.captures:
            findings.extend(_capture_findings(analyzers, capture, view.node, findings, statuses))
    for a in analyzers:
        statuses.setdefault(a.name, AnalyzerStatus(a.name, "ok"))
    _notes(analyzers, every, statuses)
    nodes = [v.node for v in views[1:] if v.node] if cluster else [v.node for v in views[:1] if v.node]
    captures = [c for n in every for c in n.captures]
    return Diagnosis(
        bundle=bundle,
        cluster=cluster,
        nodes=nodes,
        findings=rank(findings),
        analyzers=[statuses[a.name] for a in analyzers],
        log_lines=sum(n.log_lines for n in [*every, *captures]),
        skipped=[s for n in [*every, *captures] for s in n.skipped],
        unread=[s for n in [*every, *captures] for s in n.unread],
    )


def _capture_findings(
    analyzers: list[Analyzer],
    capture: NodeEvidence,
    node: str | None,
    known: list[Finding],
    statuses: dict[str, AnalyzerStatus],
) -> list[Finding]:
    """What a capture of this node shows that the node bundle itself does not.

    A capture holds a failed sandbox as it was (its spec, state and log lines, often gone
    from the node by the time `collect` runs), plus the same host facts the node bundle has:
    so a finding already made for the same node and sandbox is not repeated; the capture's
    evidence paths (`captures/<file>!/...`) say where the new ones come from.
    """
    seen = {(f.id, f.node, f.sandbox) for f in known}
    out: list[Finding] = []
    for f in run_analyzers(analyzers, EvidenceView(capture), statuses):
        f.node = node or f.node
        if (f.id, f.node, f.sandbox) not in seen:
            seen.add((f.id, f.node, f.sandbox))
            out.append(f)
    return out


def diagnose(source: str | IO[bytes], *, label: str | None = None) -> Diagnosis:
    """Read a bundle once and diagnose it; BundleError (exit 2) when it is not a bundle."""
    analyzers = load_analyzers()
    reads = [r for a in analyzers for r in a.reads]
    ev = read_bundle_evidence(source, all_signatures(analyzers), reads, label=label)
    return analyze_evidence(ev, analyzers, label or (source if isinstance(source, str) else "<stream>"))
