"""The one interface every analyzer implements.

An analyzer names the structured members it reads, exposes its log signatures as per-line
matchers (so the bundle is read once, and so the node agent's capture trigger can use the
same knowledge), and turns the read-only evidence view into findings.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from kata_debug.analyze.base import Finding, Signature
from kata_debug.analyze.evidence import EvidenceView


class Analyzer(ABC):
    """One root cause or a small family of look-alike causes."""

    #: Name in the `analyzers` status list.
    name: ClassVar[str]
    #: The root-cause ids (README table) this analyzer may report.
    causes: ClassVar[tuple[str, ...]]
    #: Structured bundle members (fnmatch patterns) it reads; the reader keeps these in memory.
    reads: ClassVar[tuple[str, ...]] = ()
    #: Per-line matchers run over every log member of the bundle.
    signatures: ClassVar[tuple[Signature, ...]] = ()

    @abstractmethod
    def analyze(self, view: EvidenceView) -> list[Finding]:
        """Findings from the read-only evidence; raise only when the analyzer itself is broken."""
