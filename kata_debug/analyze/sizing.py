"""VM sizing warnings from the resource-limits collector's computation (`resource-limits/sizing.json`).

Sizing is this project's own model (`kata_debug.sizing`): the collector already computed,
per sandbox, the VM Kata should build from the OCI specs and what the VM actually is; this
analyzer turns its per-sandbox results into findings.
"""

from __future__ import annotations

from typing import Any

from kata_debug.analyze.analyzer import Analyzer
from kata_debug.analyze.base import Evidence, Finding
from kata_debug.analyze.evidence import EvidenceView

_SIZING = "resource-limits/sizing.json"
_FIX_REF = "see `kata-debug limits` and the README section on VM sizing"


def _pod(row: dict[str, Any]) -> str | None:
    pod = row.get("pod")
    return f"{pod.get('namespace')}/{pod.get('name')}" if isinstance(pod, dict) else None


class SizingAnalyzer(Analyzer):
    name = "sizing"
    causes = ("vm-undersized", "vm-size-mismatch")
    reads = (_SIZING,)

    def analyze(self, view: EvidenceView) -> list[Finding]:
        report = view.json(_SIZING)
        if not isinstance(report, dict):
            return []
        out: list[Finding] = []
        for row in report.get("sandboxes") or []:
            if not isinstance(row, dict):
                continue
            out.extend(self._mismatch(view, row))
            under = self._undersized(view, row)
            if under is not None:
                out.append(under)
        return out

    def _mismatch(self, view: EvidenceView, row: dict[str, Any]) -> list[Finding]:
        rules = [f for f in row.get("findings") or [] if isinstance(f, dict) and f.get("rule") == "vm-size-mismatch"]
        if not rules:
            return []
        return [
            Finding(
                id="vm-size-mismatch",
                severity="warning",
                title="The running VM differs from the size Kata should have computed",
                explanation="; ".join(str(f.get("message")) for f in rules),
                fix="Check which configuration and annotations the shim used (handler ConfigPath, drop-ins, pod "
                f"annotations) and that the limits in the OCI specs are the ones intended; {_FIX_REF}.",
                evidence=[Evidence(view.shown(_SIZING), None, str(f.get("message"))) for f in rules],
                sandbox=row.get("sandbox_id"),
                pod=_pod(row),
                occurrences=len(rules),
            )
        ]

    def _undersized(self, view: EvidenceView, row: dict[str, Any]) -> Finding | None:
        computed = row.get("computed") or {}
        vcpus = computed.get("vcpus")
        if not isinstance(vcpus, int) or computed.get("boot_vcpus") != vcpus:
            return None  # limits already grew the VM past its default size
        shares = sum(int(c.get("cpu_shares") or 0) for c in row.get("containers") or [] if isinstance(c, dict))
        has_quota = any(c.get("cpu_quota") for c in row.get("containers") or [] if isinstance(c, dict))
        requested = shares / 1024
        if has_quota or requested <= vcpus:
            return None
        return Finding(
            id="vm-undersized",
            severity="warning",
            title=f"The pod requests {requested:g} CPUs but has no CPU limit: its VM stays at {vcpus} vCPU(s)",
            explanation="Kata sizes the VM from limits, not requests: without a CPU limit the VM keeps "
            "default_vcpus, so the workload gets fewer vCPUs than the scheduler reserved for it.",
            fix=f"Set CPU limits on the pod's containers (or raise default_vcpus for this handler); {_FIX_REF}.",
            evidence=[
                Evidence(
                    view.shown(_SIZING),
                    None,
                    f"cpu_shares total {shares} (= {requested:g} CPU), computed vcpus {vcpus}",
                )
            ],
            sandbox=row.get("sandbox_id"),
            pod=_pod(row),
            occurrences=1,
        )
