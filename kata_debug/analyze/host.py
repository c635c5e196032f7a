"""Host capabilities a Kata VM needs: /dev/kvm, vhost-vsock (and who holds AF_VSOCK), hugepages.

The same runtime error means different things on different hosts: `open /dev/vhost-vsock:
no such device` is a missing module on one node and VMware's VMCI transport holding
AF_VSOCK on another. The host facts (`host/facts.json`: devices, modules, CPU flags,
memory) decide which, and confirm the log evidence.
"""

from __future__ import annotations

from kata_debug.analyze.analyzer import Analyzer
from kata_debug.analyze.base import Evidence, Finding, Signature
from kata_debug.analyze.common import DOCS, ISSUES, RUNTIME_ISSUES, fact, finding, hypervisors, kata_configured
from kata_debug.analyze.evidence import EvidenceView

_FACTS = "host/facts.json"
#: Hypervisors that reach the agent over vhost-vsock (Cloud Hypervisor and Firecracker use a
#: hybrid vsock over a unix socket and need no /dev/vhost-vsock).
VHOST_VSOCK_HYPERVISORS = frozenset({"qemu", "dragonball", "stratovirt"})

KVM_ERRORS = (
    Signature.of(
        "kvm.qemu",
        ("KVM kernel module", "initialize KVM", "initialize kvm"),
        r"Could not access KVM kernel module: (?P<err>[^\"\\:\n]+)|(?i:qemu[\w.-]*: failed to initialize kvm): (?P<err2>[^\"\\:\n]+)",
    ),
    Signature.of(
        "kvm.cgroup",
        ("failed to add any hypervisor device",),
        r"failed to add any hypervisor device to devices cgroup",
    ),
    Signature.of(
        "kvm.check",
        ("cannot open kvm device", "property not found"),
        r"cannot open kvm device|(?:CPU|kernel) property (?:\w+ )?not found.*\bname=(?P<prop>vmx|svm|kvm|kvm_intel|kvm_amd)\b",
    ),
    Signature.of(
        "kvm.clh",
        ("is /dev/kvm available", "KvmNew(", "Failed to open hypervisor interface"),
        r"is /dev/kvm available\?|KvmNew\(Error\(\d+\)\)|Failed to open hypervisor interface",
    ),
    Signature.of(
        "kvm.fc",
        ("Error creating KVM object", "Cannot create VMM"),
        r"(?:Error creating KVM object|Cannot create VMM).*(?:No such file or directory|Resource busy|os error (?:2|13|16)\b)",
    ),
    Signature.of(
        "kvm.kernel",
        ("disabled by bios", "disabled by BIOS", "no hardware support", "SVM not supported"),
        r"kvm: (?:disabled by bios|no hardware support)|VMX \(outside TXT\) disabled by BIOS|SVM (?:not supported|disabled \(by BIOS\))",
    ),
    Signature.of(
        "kvm.modprobe", ("could not insert 'kvm",), r"could not insert 'kvm(?:_intel|_amd)?': (?P<err>[^'\n]+)"
    ),
)
KVM_NESTED = Signature.of(
    "kvm.nested",
    ("failed to set MSR", "kvm_buf_set_msrs", "KVM: entry failed", "kvm run failed"),
    r"failed to set MSR 0x[0-9a-f]+|kvm_buf_set_msrs: Assertion|KVM: entry failed, hardware error|kvm run failed",
)
VSOCK = (
    Signature.of(
        "vsock.open",
        ("open /dev/vhost-vsock",),
        r"open /dev/vhost-vsock: (?P<err>no such file or directory|no such device|permission denied|operation not permitted)",
    ),
    Signature.of(
        "vsock.rs",
        ("failed to open /dev/vhost-vsock",),
        r"failed to open /dev/vhost-vsock, try to run modprobe vhost_vsock",
    ),
    Signature.of(
        "vsock.cid",
        ("unique context ID for the vsock", "free vsock context ID", "failed to set guest CID"),
        r"Could not get a unique context ID for the vsock|failed to find a free vsock context ID|failed to set guest CID",
    ),
    Signature.of("vhostnet.go", ("open /dev/vhost-net",), r"open /dev/vhost-net: (?P<err>[^:\"\\\n]+)"),
    Signature.of(
        "vhostnet.rs", ("Failed to open /dev/vhost-net",), r"Failed to open /dev/vhost-net fd index \d+, with error"
    ),
    Signature.of(
        "vsock.module",
        ("not found in directory", "property vhost", "property not found"),
        r"Module (?P<mod>vhost_vsock|vhost_net) not found in directory|kernel property (?:(?:vhost_vsock|vhost_net|vhost) )?not found.*\bname=(?P<name>vhost_vsock|vhost_net)\b",
    ),
)
VSOCK_BUSY = Signature.of(
    "vsock.busy", ("could not insert 'vhost_vsock'",), r"could not insert 'vhost_vsock': Device or resource busy"
)
HUGEPAGES = (
    Signature.of(
        "hugepages.qemu",
        ("backing store", "Insufficient free host memory pages"),
        r"unable to map backing store for guest RAM: (?P<err>[^\"\\\n]+)|can't open backing store (?P<path>\S+) for guest RAM|Insufficient free host memory pages available to allocate guest RAM",
    ),
    Signature.of(
        "hugepages.mount",
        ("hugepage mount",),
        r"hugepage mount \\?\"[^\"\\]+\\?\" reported (?:invalid|unexpected) block size",
    ),
)

_KVM_FIX = (
    "Enable VT-x/AMD-V in the firmware and load kvm_intel or kvm_amd so /dev/kvm exists; on a cloud VM use a "
    "bare-metal instance or one with nested virtualization; in kind/minikube pass /dev/kvm into the node. "
    f"`kata-runtime check` confirms. Refs: {RUNTIME_ISSUES}646, {ISSUES}6752, {DOCS}install/README.md"
)
_VSOCK_FIX = (
    "Load the modules (`modprobe vhost_vsock vhost_net`, persisted in /etc/modules-load.d/); if modprobe says the "
    "module is not found, install a kernel (modules package) built with CONFIG_VHOST_VSOCK/CONFIG_VHOST_NET. "
    f"Refs: {ISSUES}3459, {ISSUES}4737, {ISSUES}6451, {DOCS}design/VSocks.md"
)
_CONFLICT_FIX = (
    "Stop VMware tools and unload the VMCI vsock transport (`modprobe -r vmw_vsock_vmci_transport`), then "
    "`modprobe vhost_vsock`; make it permanent by blacklisting vmw_vsock_vmci_transport or loading vhost_vsock "
    f"early (modules-load.d). Refs: {ISSUES}1327, {DOCS}design/VSocks.md"
)
_HUGEPAGES_FIX = (
    "Reserve enough hugepages for every VM on the node (vm.nr_hugepages or hugepages= on the kernel command "
    "line: at least default_memory plus hot-plugged memory per VM), or set enable_hugepages = false. "
    f"Refs: {ISSUES}10341, {DOCS}how-to/how-to-set-sandbox-config-kata.md"
)


def _mib(value: str | None) -> int | None:
    """`/proc/meminfo` value ("2048 kB" or a page count) in MiB or as a count."""
    if not value:
        return None
    parts = value.split()
    try:
        n = int(parts[0])
    except ValueError:
        return None
    return n // 1024 if len(parts) > 1 and parts[1] == "kB" else n


class HostCapabilityAnalyzer(Analyzer):
    name = "host-capability"
    causes = ("kvm-unavailable", "vhost-vsock-unavailable", "vsock-transport-conflict", "hugepages-insufficient")
    reads = ("kata-config/files/*",)
    signatures = (*KVM_ERRORS, KVM_NESTED, *VSOCK, VSOCK_BUSY, *HUGEPAGES)

    def analyze(self, view: EvidenceView) -> list[Finding]:
        if view.cluster and not view.facts:
            return []
        return [f for f in (self._kvm(view), self._vsock(view), self._hugepages(view)) if f is not None]

    def _kvm(self, view: EvidenceView) -> Finding | None:
        lines = view.matches(*(s.name for s in KVM_ERRORS))
        nested = view.matches(KVM_NESTED.name)
        kvm_present = view.device_present("/dev/kvm")
        cpu = view.facts.get("cpu") or {}
        # An empty flag list only means "not exposed" when /proc/cpuinfo was read (the collector says so).
        exposed = "CPU virtualization flag (vmx/svm) not exposed" not in (view.facts.get("missing") or [])
        flags = cpu.get("virtualization_flags") if not exposed else None
        facts: list[Evidence] = []
        if kvm_present is False:
            facts.append(fact(view, _FACTS, "/dev/kvm: not present"))
        if flags == []:
            facts.append(fact(view, _FACTS, "CPU flags: neither vmx nor svm (virtualization not exposed to this host)"))
        for mod in ("kvm_intel", "kvm_amd"):
            if view.module(mod) == "loaded":
                facts.append(fact(view, _FACTS, f"module {mod}: loaded"))
        confirmed = kvm_present is False or flags == []
        count = view.count(*(s.name for s in KVM_ERRORS))
        if lines:
            return finding(
                view,
                "kvm-unavailable",
                "error",
                "/dev/kvm is missing or unusable: the hypervisor cannot create a VM",
                "The hypervisor failed opening KVM"
                + (" and the host facts agree (" + "; ".join(e.text for e in facts) + ")" if confirmed else "")
                + ". This is not a slow boot (agent-unreachable): no VM was created at all. A permission error here "
                "can also be SELinux (selinux-denied ranks above when AVC records name the hypervisor).",
                _KVM_FIX,
                lines,
                facts,
                confirmed=confirmed,
                occurrences=count,
            )
        if nested and kvm_present is not False:
            return finding(
                view,
                "kvm-unavailable",
                "error",
                "KVM exists but nested virtualization is broken: the hypervisor's vCPU setup fails",
                "/dev/kvm is present but QEMU's KVM calls fail (MSR setup / entry failure), the signature of a "
                "nested-virtualization CPU model the outer hypervisor does not support: not a missing module.",
                "Enable nested virtualization properly on the outer hypervisor (expose vmx/svm, host CPU model) or use "
                f"bare metal. Refs: {ISSUES}3319, {ISSUES}6752",
                nested,
                facts,
                occurrences=view.count(KVM_NESTED.name),
            )
        if kvm_present is False and kata_configured(view) and hypervisors(view) - {"remote"}:
            return finding(
                view,
                "kvm-unavailable",
                "warning",
                "/dev/kvm is not present on a node configured for Kata: every Kata sandbox will fail to start",
                "Kata is configured here but the host has no /dev/kvm"
                + ("; the CPU does not expose vmx/svm" if flags == [] else "")
                + ". No sandbox failure is in the logs yet.",
                _KVM_FIX,
                facts=facts,
                confirmed=True,
            )
        return None

    def _vsock(self, view: EvidenceView) -> Finding | None:
        lines = view.matches(*(s.name for s in VSOCK))
        busy = view.matches(VSOCK_BUSY.name)
        vmci = view.module("vmw_vsock_vmci_transport")
        vhost = view.module("vhost_vsock")
        facts: list[Evidence] = []
        if vmci == "loaded":
            facts.append(fact(view, _FACTS, "module vmw_vsock_vmci_transport: loaded (VMware VMCI holds AF_VSOCK)"))
        if vhost is not None:
            facts.append(fact(view, _FACTS, f"module vhost_vsock: {vhost}"))
        present = view.device_present("/dev/vhost-vsock")
        if present is not None:
            facts.append(fact(view, _FACTS, f"/dev/vhost-vsock: {'present' if present else 'not present'}"))
        if (lines or busy) and (vmci == "loaded" or busy):
            return finding(
                view,
                "vsock-transport-conflict",
                "error",
                "VMware's vsock transport holds AF_VSOCK, so vhost_vsock cannot load",
                "The runtime cannot use /dev/vhost-vsock and "
                + ("vmw_vsock_vmci_transport is loaded" if vmci == "loaded" else "modprobe vhost_vsock said busy")
                + ": on a VMware guest the VMCI transport registers the host side of AF_VSOCK first. Not "
                "vhost-vsock-unavailable: the module exists but cannot be inserted.",
                _CONFLICT_FIX,
                busy + lines,
                facts,
                confirmed=True,
                occurrences=view.count(VSOCK_BUSY.name, *(s.name for s in VSOCK)),
            )
        if lines:
            net = all(m.text.find("vhost-net") >= 0 for m in lines)
            confirmed = (vhost == "absent" and present is False) or net and view.module("vhost_net") == "absent"
            return finding(
                view,
                "vhost-vsock-unavailable",
                "error",
                f"{'/dev/vhost-net' if net else '/dev/vhost-vsock'} is not available on the host",
                "The runtime could not open the vhost device the VM needs"
                + (" and the host facts agree" if confirmed else "")
                + ". Not the VMware transport conflict: vmw_vsock_vmci_transport is not loaded.",
                _VSOCK_FIX,
                lines,
                facts,
                confirmed=confirmed,
                occurrences=view.count(*(s.name for s in VSOCK)),
            )
        if present is False and vhost not in ("loaded", "builtin") and hypervisors(view) & VHOST_VSOCK_HYPERVISORS:
            # The device is the decisive fact; the module list only adds why when it is known
            # (no /proc/modules in a container: "unknown", never reported as not loaded).
            known = vhost == "absent"
            return finding(
                view,
                "vhost-vsock-unavailable",
                "warning",
                ("vhost_vsock is not loaded" if known else "/dev/vhost-vsock is not present")
                + ": QEMU-based Kata sandboxes will fail to start",
                "The configuration uses a hypervisor that talks to the agent over vhost-vsock, and the host has "
                + (
                    "neither /dev/vhost-vsock nor the vhost_vsock module loaded."
                    if known
                    else "no /dev/vhost-vsock (whether the module is loaded is not known: the module list was not "
                    "readable)."
                ),
                _VSOCK_FIX,
                facts=facts,
                confirmed=True,
            )
        return None

    def _hugepages(self, view: EvidenceView) -> Finding | None:
        sections = [(p, n, s) for p, n, s in view.hypervisor_sections() if s.get("enable_hugepages") is True]
        lines = view.matches(*(s.name for s in HUGEPAGES))
        if not sections and not any("hugepage" in m.text for m in lines):
            return None
        memory = view.facts.get("memory") or {}
        free = _mib(memory.get("HugePages_Free"))
        size = _mib(memory.get("Hugepagesize"))
        free_mib = free * size if free is not None and size is not None else None
        need = max((int(s.get("default_memory") or 2048) for _, _, s in sections), default=2048)
        facts = [
            Evidence(view.shown(f"kata-config/files{p}"), None, f"[hypervisor.{n}] enable_hugepages = true")
            for p, n, _ in sections
        ]
        if free_mib is not None:
            facts.append(
                fact(view, _FACTS, f"HugePages_Free {memory.get('HugePages_Free')} x {memory.get('Hugepagesize')}")
            )
        short = free_mib is not None and free_mib < need
        if lines:
            return finding(
                view,
                "hugepages-insufficient",
                "error",
                "The VM's memory could not be allocated from hugepages",
                "The hypervisor failed to map its hugepage-backed guest RAM"
                + (f": {free_mib} MiB of hugepages free, the VM needs {need} MiB" if short else "")
                + ". Not an OOM kill: no process was killed, the allocation was refused.",
                _HUGEPAGES_FIX,
                lines,
                facts,
                confirmed=short,
                occurrences=view.count(*(s.name for s in HUGEPAGES)),
            )
        if short and sections:
            return finding(
                view,
                "hugepages-insufficient",
                "warning",
                f"enable_hugepages is set but only {free_mib} MiB of hugepages are free (a VM needs {need} MiB)",
                "Kata backs guest RAM with hugepages when enable_hugepages = true; with fewer free than one VM's "
                "default_memory, the next sandbox cannot start.",
                _HUGEPAGES_FIX,
                facts=facts,
                confirmed=True,
            )
        return None
