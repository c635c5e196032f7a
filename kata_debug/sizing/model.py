"""How big a Kata VM will be: the runtime's own arithmetic, as pure functions.

Kata never sees Kubernetes requests. The kubelet turns *limits* into a CFS quota/period and a
memory limit on each container's OCI spec and into the `io.kubernetes.cri.sandbox-*`
annotations on the sandbox; the shim sizes the VM from those. Requests only become cpu
shares, and RuntimeClass overhead only sizes the host pod cgroup. This module reproduces the
shim's arithmetic so a user can see the VM they will actually get, and why.

Inputs are runtime-neutral (`SandboxInput`: per-container OCI `Resources`, sandbox
annotations, Kata annotations); three adapters feed it (manifests, live pods, OCI bundles on
a node). Every rule below names the upstream file and the release it follows. Release
history that matters:

* Go runtime (`src/runtime`): unchanged in substance from 3.x through 4.1.0.
* runtime-rs static sizing (`src/runtime-rs/crates/resource/src/cpu_mem/initial_size.rs`):
  up to 3.28 it replaced `default_vcpus` by the workload vCPUs and added workload memory to
  `default_memory`, whether or not static mode was on; 3.29-3.32 added both to the
  defaults only in static mode (3.31 also pinned `default_maxvcpus` to the result);
  **4.0.0 and 4.1.0** (modelled here) size a static sandbox that has limits as
  `max(overhead_vcpus + workload, 1)` vCPUs and `overhead_memory + workload` MiB, keep the
  configured defaults when it has none, and refuse a computed size of 0 MiB.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from kata_debug.node.oci import A_SANDBOX_CPU_PERIOD, A_SANDBOX_CPU_QUOTA, A_SANDBOX_MEMORY, Resources

KATA_RELEASE = "4.1.0"
MIB = 1 << 20
A_SANDBOX_CPU_SHARES = "io.kubernetes.cri.sandbox-cpu-shares"

ANN_HYPERVISOR_PREFIX = "io.katacontainers.config.hypervisor."
ANN_DEFAULT_VCPUS = ANN_HYPERVISOR_PREFIX + "default_vcpus"
ANN_DEFAULT_MEMORY = ANN_HYPERVISOR_PREFIX + "default_memory"
# Upstream spells it default_max_vcpus (both runtimes), unlike the config key default_maxvcpus.
ANN_DEFAULT_MAX_VCPUS = ANN_HYPERVISOR_PREFIX + "default_max_vcpus"

# Go: govmm.MaxVCPUs() on amd64 (src/runtime/pkg/govmm/vmm_amd64.go).
GO_MAX_VCPUS = 240
# Go: vc.MinHypervisorMemory; smaller default_memory falls back to 2048 (katautils/config.go).
GO_MIN_MEMORY = 256
GO_DEFAULT_MEMORY = 2048
# runtime-rs: DEFAULT_QEMU_MEMORY_SIZE_MB and friends (kata-types config/default.rs).
RS_DEFAULT_MEMORY_WHEN_ZERO = 128

# Linux memory block size of an x86_64 guest below 64 GiB (arch/x86/mm/init_64.c
# probe_memory_block_size); larger guests and other architectures use other sizes, which
# the guest reports to the runtime (GuestMemoryBlockSizeMB in persist.json).
DEFAULT_MEMORY_BLOCK_MIB = 128
# Name of the stand-in for init containers that ran and exited (their task bundles are gone).
EXITED_INIT = "(exited init container)"

# Makefile DEFENABLEANNOTATIONS of each runtime, 4.1.0.
GO_ENABLE_ANNOTATIONS = ("enable_iommu", "kernel_params", "kernel_verity_params")
RS_ENABLE_ANNOTATIONS = ("enable_iommu", "kernel_params", "kernel_verity_params", "default_vcpus", "default_memory")

GO = "go"
RS = "rs"
STATIC = "static"
DYNAMIC = "dynamic"

_F32 = struct.Struct("<f")


def f32(x: float) -> float:
    """Round to IEEE single precision: both runtimes keep vCPU counts in float32.

    It matters at the edges: ten 200m containers sum to 2.0000002 in float32, so the Go
    runtime's ceil(1 + sum) is 4 vCPUs, not 3.
    """
    try:
        return _F32.unpack(_F32.pack(x))[0]
    except OverflowError:
        return math.inf if x > 0 else -math.inf


@dataclass(frozen=True)
class SizingConfig:
    """The Kata configuration keys that size a VM, plus where they came from."""

    runtime: str = GO  # "go" (src/runtime) or "rs" (src/runtime-rs)
    hypervisor: str = "qemu"
    default_vcpus: float = 1.0
    default_maxvcpus: int = 0
    default_memory: int = GO_DEFAULT_MEMORY
    static_sandbox_resource_mgmt: bool = False
    enable_annotations: tuple[str, ...] = GO_ENABLE_ANNOTATIONS
    overhead_vcpus: float = 0.0  # runtime-rs >= 4.0.0 only
    overhead_memory: int = 0  # runtime-rs >= 4.0.0 only
    source: str = "Go runtime defaults"

    @property
    def mode(self) -> str:
        return STATIC if self.static_sandbox_resource_mgmt else DYNAMIC


@dataclass
class ContainerInput:
    """One container as the shim sees it: name, role in the pod, OCI resources."""

    name: str
    resources: Resources
    role: str = "app"  # app | init | sidecar (restartable init container)


@dataclass
class SandboxInput:
    """Everything the shim reads to size one sandbox."""

    containers: list[ContainerInput]
    sandbox_annotations: dict[str, str] = field(default_factory=dict)
    kata_annotations: dict[str, str] = field(default_factory=dict)
    host_cpus: int | None = None
    # How the kubelet filled container limits in (pod-level resources); shown as steps.
    notes: list[str] = field(default_factory=list)
    # Guest memory block size when known (persist.json); None assumes 128 MiB (estimate).
    memory_block_mib: int | None = None
    # Containers come from task bundles on a node: exited init containers are missing from
    # `containers`, so the pod's sizing annotations stand in for them (dynamic sizing).
    init_containers_may_be_gone: bool = False


@dataclass
class ContainerSize:
    """What one container adds to the VM (before the runtime's rounding)."""

    name: str
    role: str
    vcpus: float | None  # quota/period; None when the container has no CPU limit
    memory_bytes: int | None  # memory limit; None when unlimited
    hugepages_bytes: int = 0
    cpuset_cpus: int = 0


@dataclass
class AnnotationIssue:
    """A Kata hypervisor annotation the runtime will not apply."""

    annotation: str
    value: str
    problem: str  # not-enabled | invalid
    effect: str  # rejected (Go refuses the pod) | ignored (runtime-rs logs and goes on)
    detail: str


@dataclass
class InitPeak:
    """An init container that makes the VM bigger than the steady containers need.

    Memory is never hot-unplugged, so the extra memory stays for the pod's lifetime;
    vCPUs are hot-unplugged when the init container exits.
    """

    container: str
    vcpus: int
    memory_mib: int
    steady_vcpus: int
    steady_memory_mib: int

    def to_json(self) -> dict[str, object]:
        return {
            "container": self.container,
            "vcpus": self.vcpus,
            "memory_mib": self.memory_mib,
            "steady_vcpus": self.steady_vcpus,
            "steady_memory_mib": self.steady_memory_mib,
        }


@dataclass
class VmSize:
    """The VM a sandbox gets: at boot and once all its containers run."""

    runtime: str
    mode: str
    boot_vcpus: int
    boot_memory_mib: int
    vcpus: int
    memory_mib: int
    max_vcpus: int | None
    containers: list[ContainerSize]
    steps: list[str]
    annotation_issues: list[AnnotationIssue] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    peak_vcpus: int | None = None  # while a large init container runs, when above vcpus
    # What the guest sees: hot-plugged memory comes in whole guest memory blocks.
    guest_memory_mib: int = 0
    guest_memory_estimate: bool = False  # True when the block size was assumed
    init_peak: InitPeak | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "vcpus": self.vcpus,
            "memory_mib": self.memory_mib,
            "guest_memory_mib": self.guest_memory_mib,
            "guest_memory_estimate": self.guest_memory_estimate,
            "init_peak": self.init_peak.to_json() if self.init_peak else None,
            "mode": self.mode,
            "runtime": self.runtime,
            "boot_vcpus": self.boot_vcpus,
            "boot_memory_mib": self.boot_memory_mib,
            "max_vcpus": self.max_vcpus,
            "peak_vcpus": self.peak_vcpus,
            "errors": self.errors,
            "steps": self.steps,
        }


def fmt_cpus(v: float) -> str:
    """vCPUs for humans: 0.5, 2, 2.2 (float32 noise trimmed)."""
    if v == int(v):
        return str(int(v))
    return f"{v:.3f}".rstrip("0").rstrip(".")


def container_vcpus_go(r: Resources) -> float:
    """Go `utils.CalculateCPUsF`: quota/period in float32 when quota >= 0 and period != 0."""
    if r.cpu_quota is None or r.cpu_period is None:
        return 0.0
    if r.cpu_quota >= 0 and r.cpu_period != 0:
        return f32(f32(r.cpu_quota) / f32(r.cpu_period))
    return 0.0


def cpuset_size(spec: str | None) -> int | None:
    """Number of CPUs in a cpuset list (`0-3,8`); None when malformed, 0 when empty."""
    if not spec:
        return 0
    cpus: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            return None
        a, b = int(lo), int(hi) if sep else int(lo)
        if b < a or b - a > 65536:
            return None
        cpus.update(range(a, b + 1))
    return len(cpus)


def container_size(c: ContainerInput) -> ContainerSize:
    r = c.resources
    vcpus: float | None = None
    if r.cpu_quota is not None and r.cpu_period is not None and r.cpu_quota >= 0 and r.cpu_period > 0:
        vcpus = r.cpu_quota / r.cpu_period
    mem = r.memory_limit if r.memory_limit is not None and r.memory_limit > 0 else None
    return ContainerSize(
        name=c.name,
        role=c.role,
        vcpus=vcpus,
        memory_bytes=mem,
        hugepages_bytes=sum(v for v in r.hugepage_limits.values() if v > 0),
        cpuset_cpus=cpuset_size(r.cpuset_cpus) or 0,
    )


def _phases(containers: list[ContainerInput]) -> tuple[list[list[ContainerInput]], list[ContainerInput]]:
    """Which containers run together: one set per init container, then the steady set.

    Regular init containers run one at a time beside the sidecars started before them, then
    exit; their tasks are deleted, which removes them from both runtimes' sums. Sidecars
    (restartable init containers) keep running with the app containers.
    """
    init_phases: list[list[ContainerInput]] = []
    sidecars: list[ContainerInput] = []
    for c in containers:
        if c.role == "sidecar":
            sidecars.append(c)
        elif c.role == "init":
            init_phases.append([*sidecars, c])
    steady = sidecars + [c for c in containers if c.role == "app"]
    return init_phases, steady


def annotation_enabled(patterns: Iterable[str], annotation: str) -> bool:
    """Go `checkAnnotationNameIsValid` / runtime-rs `is_annotation_enabled`.

    Each `enable_annotations` entry is an *unanchored* regular expression matched against the
    name after `io.katacontainers.config.hypervisor.`, so `"vcpus"` enables both
    `default_vcpus` and `default_max_vcpus`.
    """
    if not annotation.startswith(ANN_HYPERVISOR_PREFIX):
        return True
    name = annotation[len(ANN_HYPERVISOR_PREFIX) :]
    for p in patterns:
        try:
            if re.search(p, name):
                return True
        except re.error:
            continue
    return False


@dataclass
class _Base:
    vcpus: float
    memory: int
    max_vcpus: int | None


def _resolve_go(cfg: SizingConfig, host: int | None, steps: list[str]) -> _Base:
    """katautils/config.go defaultVCPUs/defaultMaxVCPUs/defaultMemSz (4.1.0)."""
    v = float(cfg.default_vcpus)
    if v < 0 or (host is not None and v > host):
        if host is not None:
            steps.append(f"default_vcpus {fmt_cpus(v)} is out of range: the Go runtime uses the host's {host} CPUs")
            v = float(host)
        else:
            steps.append(
                f"default_vcpus {fmt_cpus(v)} means 'host CPUs' (host CPU count unknown: pass --host-cpus); assuming 1"
            )
            v = 1.0
    elif v == 0:
        v = 1.0
    mem = int(cfg.default_memory)
    if mem < GO_MIN_MEMORY:
        steps.append(f"default_memory {mem} MiB is below {GO_MIN_MEMORY}: the Go runtime uses {GO_DEFAULT_MEMORY} MiB")
        mem = GO_DEFAULT_MEMORY
    req = int(cfg.default_maxvcpus)
    max_v: int | None
    if host is not None and (req == 0 or req >= host):
        max_v = host
    elif host is None and req == 0:
        max_v = None
    else:
        max_v = req
    if max_v is not None and max_v > GO_MAX_VCPUS:
        max_v = GO_MAX_VCPUS
    return _Base(f32(v), mem, max_v)


def _resolve_rs(cfg: SizingConfig, host: int | None, steps: list[str]) -> _Base:
    """kata-types CpuInfo/MemoryInfo::adjust_config (4.1.0)."""
    req = int(cfg.default_maxvcpus)
    max_v: int | None = host if host is not None and (req == 0 or req > host) else (req or None)
    v = float(cfg.default_vcpus)
    if v < 0 or (host is not None and v > host):
        if host is not None:
            steps.append(f"default_vcpus {fmt_cpus(v)} is out of range: runtime-rs uses the host's {host} CPUs")
            v = float(host)
        else:
            steps.append(
                f"default_vcpus {fmt_cpus(v)} means 'host CPUs' (host CPU count unknown: pass --host-cpus); assuming 1"
            )
            v = 1.0
    elif v == 0:
        v = 1.0
    if max_v is not None and v > max_v:
        v = float(max_v)
    mem = int(cfg.default_memory)
    if mem == 0:
        steps.append(f"default_memory 0: runtime-rs uses its built-in {RS_DEFAULT_MEMORY_WHEN_ZERO} MiB")
        mem = RS_DEFAULT_MEMORY_WHEN_ZERO
    return _Base(f32(v), mem, max_v)


def _apply_annotations(
    inp: SandboxInput, cfg: SizingConfig, base: _Base, steps: list[str]
) -> tuple[list[AnnotationIssue], list[str]]:
    """Kata hypervisor annotations: rejected/ignored when not enabled, else override the config.

    Go (`oci.addAnnotations`) refuses the whole pod when any hypervisor annotation is not
    enabled; runtime-rs (`Annotation::update_config_by_annotation`) skips it silently.
    """
    issues: list[AnnotationIssue] = []
    errors: list[str] = []
    go = cfg.runtime == GO
    host = inp.host_cpus
    for key in sorted(inp.kata_annotations):
        if not key.startswith(ANN_HYPERVISOR_PREFIX):
            continue
        value = inp.kata_annotations[key]
        if not annotation_enabled(cfg.enable_annotations, key):
            issue = AnnotationIssue(
                key,
                value,
                "not-enabled",
                "rejected" if go else "ignored",
                f"enable_annotations = {list(cfg.enable_annotations)} does not match "
                f"{key[len(ANN_HYPERVISOR_PREFIX) :]!r}",
            )
            issues.append(issue)
            if go:
                errors.append(f"the Go runtime refuses the pod: annotation {key} is not enabled")
            else:
                steps.append(f"runtime-rs ignores {key}={value}: not in enable_annotations")
            continue
        problem = _apply_sizing_annotation(key, value, base, host, go, steps)
        if problem:
            issues.append(AnnotationIssue(key, value, "invalid", "rejected" if go else "ignored", problem))
            if go:
                errors.append(f"the Go runtime refuses the pod: {problem}")
            else:
                steps.append(f"runtime-rs ignores {key}: {problem}")
    return issues, errors


def _apply_sizing_annotation(
    key: str, value: str, base: _Base, host: int | None, go: bool, steps: list[str]
) -> str | None:
    """Apply one enabled sizing annotation; return a problem text when the runtime rejects it."""
    if key == ANN_DEFAULT_VCPUS:
        try:
            v = float(value)
        except ValueError:
            return f"{key}={value!r} is not a number"
        if not math.isfinite(v) or v < 0:
            return f"{key}={value!r} is not a valid vCPU count"
        if host is not None and v > host:
            return f"{key}={value} is greater than the host's {host} CPUs"
        base.vcpus = f32(v)
        steps.append(f"annotation {key}={value} replaces default_vcpus")
    elif key == ANN_DEFAULT_MEMORY:
        if not value.isdigit():
            return f"{key}={value!r} is not a whole number of MiB"
        mem = int(value)
        if go and mem < GO_MIN_MEMORY:
            return f"{key}={mem} is less than the minimum {GO_MIN_MEMORY} MiB"
        base.memory = mem
        steps.append(f"annotation {key}={value} replaces default_memory")
    elif key == ANN_DEFAULT_MAX_VCPUS:
        if not value.isdigit():
            return f"{key}={value!r} is not a whole number"
        m = int(value)
        if go and host is not None and m > host:
            return f"{key}={m} is greater than the host's {host} CPUs"
        if go and m > GO_MAX_VCPUS:
            return f"{key}={m} is greater than the {GO_MAX_VCPUS} vCPUs qemu supports"
        base.max_vcpus = m or base.max_vcpus
        steps.append(f"annotation {key}={value} replaces default_maxvcpus")
    return None


def _ann_int(ann: dict[str, str], key: str, unsigned: bool) -> int:
    """Sandbox sizing annotation as the runtimes parse it: missing or malformed -> 0."""
    raw = ann.get(key)
    if raw is None:
        return 0
    try:
        v = int(raw.strip())
    except ValueError:
        return 0
    if unsigned and v < 0:
        return 0
    return v


def size_vm(inp: SandboxInput, cfg: SizingConfig) -> VmSize:
    """The VM for one sandbox under one configuration, with the reasoning as `steps`."""
    steps: list[str] = [f"configuration: {cfg.source}", *inp.notes]
    if inp.init_containers_may_be_gone and not cfg.static_sandbox_resource_mgmt:
        stand_in = exited_init_stand_in(inp)
        if stand_in is not None:
            inp = SandboxInput(
                [stand_in, *inp.containers],
                inp.sandbox_annotations,
                inp.kata_annotations,
                inp.host_cpus,
                inp.notes,
                inp.memory_block_mib,
            )
            steps.append(
                "the pod's sizing annotations exceed its remaining containers: an init container that has "
                "exited (containerd deleted its task bundle) is counted from them"
            )
    base = (_resolve_go if cfg.runtime == GO else _resolve_rs)(cfg, inp.host_cpus, steps)
    issues, errors = _apply_annotations(inp, cfg, base, steps)
    sizes = [container_size(c) for c in inp.containers]
    if cfg.runtime == GO:
        vm = _go_static(inp, cfg, base, steps) if cfg.static_sandbox_resource_mgmt else _go_dynamic(inp, base, steps)
    else:
        vm = (
            _rs_static(inp, cfg, base, steps, errors)
            if cfg.static_sandbox_resource_mgmt
            else _rs_dynamic(inp, base, steps)
        )
    vm.containers = sizes
    vm.annotation_issues = issues
    vm.errors = errors + vm.errors
    vm.guest_memory_mib = vm.memory_mib
    if vm.mode == DYNAMIC and vm.memory_mib > vm.boot_memory_mib:
        block = inp.memory_block_mib or DEFAULT_MEMORY_BLOCK_MIB
        vm.guest_memory_mib = guest_memory(vm.boot_memory_mib, vm.memory_mib, block)
        vm.guest_memory_estimate = inp.memory_block_mib is None
        assumed = (
            " (assumed: x86_64 guests below 64 GiB; the guest reports its own)" if vm.guest_memory_estimate else ""
        )
        steps.append(
            f"guest memory = {vm.boot_memory_mib} + {vm.memory_mib - vm.boot_memory_mib} MiB hot-plugged, rounded up "
            f"to {block} MiB memory blocks{assumed} = {vm.guest_memory_mib} MiB"
        )
    return vm


def _sum_memory_bytes(running: list[ContainerInput]) -> int:
    total = 0
    for c in running:
        r = c.resources
        if r.memory_limit is not None and r.memory_limit > 0:
            total += r.memory_limit
        total += sum(v for v in r.hugepage_limits.values() if v > 0)
    return total


def _go_phase_vcpus(running: list[ContainerInput]) -> tuple[float, str]:
    """sandbox.go calculateSandboxCPUs: float32 sum of quota/period, else cpuset sizes."""
    total = 0.0
    cpuset = 0
    for c in running:
        total = f32(total + container_vcpus_go(c.resources))
        n = cpuset_size(c.resources.cpuset_cpus)
        if n is None:
            # cpuset.Parse fails: calculateSandboxCPUs returns 0 for the whole sandbox.
            return 0.0, f"cpuset {c.resources.cpuset_cpus!r} of {c.name} does not parse: the Go runtime adds no vCPUs"
        cpuset += n
    if total == 0 and cpuset > 0:
        return float(cpuset), f"no CPU quota, cpusets hold {cpuset} CPUs"
    return total, ""


def _go_dynamic(inp: SandboxInput, base: _Base, steps: list[str]) -> VmSize:
    """Go runtime, static_sandbox_resource_mgmt=false (sandbox.go updateResources, 4.1.0).

    The VM boots with default_vcpus/default_memory, then each container start hot-plugs the
    sum over running containers: vCPUs = ceil(default + sum(quota/period)) capped at
    default_maxvcpus; memory = default + floor(sum(memory limits + hugepage limits) / MiB).
    Memory is never hot-unplugged, so a large init container leaves the VM at its size.
    """
    boot_v = max(1, math.ceil(base.vcpus))
    steps.append(
        f"dynamic sizing (Go {KATA_RELEASE} virtcontainers/sandbox.go updateResources): the VM boots with "
        f"{boot_v} vCPU(s) and {base.memory} MiB, then hot-plugs each running container's limits"
    )
    init_phases, steady = _phases(inp.containers)

    def phase(running: list[ContainerInput]) -> tuple[int, int, float, str]:
        cpus, note = _go_phase_vcpus(running)
        want = math.ceil(f32(cpus + base.vcpus))
        if base.max_vcpus is not None:
            want = min(want, base.max_vcpus)
        want = max(want, boot_v)
        mem = (_sum_memory_bytes(running) + (base.memory << 20)) >> 20
        return want, mem, cpus, note

    vcpu_peak, mem_peak, who = _init_peaks(phase, init_phases, boot_v, base.memory)
    v, m, cpus, note = phase(steady)
    peak = _init_peak(who, vcpu_peak, mem_peak, v, m)
    for c in steady:
        _describe_container(c, steps)
    if note:
        steps.append(note)
    capped = ""
    raw = math.ceil(f32(cpus + base.vcpus))
    if base.max_vcpus is not None and raw > base.max_vcpus:
        capped = f", capped at default_maxvcpus {base.max_vcpus}"
    elif base.max_vcpus is None:
        capped = " (default_maxvcpus = host CPUs; pass --host-cpus to apply the cap)"
    steps.append(f"vCPUs = ceil({fmt_cpus(base.vcpus)} + {fmt_cpus(cpus)}) = {raw}{capped}")
    mem_bytes = _sum_memory_bytes(steady)
    steps.append(f"memory = {base.memory} + floor({mem_bytes} B / MiB) = {m} MiB")
    return _dynamic_size(GO, base, boot_v, (v, m), (vcpu_peak, mem_peak), peak, steps)


def _init_peaks(
    phase: Callable[[list[ContainerInput]], tuple[int, int, float, str]],
    init_phases: list[list[ContainerInput]],
    boot_vcpus: int,
    boot_memory: int,
) -> tuple[int, int, str | None]:
    """The largest (vCPUs, MiB) the VM reaches while init containers run, boot size included,
    and the init container that makes the largest of them (memory first: it stays)."""
    vcpu_peak, mem_peak = boot_vcpus, boot_memory
    who: str | None = None
    cpu_who: str | None = None
    for running in init_phases:
        v, m, _, _ = phase(running)
        if m > mem_peak:
            mem_peak, who = m, running[-1].name
        if v > vcpu_peak:
            vcpu_peak, cpu_who = v, running[-1].name
    return vcpu_peak, mem_peak, who or cpu_who


def _init_peak(who: str | None, vcpu_peak: int, mem_peak: int, v: int, m: int) -> InitPeak | None:
    if who is None or (vcpu_peak <= v and mem_peak <= m):
        return None
    return InitPeak(who, max(vcpu_peak, v), max(mem_peak, m), v, m)


def _dynamic_size(
    runtime: str,
    base: _Base,
    boot_vcpus: int,
    steady: tuple[int, int],
    peaks: tuple[int, int],
    init_peak: InitPeak | None,
    steps: list[str],
) -> VmSize:
    """The VM a dynamically sized sandbox ends with, for both runtimes.

    Memory an init container made the runtime hot-plug stays (neither runtime hot-unplugs
    memory), so the steady memory is the larger of the two; vCPUs are hot-removed, so the
    init peak is reported apart (`peak_vcpus`) and the steady count is what runs.
    """
    v, m = steady
    vcpu_peak, mem_peak = peaks
    if mem_peak > m:
        steps.append(
            f"an init container raised memory to {mem_peak} MiB; memory is never hot-unplugged, so the VM keeps it"
        )
    return VmSize(
        runtime=runtime,
        mode=DYNAMIC,
        boot_vcpus=boot_vcpus,
        boot_memory_mib=base.memory,
        vcpus=v,
        memory_mib=max(m, mem_peak),
        max_vcpus=base.max_vcpus,
        containers=[],
        steps=steps,
        peak_vcpus=vcpu_peak if vcpu_peak > v else None,
        init_peak=init_peak,
    )


def exited_init_stand_in(inp: SandboxInput) -> ContainerInput | None:
    """An init container that ran and exited, inferred from the pod's sizing annotations.

    containerd deletes an exited container's task bundle, so on a node the init containers
    are gone while the VM may still hold the memory one of them made it hot-plug. The
    kubelet's sandbox total (`io.kubernetes.cri.sandbox-*`, resourcehelper.PodLimits) is
    max(steady containers, largest init container) per resource, so when it exceeds what
    the remaining containers add up to, the excess is that init container's.
    """
    ann = inp.sandbox_annotations
    mem = _ann_int(ann, A_SANDBOX_MEMORY, unsigned=False)
    quota = _ann_int(ann, A_SANDBOX_CPU_QUOTA, unsigned=False)
    period = _ann_int(ann, A_SANDBOX_CPU_PERIOD, unsigned=True)
    steady_mem = _sum_memory_bytes(inp.containers)
    steady_cpu = sum(container_vcpus_go(c.resources) for c in inp.containers)
    ann_cpu = quota / period if quota > 0 and period > 0 else 0.0
    if mem <= steady_mem and ann_cpu <= steady_cpu + 1e-6:
        return None
    return ContainerInput(
        EXITED_INIT,
        Resources(cpu_quota=quota if quota > 0 else None, cpu_period=period or None, memory_limit=mem or None),
        "init",
    )


def guest_memory(boot_mib: int, memory_mib: int, block_mib: int) -> int:
    """Memory the guest sees: hot-plugged memory is added in whole guest memory blocks.

    Go qemu.go ResizeMemory/calcHotplugMemMiBSize rounds each hot-plug up to a multiple of
    the block size; runtime-rs qemu/inner.rs resize_memory aligns the hot-plugged total the
    same way. Boot memory is not rounded.
    """
    extra = memory_mib - boot_mib
    if extra <= 0 or block_mib <= 0:
        return memory_mib
    return boot_mib + -(-extra // block_mib) * block_mib


def _describe_container(c: ContainerInput, steps: list[str]) -> None:
    r = c.resources
    parts = []
    if r.cpu_quota is not None and r.cpu_period and r.cpu_quota >= 0:
        parts.append(f"quota {r.cpu_quota}/period {r.cpu_period} = {fmt_cpus(r.cpu_quota / r.cpu_period)} vCPU")
    else:
        parts.append("no CPU limit (adds no vCPU)")
    if r.memory_limit is not None and r.memory_limit > 0:
        parts.append(f"memory limit {r.memory_limit} B = {r.memory_limit / MIB:g} MiB")
    else:
        parts.append("no memory limit (adds no memory)")
    if r.hugepage_limits:
        parts.append("hugepages " + ", ".join(f"{k} {v} B" for k, v in sorted(r.hugepage_limits.items())))
    steps.append(f"{c.role} container {c.name}: " + "; ".join(parts))


def _go_static(inp: SandboxInput, cfg: SizingConfig, base: _Base, steps: list[str]) -> VmSize:
    """Go runtime, static_sandbox_resource_mgmt=true (pkg/oci/utils.go, 4.1.0).

    Sized once before boot from the sandbox annotations (CalculateSandboxSizing):
    vCPUs = ceil(default_vcpus + quota/period) (from cpu shares / 1024 when the quota is
    explicitly unconstrained), memory = default_memory + floor(sandbox memory / MiB);
    default_maxvcpus becomes the boot count, so nothing is hot-plugged later.
    """
    ann = inp.sandbox_annotations
    steps.append(
        f"static sizing (Go {KATA_RELEASE} pkg/oci/utils.go CalculateSandboxSizing): sized once at boot "
        "from the sandbox annotations io.kubernetes.cri.sandbox-cpu-quota/-cpu-period/-memory"
    )
    if not any(k in ann for k in (A_SANDBOX_CPU_QUOTA, A_SANDBOX_CPU_PERIOD, A_SANDBOX_MEMORY)):
        steps.append(
            "no sandbox sizing annotations (CRI-O and containerd < 1.6 do not pass them): "
            "the VM gets only the configured defaults"
        )
    period = _ann_int(ann, A_SANDBOX_CPU_PERIOD, unsigned=True)
    quota = _ann_int(ann, A_SANDBOX_CPU_QUOTA, unsigned=False)
    shares = _ann_int(ann, A_SANDBOX_CPU_SHARES, unsigned=True)
    memory = _ann_int(ann, A_SANDBOX_MEMORY, unsigned=False)
    cpus = f32(f32(quota) / f32(period)) if quota >= 0 and period != 0 else 0.0
    if cpus:
        steps.append(f"sandbox quota {quota}/period {period} = {fmt_cpus(cpus)} vCPU")
    if quota < 0 and cpus == 0 and shares > 0:
        cpus = float(math.ceil(shares / 1024))
        steps.append(
            f"quota unconstrained (CPU manager static policy): {shares} shares / 1024 -> {fmt_cpus(cpus)} vCPU"
        )
    mem_mib = memory // MIB if memory >= 0 else 0
    if memory > 0:
        steps.append(f"sandbox memory {memory} B = {mem_mib} MiB (rounded down)")
    total = f32(base.vcpus + cpus)
    # A total of 0 (default_vcpus annotation 0, no limit) boots 1 vCPU; maxvcpus is floored at 1.
    v = max(1, math.ceil(total))
    max_v = v
    m = base.memory + mem_mib
    steps.append(f"vCPUs = ceil({fmt_cpus(base.vcpus)} + {fmt_cpus(cpus)}) = {v}; default_maxvcpus becomes {max_v}")
    steps.append(f"memory = {base.memory} + {mem_mib} = {m} MiB")
    for c in inp.containers:
        _describe_container(c, steps)
    return VmSize(
        runtime=GO,
        mode=STATIC,
        boot_vcpus=v,
        boot_memory_mib=m,
        vcpus=v,
        memory_mib=m,
        max_vcpus=max_v,
        containers=[],
        steps=steps,
    )


def rs_memory_mib(n_bytes: int) -> int:
    """initial_size.rs convert_memory_to_mb: floor to MiB, rounded up to even (hugepage alignment)."""
    if n_bytes < 0:
        return 0
    mib = n_bytes // MIB
    return mib + 1 if mib % 2 else mib


def _rs_static(inp: SandboxInput, cfg: SizingConfig, base: _Base, steps: list[str], errors: list[str]) -> VmSize:
    """runtime-rs, static_sandbox_resource_mgmt=true (cpu_mem/initial_size.rs, 4.0.0-4.1.0).

    Workload = sandbox quota/period (f64, then f32) and memory rounded up to an even MiB.
    With any workload limit: vCPUs = ceil(max(overhead_vcpus + workload, 1)) and memory =
    overhead_memory + workload memory: the configured defaults are *replaced*, not added
    to. Without limits the defaults stay. A result of 0 MiB makes the sandbox fail.
    """
    ann = inp.sandbox_annotations
    steps.append(
        f"static sizing (runtime-rs {KATA_RELEASE} cpu_mem/initial_size.rs setup_config): sized once at boot "
        "from the sandbox annotations; with limits the VM is overhead + workload, "
        "without them the configured defaults"
    )
    period = _ann_int(ann, A_SANDBOX_CPU_PERIOD, unsigned=True)
    quota = _ann_int(ann, A_SANDBOX_CPU_QUOTA, unsigned=False)
    memory = _ann_int(ann, A_SANDBOX_MEMORY, unsigned=False)
    vcpu = f32(quota / period) if quota >= 0 and period > 0 else 0.0
    mem = rs_memory_mib(memory)
    if vcpu > 0 or mem > 0:
        if vcpu:
            steps.append(f"sandbox quota {quota}/period {period} = {fmt_cpus(vcpu)} vCPU")
        if mem:
            steps.append(f"sandbox memory {memory} B = {mem} MiB (floor, rounded up to even)")
        d_v = max(f32(cfg.overhead_vcpus + vcpu), 1.0)
        d_m = int(cfg.overhead_memory) + mem
        steps.append(
            f"vCPUs = ceil(max({fmt_cpus(cfg.overhead_vcpus)} overhead + {fmt_cpus(vcpu)}, 1)) = {math.ceil(d_v)}"
            " (default_vcpus is not added)"
        )
        steps.append(f"memory = {cfg.overhead_memory} overhead + {mem} = {d_m} MiB (default_memory is not added)")
        if not mem:
            steps.append("no memory limit: the VM gets only overhead_memory")
    else:
        d_v, d_m = base.vcpus, base.memory
        steps.append(f"no CPU or memory limits: default_vcpus {fmt_cpus(d_v)} and default_memory {d_m} MiB")
    v = max(1, math.ceil(d_v))
    if d_m <= 0:
        errors.append(
            "runtime-rs refuses the sandbox: computed sandbox memory is 0 MiB "
            "(set a memory limit or a non-zero default_memory/overhead_memory)"
        )
    return VmSize(
        runtime=RS,
        mode=STATIC,
        boot_vcpus=v,
        boot_memory_mib=d_m,
        vcpus=v,
        memory_mib=d_m,
        max_vcpus=v,
        containers=[],
        steps=steps,
    )


def _rs_phase_vcpus(running: list[ContainerInput], default_vcpus: float) -> tuple[float, str]:
    """cpu_mem/cpu.rs calc_cpu_resources (4.1.0): quotas normalised to the largest period."""
    if not running:
        return default_vcpus, "no containers: default_vcpus"
    max_period = max((c.resources.cpu_period or 0) for c in running)
    total_quota = 0.0
    cpuset: set[str] = set()
    for c in running:
        r = c.resources
        if r.cpuset_cpus:
            cpuset.update(_cpuset_members(r.cpuset_cpus))
        q, p = r.cpu_quota, r.cpu_period
        if q is not None and p and q >= 0 and p > 0:
            total_quota += q * (max_period / p)
    if total_quota == 0 and cpuset:
        return float(len(cpuset)), f"no CPU quota: cpusets hold {len(cpuset)} CPUs, which replace default_vcpus"
    if total_quota > 0 and max_period > 0:
        quota_vcpu = f32(total_quota / max_period)
        return f32(
            quota_vcpu + default_vcpus
        ), f"quota sum {fmt_cpus(quota_vcpu)} vCPU + default_vcpus {fmt_cpus(default_vcpus)}"
    return max(default_vcpus, 1.0), "no CPU limits: default_vcpus"


def _cpuset_members(spec: str) -> list[str]:
    out: list[str] = []
    for part in spec.split(","):
        lo, sep, hi = part.strip().partition("-")
        if lo.isdigit() and (not sep or hi.isdigit()) and (not sep or int(hi) - int(lo) <= 65536):
            out.extend(str(i) for i in range(int(lo), int(hi if sep else lo) + 1))
    return out


def _rs_dynamic(inp: SandboxInput, base: _Base, steps: list[str]) -> VmSize:
    """runtime-rs, static_sandbox_resource_mgmt=false (cpu_mem/cpu.rs and mem.rs, 4.1.0).

    Boots with the defaults; on each container change vCPUs = default_vcpus + sum of quotas
    (or the cpuset size, replacing the default), memory = default_memory + floor(sum of
    memory and hugepage limits / MiB).
    """
    boot_v = max(1, math.ceil(base.vcpus))
    steps.append(
        f"dynamic sizing (runtime-rs {KATA_RELEASE} cpu_mem/cpu.rs, mem.rs): the VM boots with "
        f"{boot_v} vCPU(s) and {base.memory} MiB, then resizes to the running containers' limits"
    )
    init_phases, steady = _phases(inp.containers)

    def phase(running: list[ContainerInput]) -> tuple[int, int, float, str]:
        want_f, note = _rs_phase_vcpus(running, base.vcpus)
        want = max(1, math.ceil(want_f))
        if base.max_vcpus is not None:
            want = min(want, base.max_vcpus)
        mem = base.memory + (_sum_memory_bytes(running) >> 20)
        return want, mem, want_f, note

    vcpu_peak, mem_peak, who = _init_peaks(phase, init_phases, boot_v, base.memory)
    v, m, want_f, note = phase(steady)
    peak = _init_peak(who, vcpu_peak, mem_peak, v, m)
    for c in steady:
        _describe_container(c, steps)
    steps.append(f"vCPUs = ceil({fmt_cpus(want_f)}) = {v} ({note})")
    steps.append(f"memory = {base.memory} + floor({_sum_memory_bytes(steady)} B / MiB) = {m} MiB")
    return _dynamic_size(RS, base, boot_v, (v, m), (vcpu_peak, mem_peak), peak, steps)
