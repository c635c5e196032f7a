"""Helpers the analyzers share: findings from matched lines, facts as evidence, references."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from kata_debug.analyze.base import Evidence, Finding, LineMatch, Severity
from kata_debug.analyze.evidence import EvidenceView

ISSUES = "https://github.com/kata-containers/kata-containers/issues/"
RUNTIME_ISSUES = "https://github.com/kata-containers/runtime/issues/"
DOCS = "https://github.com/kata-containers/kata-containers/blob/main/docs/"
#: Evidence lines quoted per finding; the rest are counted in `occurrences`.
MAX_QUOTED = 8

#: Hypervisor process names as the kernel reports them (comm is cut at 15 characters).
VMM_COMMS = (
    "qemu-system-x86",
    "qemu-system-x86_64",
    "qemu-system-aarch64",
    "qemu-system-aar",
    "qemu-system-ppc",
    "qemu-system-s39",
    "qemu-kvm",
    "qemu-lite-syste",
    "cloud-hyperviso",
    "cloud-hypervisor",
    "firecracker",
    "fc_vcpu",
    "virtiofsd",
    "dragonball",
)


def is_vmm_comm(comm: str) -> bool:
    return comm.startswith(VMM_COMMS) or comm.startswith("qemu")


def fact(view: EvidenceView, path: str, text: str) -> Evidence:
    """A host fact as evidence: the bundle member it comes from and what it says."""
    return Evidence(view.shown(path), None, text)


def main_sandbox(matches: Sequence[LineMatch]) -> str | None:
    ids = Counter(m.sandbox for m in matches if m.sandbox)
    return ids.most_common(1)[0][0] if ids else None


def finding(
    view: EvidenceView,
    cause: str,
    severity: Severity,
    title: str,
    explanation: str,
    fix: str,
    matches: Sequence[LineMatch] = (),
    facts: Iterable[Evidence] = (),
    *,
    confirmed: bool = False,
    occurrences: int | None = None,
) -> Finding:
    """One finding for one cause on one node: its lines (first few) and its facts."""
    sandbox = main_sandbox(matches)
    pod = next((m.pod for m in matches if m.pod and (sandbox is None or m.sandbox in (None, sandbox))), None)
    pod = pod or view.pod_of(sandbox)
    evidence = [m.evidence() for m in matches[:MAX_QUOTED]] + list(facts)
    return Finding(
        id=cause,
        severity=severity,
        title=title,
        explanation=explanation,
        fix=fix,
        evidence=evidence,
        sandbox=sandbox,
        pod=pod,
        confirmed=confirmed,
        occurrences=len(matches) if occurrences is None else occurrences,
    )


def kata_configured(view: EvidenceView) -> bool:
    """The node has Kata installed (a configuration or a Kata handler): host facts matter."""
    s = view.kata_summary
    kata = view.facts.get("kata")  # the host collector's own answer, when kata-config did not run
    in_facts = isinstance(kata, dict) and bool(kata.get("config_in_effect") or kata.get("handler_configs"))
    return in_facts or bool(s.get("in_effect") or s.get("handlers") or s.get("found"))


def hypervisors(view: EvidenceView) -> set[str]:
    return {name for _, name, _ in view.hypervisor_sections()}


def containerd_handlers(view: EvidenceView) -> list[dict[str, Any]]:
    handlers = (view.facts.get("containerd") or {}).get("runtime_handlers") or []
    return [h for h in handlers if isinstance(h, dict)]


def uses_crio(view: EvidenceView) -> bool:
    """CRI-O is the node's CRI: its logs or configuration are in the bundle."""
    if any("crio" in m for m in view.log_members):
        return True
    return bool(view.members("host/files/etc/crio/*")) or bool((view.facts.get("crio") or {}).get("configs"))
