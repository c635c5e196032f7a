"""What a report is made of: typed records built by one pass over a bundle, read by the renderer.

The gatherer (`kata_debug.report.gather`) fills these from bundle members; the renderer
(`kata_debug.report.html`) only reads them. Every string here came out of a bundle, i.e.
from another machine: the renderer escapes all of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

#: `data-kind` of a timeline entry (the page's contract with its tests and users).
EntryKind = Literal["log", "console", "span", "event"]
#: Levels the page filters by; everything a log calls itself is mapped onto these.
Level = Literal["error", "warning", "info", "debug"]
LEVELS: tuple[Level, ...] = ("error", "warning", "info", "debug")


@dataclass(frozen=True)
class Entry:
    """One line of a sandbox's timeline, pointing back at the bundle member it came from."""

    kind: EntryKind
    ts: datetime | None
    source: str
    level: Level
    text: str
    path: str
    line: int | None


@dataclass(frozen=True)
class Omission:
    """Entries of one source past the page's cap: how many, and where to read them."""

    source: str
    path: str
    count: int
    first_line: int | None
    last_line: int | None


@dataclass(frozen=True)
class Span:
    """An agent span, placed on the waterfall by start and end, nested by its parent."""

    trace_id: str
    span_id: str
    parent_id: str
    name: str
    start: datetime
    end: datetime
    error: bool
    path: str
    line: int
    depth: int = 0


@dataclass(frozen=True)
class EvidenceRef:
    path: str
    line: int | None
    text: str


@dataclass(frozen=True)
class Finding:
    """A diagnose finding as `analysis/findings.json` (or the analyzers) give it."""

    id: str
    severity: str
    title: str
    sandbox: str | None
    pod: str | None
    node: str | None
    evidence: tuple[EvidenceRef, ...]
    explanation: str
    fix: str

    @classmethod
    def from_json(cls, raw: Any, node: str | None) -> Finding | None:
        """None for a record that is not a finding (the file is input like any other)."""
        if not isinstance(raw, dict) or not raw.get("id"):
            return None
        ev = []
        for e in raw.get("evidence") or []:
            if isinstance(e, dict):
                line = e.get("line")
                ev.append(
                    EvidenceRef(
                        str(e.get("path") or ""), line if isinstance(line, int) else None, str(e.get("text") or "")
                    )
                )
        return cls(
            id=str(raw["id"]),
            severity=str(raw.get("severity") or "info"),
            title=str(raw.get("title") or raw["id"]),
            sandbox=_opt_str(raw.get("sandbox")),
            pod=_opt_str(raw.get("pod")),
            node=_opt_str(raw.get("node")) or node,
            evidence=tuple(ev),
            explanation=str(raw.get("explanation") or ""),
            fix=str(raw.get("fix") or ""),
        )


def _opt_str(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


@dataclass(frozen=True)
class CollectorStatus:
    name: str
    status: str
    duration_s: float | None
    error: str | None
    items_failed: tuple[str, ...]
    truncated: tuple[tuple[str, int], ...]


@dataclass
class Sizing:
    """The sizing row of a sandbox: what its containers ask, what Kata computes, what runs."""

    containers: list[dict[str, Any]]
    computed: dict[str, Any]
    observed: dict[str, Any]
    findings: list[str]
    config: str | None


@dataclass
class SandboxReport:
    id: str
    pod_namespace: str | None = None
    pod_name: str | None = None
    pod_uid: str | None = None
    runtime_handler: str | None = None
    runtime: str | None = None
    sizing: Sizing | None = None
    state: dict[str, Any] | None = None
    entries: list[Entry] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    omitted: list[Omission] = field(default_factory=list)
    #: Bundle members that list the sandbox (index, state, sizing), in the order read.
    listed_in: list[str] = field(default_factory=list)

    @property
    def pod(self) -> str | None:
        return f"{self.pod_namespace}/{self.pod_name}" if self.pod_name else None


@dataclass(frozen=True)
class SandboxRef:
    """A sandbox past the page's section cap: its id and the bundle members that name it."""

    id: str
    pod: str | None
    members: tuple[str, ...]
    errors: int


@dataclass(frozen=True)
class Trigger:
    """Why a capture exists: the failure the node agent saw (the capture manifest's `trigger`)."""

    reason: str
    time: str | None
    sandbox: str | None
    line: str | None
    pod: str | None


@dataclass
class CaptureReport:
    """A capture bundle the node agent wrote, carried inside a node bundle (`captures/FILE`).

    Its sandboxes are the state at the failure, not the live state at collection time, so
    they sit in their own section and never merge with the node's sandbox of the same id.
    """

    file: str
    label: str
    trigger: Trigger | None
    findings: list[Finding] = field(default_factory=list)
    findings_source: str | None = None
    sandboxes: list[SandboxReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    #: The capture manifest's `redacted` (the node agent may run with redaction off).
    redacted: bool | None = None


@dataclass
class NodeReport:
    """One node bundle (or the top of a cluster bundle) and the sandboxes found in it."""

    label: str
    node: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    redacted: bool | None = None
    interrupted: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    kata: dict[str, Any] = field(default_factory=dict)
    collectors: list[CollectorStatus] = field(default_factory=list)
    cluster_nodes: list[dict[str, Any]] = field(default_factory=list)
    sandboxes: list[SandboxReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    has_manifest: bool = False
    captures: list[CaptureReport] = field(default_factory=list)
    #: Captures past the page's cap: file names only (they stay in the bundle).
    captures_omitted: list[str] = field(default_factory=list)
    #: Sandboxes past the page's section cap (`MAX_SANDBOX_SECTIONS` over the whole page).
    sandboxes_omitted: list[SandboxRef] = field(default_factory=list)


@dataclass
class Report:
    """Everything the page shows, in the order it shows it."""

    bundle: str
    cluster: bool
    findings: list[Finding]
    #: Where the findings came from: `analysis/findings.json`, or the analyzers run over this
    #: read of the bundle (older bundles, collected with analysis off); None: no findings.
    findings_source: str | None
    nodes: list[NodeReport]
    generated_at: datetime
    lines_read: int = 0
    members_read: int = 0
