"""Why a VM that started died or never answered: SELinux, OOM kill, guest panic, virtiofsd,
hypervisor features, and (last) the agent that never answered.

All of these end in the same runtime error, because the runtime keeps dialling a VM that is
already gone ("Failed to check if grpc server is working"), so the evidence that tells them
apart is in other logs: kernel OOM records, audit AVCs, the guest console, QEMU's stderr.
`ranking` keeps agent-unreachable below any of them for the same sandbox.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from kata_debug.analyze.analyzer import Analyzer
from kata_debug.analyze.base import Finding, LineMatch, Severity, Signature
from kata_debug.analyze.common import DOCS, ISSUES, RUNTIME_ISSUES, fact, finding, is_vmm_comm
from kata_debug.analyze.evidence import EvidenceView

AGENT = Signature.of(
    "agent.dial",
    (
        "grpc server is working",
        "CheckRequest timed out",
        "connect agent server",
        "cannot connect to agent ttrpc server",
        "timed out connecting to",
    ),
    r"(?i:failed to check if grpc server is working)|CheckRequest timed out|connect agent server|cannot connect to agent ttrpc server|timed out connecting to (?:hybrid vsocket (?P<addr>\S+)|vsock (?P<cid>\d+):(?P<port>\d+))",
)
VIRTIOFSD = (
    Signature.of(
        "virtiofsd.connect",
        ("vhost-fs.sock",),
        r"vhost-fs\.sock: Failed to connect to '[^']*': (?P<err>Connection refused|No such file or directory)",
    ),
    Signature.of(
        "virtiofsd.vhost",
        ("vhost-user-fs",),
        r"-device vhost-user-fs-(?:pci|ccw|device)[^:]*: (?:Failed to read msg header\. Read -?\d+ instead of 12|vhost_(?:backend|dev)_init failed: (?P<err>[^\\\"\n]+))",
    ),
    Signature.of(
        "virtiofsd.own",
        ("virtiofsd: ", "virtiofsd[", "[ERROR virtiofsd]", "failed to start virtiofsd"),
        r"virtiofsd(?:\[\d+\])?: (?:seccomp_init\(\): |.*Error entering sandbox|.*Fatal error|.*panicked at|segfault at)|\[ERROR virtiofsd\]|failed to start virtiofsd|traps: virtiofsd\[\d+\]",
    ),
)
FEATURE = (
    Signature.of("feature.property", ("' not found",), r"Property '(?P<dev>[\w-]*)\.(?P<prop>[\w-]+)' not found"),
    Signature.of(
        "feature.device", ("is not a valid device model name",), r"'(?P<dev>[\w-]+)' is not a valid device model name"
    ),
    Signature.of(
        "feature.machine",
        ("Invalid parameter '", "unsupported machine type", "invalid object type: ", "vm device is not valid: "),
        r"-machine [^:]*: Invalid parameter '[\w-]+'|unsupported machine type|invalid object type: [\w-]+|vm device is not valid: ",
    ),
    Signature.of("feature.clh", ("SerdeJsonDeserialize(Error(",), r"reason: SerdeJsonDeserialize\(Error\("),
)
OOM = Signature.of(
    "oom.kill",
    ("CONSTRAINT_MEMCG", "Memory cgroup out of memory: Killed process", "invoked oom-killer"),
    r"oom-kill:constraint=CONSTRAINT_MEMCG\b.*?(?:\boom_memcg=(?P<memcg>[^,]+))?.*\btask=(?P<task>[^,]+),pid=(?P<pid>\d+)|Memory cgroup out of memory: Killed process (?P<pid2>\d+) \((?P<comm>[^)]+)\)|(?P<comm2>\S+) invoked oom-killer",
)
PANIC = Signature.of(
    "panic.console", ("Kernel panic - not syncing",), r"Kernel panic - not syncing: (?P<reason>[^\"\\\n]+)"
)
AVC = Signature.of(
    "selinux.avc",
    ("avc:",),
    r"avc:\s+denied\s+\{ (?P<perms>[^}]+) \} for\s+pid=(?P<pid>\d+) comm=\"(?P<comm>[^\"]+)\".*?scontext=(?P<scontext>\S+) tcontext=(?P<tcontext>\S+) tclass=(?P<tclass>\S+)(?: permissive=(?P<permissive>[01]))?",
)

_CONSOLE_HINTS = ("vmconsole", "vm console", "kata-proxy", "console.log", "source=agent")


#: An OOM kill of the VM explains a runtime failure logged at most this long after it: the
#: runtime sees the ttrpc connection close at once, or its vsock dial fail within seconds.
OOM_WINDOW = timedelta(seconds=30)


@dataclass
class OomTiming:
    """How the VM OOM kills and the runtime failures line up in time."""

    #: (kill, failure, seconds from kill to failure) within OOM_WINDOW, closest first.
    pairs: list[tuple[LineMatch, LineMatch, float]] = field(default_factory=list)
    #: Nothing paired but both sides have times: the closest (kill, seconds apart, kill is
    #: after the failure, failure).
    apart: tuple[LineMatch, float, bool, LineMatch] | None = None
    times: dict[int, datetime] = field(default_factory=dict)


def oom_timing(view: EvidenceView, kills: list[LineMatch], failures: list[LineMatch]) -> OomTiming:
    """Pair each timed failure with a timed kill shortly before it. Lines without a time
    (pasted events) pair with nothing and rule nothing out: without times the scope rule
    in `ranking` decides, as before."""
    out = OomTiming()
    timed_kills = [(k, t) for k in kills if (t := view.line_time(k)) is not None]
    timed_fails = [(f, t) for f in failures if (t := view.line_time(f)) is not None]
    for m, t in timed_kills + timed_fails:
        out.times[id(m)] = t
    closest: tuple[LineMatch, float, bool, LineMatch] | None = None
    for f, tf in timed_fails:
        for k, tk in timed_kills:
            gap = (tf - tk).total_seconds()
            if 0 <= gap <= OOM_WINDOW.total_seconds():
                out.pairs.append((k, f, gap))
            elif closest is None or abs(gap) < closest[1]:
                closest = (k, abs(gap), gap < 0, f)
    out.pairs.sort(key=lambda p: p[2])
    out.apart = None if out.pairs else closest
    return out


def _clock(timing: OomTiming, m: LineMatch) -> str:
    t = timing.times.get(id(m))
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if t else "?"


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _comm(m: LineMatch) -> str:
    return m.groups.get("task") or m.groups.get("comm") or m.groups.get("comm2") or ""


class VmStartAnalyzer(Analyzer):
    name = "vm-start"
    causes = (
        "selinux-denied",
        "vm-oom-killed",
        "guest-kernel-panic",
        "virtiofsd-failed",
        "hypervisor-feature-unsupported",
        "agent-unreachable",
    )
    reads = ("kata-config/files/*",)
    signatures = (AGENT, *VIRTIOFSD, *FEATURE, OOM, PANIC, AVC)

    def analyze(self, view: EvidenceView) -> list[Finding]:
        timing = oom_timing(view, self._kills(view), self._failures(view))
        found = [
            self._selinux(view),
            self._oom(view, timing),
            self._panic(view),
            self._virtiofsd(view),
            self._feature(view),
        ]
        found.append(self._agent(view, timing))
        return [f for f in found if f is not None]

    @staticmethod
    def _kills(view: EvidenceView) -> list[LineMatch]:
        return [m for m in view.matches(OOM.name) if is_vmm_comm(_comm(m))]

    @staticmethod
    def _failures(view: EvidenceView) -> list[LineMatch]:
        """The runtime's side of a VM death: the agent dial and vhost-user-fs failures."""
        agent = [m for m in view.matches(AGENT.name) if m.groups.get("port") not in ("1026",)]
        fs = [m for m in view.matches(*(s.name for s in VIRTIOFSD)) if "Property '" not in m.text]
        return agent + fs

    def _selinux(self, view: EvidenceView) -> Finding | None:
        denials = [
            m
            for m in view.matches(AVC.name)
            if is_vmm_comm(m.groups.get("comm", "")) and m.groups.get("permissive") != "1"
        ]
        if not denials:
            return None
        enforce = (view.facts.get("selinux") or {}).get("enforce")
        facts = [fact(view, "host/facts.json", f"SELinux enforce: {enforce}")] if enforce is not None else []
        comms = sorted({m.groups["comm"] for m in denials})
        return finding(
            view,
            "selinux-denied",
            "error",
            f"SELinux denies {', '.join(comms)}",
            "Blocking AVC records (permissive=0) name the hypervisor or virtiofsd, so the VM or its shared file "
            "system could not start. The runtime's own errors (virtiofsd connection refused, KVM permission "
            "denied, agent timeouts) are consequences; AVCs for other programs are not counted.",
            "Update container-selinux / the host policy to one with Kata's container_kvm_t rules, or add a local "
            "module built from these AVCs (audit2allow); to confirm, set disable_selinux = true in the hypervisor "
            f"section or run permissive once. Refs: {ISSUES}4434, https://github.com/containers/container-selinux/pull/108, "
            f"{DOCS}how-to/how-to-use-selinux-with-kata.md",
            denials,
            facts,
            confirmed=enforce in (1, "1", True),
            occurrences=len(denials),
        )

    def _oom(self, view: EvidenceView, timing: OomTiming) -> Finding | None:
        kills = self._kills(view)
        if not kills:
            return None
        victims = sorted({_comm(m) for m in kills})
        rt = view.runtime_section()
        facts = []
        if "sandbox_cgroup_only" in rt:
            facts.append(
                fact(
                    view,
                    f"kata-config/files{view.kata_summary.get('in_effect')}",
                    f"[runtime] sandbox_cgroup_only = {str(rt['sandbox_cgroup_only']).lower()}",
                )
            )
        when = ""
        severity: Severity = "error"
        lines = list(kills)
        if timing.pairs:
            kill, failure, gap = timing.pairs[0]
            # The failures the kill explains join its evidence: one finding for one death.
            lines = kills + [f for _, f, _ in timing.pairs if f not in kills]
            when = (
                f" The kill ({_clock(timing, kill)}) came {gap:.0f} s before the runtime's failure "
                f"({_clock(timing, failure)}, within the {OOM_WINDOW.seconds} s window), so that failure is the VM's "
                "death seen from the runtime: not agent-unreachable, not virtiofsd-failed, and no guest kernel panic "
                "is needed to explain it."
            )
        elif timing.apart:
            severity = "warning"
            kill, gap, after, failure = timing.apart
            when = (
                f" The kill ({_clock(timing, kill)}) is {_span(gap)} {'after' if after else 'before'} the runtime's "
                f"failure ({_clock(timing, failure)}): "
                + (
                    "a kill after the failure cannot have caused it"
                    if after
                    else f"outside the {OOM_WINDOW.seconds} s window, it is from an earlier incident"
                )
                + ", so that failure is analysed on its own."
            )
        return finding(
            view,
            "vm-oom-killed",
            severity,
            f"The kernel OOM-killed the VM ({', '.join(victims)}) in the pod's memory cgroup"
            + (" (not when the sandbox failed)" if severity == "warning" else ""),
            "A memory-cgroup OOM record names the hypervisor or virtiofsd: the VM (default_memory + hot-plugged "
            "limits + hypervisor overhead) does not fit in the pod limit + RuntimeClass overhead. The runtime then "
            "reports 'grpc server is working: ttrpc: closed' or a vsock timeout, which is not agent-unreachable "
            "and not a guest problem (a guest OOM shows in the console, not in the host's kernel log)." + when,
            "Give the VM room: raise the pod's memory limit and the RuntimeClass overhead.podFixed.memory so that "
            "limit + overhead >= VM memory + hypervisor overhead, or lower default_memory. Refs: "
            f"{ISSUES}7470, {ISSUES}6129, {DOCS}design/host-cgroups.md, "
            "https://kubernetes.io/docs/concepts/scheduling-eviction/pod-overhead/",
            lines,
            facts,
            confirmed=True,
            occurrences=len(kills),
        )

    def _panic(self, view: EvidenceView) -> Finding | None:
        panics = [m for m in view.matches(PANIC.name) if any(h in m.text for h in _CONSOLE_HINTS)]
        if not panics:
            return None
        reason = panics[0].groups.get("reason", "").strip()
        return finding(
            view,
            "guest-kernel-panic",
            "error",
            f"The guest kernel panicked: {reason}"[:200],
            "The guest console relayed by the runtime ends in a kernel panic, so the agent never started; the "
            "runtime's dial timeout that follows is a consequence (not agent-unreachable). A panic in the host's "
            "own kernel log is not counted: only console lines are.",
            "Use the guest kernel and image/initrd shipped with the same Kata release (or rebuild a custom kernel "
            "with Kata's config fragments), keep image/initrd and kernel_params consistent, and give the VM enough "
            f"memory. Refs: {ISSUES}11285, {ISSUES}771, {DOCS}Developer-Guide.md#capturing-kernel-boot-logs",
            panics,
            confirmed=True,
            occurrences=len(panics),
        )

    def _virtiofsd(self, view: EvidenceView) -> Finding | None:
        lines = view.matches(*(s.name for s in VIRTIOFSD))
        lines = [m for m in lines if "Property '" not in m.text]
        if not lines:
            return None
        return finding(
            view,
            "virtiofsd-failed",
            "error",
            "virtiofsd did not start or died, so the hypervisor could not attach the shared file system",
            "QEMU could not connect to (or lost) the vhost-user-fs socket of virtiofsd. SELinux denials and OOM "
            "kills of virtiofsd, which look the same from QEMU's side, were looked for and rank above this when "
            "present; a missing virtiofsd binary is hypervisor-asset-missing.",
            "Check that virtio_fs_daemon points at the virtiofsd shipped with the Kata release and that "
            "virtio_fs_extra_args match its syntax; the virtiofsd journal says why it exited. Workaround: "
            f"shared_fs = virtio-9p (Go runtime). Refs: {ISSUES}3748, {ISSUES}5157, "
            f"{DOCS}how-to/how-to-use-virtio-fs-with-kata.md",
            lines,
            occurrences=view.count(*(s.name for s in VIRTIOFSD)),
        )

    def _feature(self, view: EvidenceView) -> Finding | None:
        lines = view.matches(*(s.name for s in FEATURE))
        if not lines:
            return None
        facts = []
        for path, name, section in view.hypervisor_sections():
            where = f"kata-config/files{path}"
            if section.get("path"):
                facts.append(fact(view, where, f"[hypervisor.{name}] path = {section['path']}"))
            if section.get("virtio_fs_cache_size"):
                facts.append(
                    fact(view, where, f"[hypervisor.{name}] virtio_fs_cache_size = {section['virtio_fs_cache_size']}")
                )
        return finding(
            view,
            "hypervisor-feature-unsupported",
            "error",
            "The configuration asks the hypervisor for a device or property it was not built with",
            "The hypervisor refused its command line (unknown property, device model, machine option or API "
            "field). Not virtiofsd-failed (no vhost-user failure) and not a missing binary: the hypervisor ran "
            "and rejected the request.",
            "Use the hypervisor build shipped with the Kata release (or one with the feature), or turn the feature "
            "off in the configuration (e.g. virtio_fs_cache_size = 0 to disable DAX on a distribution QEMU). "
            f"Refs: {ISSUES}3452, {ISSUES}1867, {RUNTIME_ISSUES}34",
            lines,
            facts,
            occurrences=view.count(*(s.name for s in FEATURE)),
        )

    def _agent(self, view: EvidenceView, timing: OomTiming) -> Finding | None:
        lines = [m for m in view.matches(AGENT.name) if m.groups.get("port") not in ("1026",)]
        if not lines:
            return None
        cfg = view.kata_config() or {}
        agent = (cfg.get("agent") or {}).get("kata") or {}
        notes = []
        if isinstance(agent, dict) and agent.get("dial_timeout") is not None:
            notes.append(f"dial_timeout = {agent['dial_timeout']}")
        for _, name, section in view.hypervisor_sections():
            params = str(section.get("kernel_params") or "")
            if "boot_delay" in params or "initcall_debug" in params:
                notes.append(f"[hypervisor.{name}] kernel_params = {params!r} slows the boot")
        nested = (view.facts.get("cpu") or {}).get("nested_hint")
        if nested:
            notes.append("the host is itself a VM: nested guests boot slowly")
        if timing.apart and not timing.pairs:
            notes.append(
                f"the OOM kill in the kernel log is {_span(timing.apart[1])} away from this failure: ruled out by time"
            )
        return finding(
            view,
            "agent-unreachable",
            "error",
            "The guest agent never answered within the dial timeout",
            "The runtime timed out dialling the agent. No OOM kill of the VM, SELinux denial, guest panic, "
            "virtiofsd failure or KVM/vsock error explains it in this bundle, so the guest was slow or never "
            "started the agent" + (f" ({'; '.join(notes)})" if notes else "") + ".",
            "Enable enable_debug in [hypervisor.*] and [agent.kata] to see the guest console in the kata journal; "
            "if the boot is merely slow (nested virtualization, debug), raise dial_timeout (Go) or "
            f"reconnect_timeout_ms (runtime-rs). Refs: {ISSUES}2499, {RUNTIME_ISSUES}1203, "
            f"{DOCS}Developer-Guide.md#capturing-kernel-boot-logs",
            lines,
            occurrences=view.count(AGENT.name),
        )
