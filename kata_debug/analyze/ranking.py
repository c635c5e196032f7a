"""Which finding is most likely the root cause: the explicit order, and what explains what.

Many causes end in the same symptom (the runtime keeps dialling a VM that is already dead:
"grpc server is working" / "timed out connecting to vsock"), so a symptom is never ranked
above a cause that explains it: when both are present for the same sandbox (or node-wide),
the symptom is kept as `info` and says which finding explains it.
"""

from __future__ import annotations

from collections.abc import Iterable

from kata_debug.analyze.base import SEVERITY_ORDER, Finding

#: Lower tier = more specific. Install/config errors with unique text first, host
#: capability next, then evidence from other logs explaining a VM death, the rootfs family,
#: and last the generic "agent never answered".
TIER: dict[str, int] = {
    "legacy-runtime-cli": 10,
    "shim-not-found": 11,
    "runtimeclass-not-found": 12,
    "runtime-handler-missing": 13,
    "hypervisor-asset-missing": 14,
    "annotation-not-enabled": 15,
    "cgroup-v2-unsupported-config": 16,
    "vsock-transport-conflict": 20,
    "vhost-vsock-unavailable": 21,
    "kvm-unavailable": 22,
    "hugepages-insufficient": 23,
    "hypervisor-feature-unsupported": 24,
    "selinux-denied": 30,
    "vm-oom-killed": 31,
    "guest-kernel-panic": 32,
    "virtiofsd-failed": 33,
    "firecracker-needs-devmapper": 40,
    "crio-skip-mount-home": 41,
    "guest-pull-misconfigured": 42,
    "agent-unreachable": 50,
    "vm-undersized": 60,
    "vm-size-mismatch": 61,
    # Node-level state, not a sandbox failure: below every failure with evidence.
    "kata-not-installed": 70,
    "collected-without-root": 80,
}

#: symptom -> the causes that explain it when they are present too.
EXPLAINED_BY: dict[str, tuple[str, ...]] = {
    "agent-unreachable": (
        "selinux-denied",
        "vm-oom-killed",
        "guest-kernel-panic",
        "virtiofsd-failed",
        "kvm-unavailable",
        "vhost-vsock-unavailable",
        "vsock-transport-conflict",
        "hypervisor-feature-unsupported",
        "hugepages-insufficient",
        "hypervisor-asset-missing",
    ),
    "virtiofsd-failed": ("selinux-denied", "vm-oom-killed", "hypervisor-asset-missing"),
    "kvm-unavailable": ("selinux-denied",),
    "vhost-vsock-unavailable": ("vsock-transport-conflict",),
}


def _same_scope(a: Finding, b: Finding) -> bool:
    if a.node != b.node:
        return False
    return a.sandbox is None or b.sandbox is None or a.sandbox == b.sandbox


def rank(findings: Iterable[Finding]) -> list[Finding]:
    """Demote explained symptoms, then order: errors first, confirmed by a host fact first,
    then by tier, then by how many lines show it."""
    found = list(findings)
    for f in found:
        f.tier = TIER.get(f.id, 90)
    for symptom in found:
        if symptom.severity != "error":
            continue
        for cause in found:
            if (
                cause is not symptom
                and cause.severity == "error"
                and cause.id in EXPLAINED_BY.get(symptom.id, ())
                and _same_scope(cause, symptom)
            ):
                symptom.severity = "info"
                symptom.explanation = (
                    f"Explained by `{cause.id}` ({cause.title}): this is what that failure looks like from "
                    f"the runtime's side, not a separate cause. " + symptom.explanation
                )
                break
    return sorted(
        found,
        key=lambda f: (SEVERITY_ORDER[f.severity], not f.confirmed, f.tier, -f.occurrences, f.sandbox or ""),
    )
