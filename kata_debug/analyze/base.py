"""The types a diagnosis is made of: signatures, matched lines, evidence, findings.

Findings carry their evidence as `{path, line, text}` pointing into the bundle, so a user
can check every claim.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Severity = Literal["error", "warning", "info"]
SEVERITY_ORDER: dict[str, int] = {"error": 0, "warning": 1, "info": 2}

#: Quoted evidence text is cut here: a finding quotes, it does not copy logs.
MAX_EVIDENCE_TEXT = 2000

# How sandbox ids and pods appear on log lines (Go logfmt `sandbox=`, runtime-rs `sid=`,
# containerd task paths and `id=`, virtiofsd `ID=`), most specific first.
_SANDBOX_PATTERNS = (
    re.compile(r"\bsandbox=\\?\"?(?P<sid>[A-Za-z0-9][A-Za-z0-9_.-]*)"),
    re.compile(r"\bsid=(?P<sid>[A-Za-z0-9][A-Za-z0-9_.-]*)"),
    re.compile(r"io\.containerd\.runtime\.v2\.task/[^/\s\"]+/(?P<sid>[0-9a-f]{64}|[A-Za-z0-9][\w.-]*)"),
    re.compile(r"/run/vc/vm/(?P<sid>[0-9a-f]{64}|[A-Za-z0-9][\w.-]*)/"),
    re.compile(r"\b(?:ID|id)=(?P<sid>[0-9a-f]{64})\b"),
    re.compile(r"failed to start sandbox \\?\"(?P<sid>[0-9a-f]{64})"),
)
_POD_PATTERNS = (
    re.compile(r"PodSandboxMetadata\{Name:(?P<name>[^,]+),Uid:[^,]*,Namespace:(?P<ns>[^,]+),"),
    re.compile(r"\bpod=\\?\"(?P<ns>[a-z0-9.-]+)/(?P<name>[a-z0-9.-]+)\\?\""),
    re.compile(r"for \\*\"(?P<name>[a-z0-9.-]+)_(?P<ns>[a-z0-9.-]+)\("),
)


def sandbox_on_line(text: str) -> str | None:
    """The sandbox id a log line names, if any."""
    for pattern in _SANDBOX_PATTERNS:
        m = pattern.search(text)
        if m:
            return m.group("sid")
    return None


def pod_on_line(text: str) -> str | None:
    """`namespace/name` of the pod a log line names (CRI and kubelet forms), if any."""
    for pattern in _POD_PATTERNS:
        m = pattern.search(text)
        if m:
            return f"{m.group('ns')}/{m.group('name')}"
    return None


def unescape(text: str) -> str:
    """A Kata message nested in another tool's `msg="..."` arrives with escaped quotes and
    newlines; signatures are written against the plain text."""
    if "\\" not in text:
        return text
    return text.replace('\\\\\\"', '"').replace('\\"', '"').replace("\\\\n", "\n").replace("\\n", "\n")


@dataclass(frozen=True)
class Evidence:
    """One piece of evidence: a bundle member, its 1-based line (text files), and the quote or fact."""

    path: str
    line: int | None
    text: str

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "line": self.line, "text": self.text}


@dataclass(frozen=True)
class Signature:
    """A log signature: literal needles that every matching line contains (a fast prefilter
    over the raw bytes), then a regular expression run on the line and its unescaped form."""

    name: str
    needles: tuple[str, ...]
    pattern: re.Pattern[str]

    @classmethod
    def of(cls, name: str, needles: Iterable[str], pattern: str) -> Signature:
        return cls(name, tuple(needles), re.compile(pattern))

    def match(self, text: str) -> re.Match[str] | None:
        """Match one log line (as written, or with nested quoting undone)."""
        if not any(n in text for n in self.needles):
            return None
        m = self.pattern.search(text)
        if m is None and "\\" in text:
            m = self.pattern.search(unescape(text))
        return m


@dataclass(frozen=True)
class LineMatch:
    """A log line a signature matched, with what the line says about where it belongs."""

    path: str
    line: int
    text: str
    groups: Mapping[str, str]
    sandbox: str | None
    pod: str | None

    def evidence(self) -> Evidence:
        return Evidence(self.path, self.line, self.text)


@dataclass
class SignatureHits:
    """Bounded record of one signature's matches: the first `keep` lines and a count."""

    keep: int = 8
    count: int = 0
    first: list[LineMatch] = field(default_factory=list)

    def add(self, match: LineMatch) -> None:
        self.count += 1
        if len(self.first) < self.keep:
            self.first.append(match)


@dataclass
class Finding:
    """A root cause (or a warning) the analyzers name, with the evidence for it.

    `confirmed` says a distinguishing host fact backs the log evidence; `tier` is the
    cause's place in the explicit ranking (lower = more specific, see `ranking`).
    """

    id: str
    severity: Severity
    title: str
    explanation: str
    fix: str
    evidence: list[Evidence]
    sandbox: str | None = None
    pod: str | None = None
    node: str | None = None
    tier: int = 5
    confirmed: bool = False
    #: Matching lines seen in total (evidence quotes only the first few).
    occurrences: int = 0

    def to_json(self, *, with_node: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "severity": self.severity, "title": self.title}
        if with_node:
            out["node"] = self.node
        out["sandbox"] = self.sandbox
        out["pod"] = self.pod
        out["evidence"] = [e.to_json() for e in self.evidence]
        out["occurrences"] = self.occurrences
        out["explanation"] = self.explanation
        out["fix"] = self.fix
        return out
