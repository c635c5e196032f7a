"""Per Kata sandbox: the limits Kata was given, the VM it should have made, and the VM it made.

The same sizing model as `kata-debug limits` (`kata_debug.sizing.model`), fed this time by the
node's own evidence: the OCI specs of the sandbox and its containers (limits and the CRI
sizing annotations) and the Kata configuration the sandbox runs with. What the VM really
got comes from the hypervisor's command line (qemu `-smp`/`-m`, found in the host's
/proc by the sandbox id it names) and the Go runtime's state (`persist.json`: boot size
plus hot-plugged vCPUs and memory). A difference between the two is the finding: a config
other than the one we read, annotations that changed the size, a missing sizing annotation.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from kata_debug.collectors.base import CollectContext, Collector, CollectorOutput
from kata_debug.node.containerd_config import runtime_handlers
from kata_debug.node.hostroot import HostItemError, HostRoot, describe
from kata_debug.node.kata_config import SEARCH_PATHS, KataConfig, load_config, load_effective_config
from kata_debug.node.oci import CONTAINERD_TASK_ROOT, CRIO_ROOT, OciBundle, iter_bundles, read_json_capped
from kata_debug.sizing.config import for_handler, from_kata_config
from kata_debug.sizing.model import (
    DEFAULT_MEMORY_BLOCK_MIB,
    EXITED_INIT,
    ContainerInput,
    SandboxInput,
    SizingConfig,
    VmSize,
    guest_memory,
    size_vm,
)

PERSIST = "/run/vc/sbs/{sid}/persist.json"
HANDLER_ANNOTATIONS = ("io.kubernetes.cri.runtime-handler", "io.kubernetes.cri-o.RuntimeHandler")
_CMDLINE_CAP = 1 << 16
_MEM_ARG = re.compile(r"^(?:size=)?(\d+(?:\.\d+)?)([kKmMgGtT]?)[bB]?(?:,|$)")
_UNIT_MIB = {"": 1, "m": 1, "g": 1024, "t": 1024 * 1024, "k": 1 / 1024}


@dataclass
class QemuProcess:
    pid: int
    argv: list[str]


@dataclass
class Observed:
    """What the VM actually got, from whatever evidence this node has."""

    sources: list[str] = field(default_factory=list)
    boot_vcpus: int | None = None
    max_vcpus: int | None = None
    boot_memory_mib: int | None = None
    current_vcpus: int | None = None
    current_memory_mib: int | None = None
    block_mib: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def parse_smp(value: str) -> tuple[int | None, int | None]:
    """qemu `-smp 1,cores=1,threads=1,sockets=4,maxcpus=4` (or `cpus=2,...`) -> (boot, max)."""
    boot: int | None = None
    max_v: int | None = None
    for i, part in enumerate(value.split(",")):
        key, sep, val = part.partition("=")
        if not sep and i == 0 and key.isdigit():
            boot = int(key)
        elif key == "cpus" and val.isdigit():
            boot = int(val)
        elif key == "maxcpus" and val.isdigit():
            max_v = int(val)
    return boot, max_v


def parse_mem(value: str) -> int | None:
    """qemu `-m 2048M,slots=10,maxmem=12799M` (or `size=2G,...`) -> boot MiB (qemu's default unit is MiB)."""
    m = _MEM_ARG.match(value)
    if not m:
        return None
    return int(float(m.group(1)) * _UNIT_MIB[m.group(2).lower()])


def from_qemu(argv: list[str], obs: Observed) -> None:
    for flag, val in zip(argv, argv[1:]):
        if flag == "-smp":
            obs.boot_vcpus, obs.max_vcpus = parse_smp(val)
            obs.detail["smp"] = val
        elif flag == "-m":
            obs.boot_memory_mib = parse_mem(val)
            obs.detail["m"] = val


def from_persist(state: dict[str, Any], obs: Observed) -> None:
    """Go runtime persist.json: Config.HypervisorConfig is the boot size, HypervisorState the hot-plugs."""
    hc = ((state.get("Config") or {}).get("HypervisorConfig") or {}) if isinstance(state, dict) else {}
    hs = (state.get("HypervisorState") or {}) if isinstance(state, dict) else {}
    vcpus = hc.get("NumVCPUsF", hc.get("NumVCPUs"))
    if isinstance(vcpus, (int, float)) and vcpus > 0:
        boot = math.ceil(vcpus)
        obs.boot_vcpus = obs.boot_vcpus or boot
        plugged = hs.get("HotpluggedVCPUs") or []
        obs.current_vcpus = boot + (len(plugged) if isinstance(plugged, list) else 0)
    mem = hc.get("MemorySize")
    if isinstance(mem, int) and mem > 0:
        obs.boot_memory_mib = obs.boot_memory_mib or mem
        extra = hs.get("HotpluggedMemory")
        obs.current_memory_mib = mem + (extra if isinstance(extra, int) else 0)
    if isinstance(hc.get("DefaultMaxVCPUs"), int) and hc["DefaultMaxVCPUs"] > 0:
        obs.max_vcpus = obs.max_vcpus or hc["DefaultMaxVCPUs"]
    block = state.get("GuestMemoryBlockSizeMB") if isinstance(state, dict) else None
    if isinstance(block, int) and block > 0:
        obs.block_mib = block
    if isinstance(hs.get("Pid"), int):
        obs.detail["hypervisor_pid"] = hs["Pid"]


def compare(vm: VmSize, obs: Observed) -> list[dict[str, Any]]:
    """Findings where the VM differs from what Kata's arithmetic says it should be."""
    findings: list[dict[str, Any]] = []

    def mismatch(what: str, want: int, got: int, where: str) -> None:
        findings.append(
            {
                "rule": "vm-size-mismatch",
                "severity": "warning",
                "resource": what,
                "message": (
                    f"{where}: the VM has {got} {'vCPU(s)' if what == 'cpu' else 'MiB'}, but Kata's sizing of "
                    f"these limits with this configuration gives {want}: the shim used other settings "
                    "(another configuration file, annotations) or other limits than the OCI specs say"
                ),
            }
        )

    if obs.boot_vcpus is not None and obs.boot_vcpus != vm.boot_vcpus:
        mismatch("cpu", vm.boot_vcpus, obs.boot_vcpus, "at boot")
    if obs.boot_memory_mib is not None and obs.boot_memory_mib != vm.boot_memory_mib:
        mismatch("memory", vm.boot_memory_mib, obs.boot_memory_mib, "at boot")
    if obs.current_vcpus is not None and obs.current_vcpus != vm.vcpus:
        mismatch("cpu", vm.vcpus, obs.current_vcpus, "now")
    if obs.current_memory_mib is not None:
        # Hot-plugged memory is rounded up to whole guest memory blocks (model.guest_memory);
        # with the block size from persist.json the guest's memory is exact.
        want = vm.memory_mib
        if vm.mode == "dynamic":
            want = guest_memory(vm.boot_memory_mib, vm.memory_mib, obs.block_mib or DEFAULT_MEMORY_BLOCK_MIB)
        low = want if obs.block_mib else vm.memory_mib
        if not low <= obs.current_memory_mib <= want:
            mismatch("memory", want, obs.current_memory_mib, "now")
    return findings


def init_peak_finding(vm: VmSize) -> dict[str, Any] | None:
    """`init-container-peak` (info) when an init container holds the VM's memory up."""
    p = vm.init_peak
    if p is None or p.memory_mib <= p.steady_memory_mib:
        return None
    who = "an init container that has exited" if p.container == EXITED_INIT else f"init container {p.container}"
    return {
        "rule": "init-container-peak",
        "severity": "info",
        "resource": "memory",
        "message": (
            f"{who} made the VM hot-plug memory up to {p.memory_mib} MiB; memory is never hot-unplugged, so the "
            f"VM keeps it for the pod's lifetime (the running containers need {p.steady_memory_mib} MiB)"
        ),
    }


def host_cpus(host: HostRoot) -> int | None:
    """Online CPUs of the node (`/sys/devices/system/cpu/online`, else /proc/cpuinfo). Blocking."""
    try:
        text = host.read_text("/sys/devices/system/cpu/online", limit=4096).strip()
        total = 0
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            total += int(hi or lo) - int(lo) + 1
        if total > 0:
            return total
    except (OSError, ValueError):
        pass
    try:
        n = sum(
            1 for line in host.read_text("/proc/cpuinfo", limit=1 << 22).splitlines() if line.startswith("processor")
        )
        return n or None
    except OSError:
        return None


def qemu_processes(host: HostRoot, failed: list[HostItemError] | None = None) -> list[QemuProcess]:
    """Hypervisor processes in the host's /proc whose binary name contains qemu. Blocking.

    An unreadable /proc goes to `failed`; a process that exits while we look is just gone.
    """
    found: list[QemuProcess] = []
    try:
        pids = host.listdir("/proc")
    except OSError as exc:
        if failed is not None:
            failed.append(HostItemError("/proc", describe(exc)))
        return found
    for name in pids:
        if not name.isdigit():
            continue
        try:
            raw = host.read_bytes(f"/proc/{name}/cmdline", limit=_CMDLINE_CAP)
        except OSError:
            continue
        argv = [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]
        if argv and "qemu" in argv[0].rsplit("/", 1)[-1]:
            found.append(QemuProcess(int(name), argv))
    return found


@dataclass
class _Sandbox:
    sandbox: OciBundle | None = None
    containers: list[OciBundle] = field(default_factory=list)


class ResourceLimitsCollector(Collector):
    name = "resource-limits"
    summary = (
        "per Kata sandbox: limits from its OCI specs, the VM size Kata computes from them, and what "
        "the VM got (qemu -smp/-m, persist.json); a finding when they differ"
    )
    reads = (
        f"{CONTAINERD_TASK_ROOT}/<ns>/<id>/config.json",
        f"{CRIO_ROOT}/<id>/userdata/config.json",
        *SEARCH_PATHS,
        "containerd runtime ConfigPath of the sandbox's handler",
        "/run/vc/sbs/<sid>/persist.json",
        "/proc/<pid>/cmdline (qemu processes)",
        "/sys/devices/system/cpu/online",
    )

    async def collect(self, ctx: CollectContext, out: CollectorOutput) -> None:
        host = ctx.host
        failed: list[HostItemError] = []
        bundles: list[OciBundle] = await asyncio.to_thread(
            lambda: list(iter_bundles(host, failed, ctx.max_parse_bytes))
        )
        groups: dict[str, _Sandbox] = defaultdict(_Sandbox)
        for b in bundles:
            e = b.entry
            if not e.kata or not e.sandbox_id:
                continue
            if e.type == "sandbox":
                groups[e.sandbox_id].sandbox = b
            elif e.type == "container":
                groups[e.sandbox_id].containers.append(b)
        cpus = await asyncio.to_thread(host_cpus, host)
        node_cfg, node_cfg_note = await self._node_config(host, out)
        handlers = {h.name: h for h in await asyncio.to_thread(runtime_handlers, host)}
        qemus = await asyncio.to_thread(qemu_processes, host, failed) if groups else []
        for f in failed:
            out.item_failed(f.path, f.reason)
        rows = []
        for sid in sorted(groups):
            rows.append(await self._sandbox(ctx, out, sid, groups[sid], node_cfg, handlers, cpus, qemus))
        await out.add_json(
            "sizing.json",
            {
                "host_cpus": cpus,
                "node_config": node_cfg_note,
                "count": len(rows),
                "mismatches": sum(1 for r in rows if r["findings"]),
                "missing": [] if rows else ["no Kata sandboxes on this node"],
                "sandboxes": rows,
            },
        )
        await out.add_text("sizing.txt", _text(rows, node_cfg_note, cpus))

    async def _node_config(self, host: HostRoot, out: CollectorOutput) -> tuple[KataConfig | None, str]:
        try:
            kc = await asyncio.to_thread(load_effective_config, host)
        except Exception as exc:  # noqa: BLE001 - OSError, TOMLDecodeError: recorded, defaults assumed
            out.item_failed("kata configuration", f"{type(exc).__name__}: {exc}")
            return None, f"unreadable ({exc}); Go runtime defaults assumed"
        if kc is None:
            return None, f"none of {', '.join(SEARCH_PATHS)} exists; kata-deploy defaults for the handler assumed"
        return kc, kc.path

    async def _config_for(
        self,
        host: HostRoot,
        out: CollectorOutput,
        handler: str | None,
        node_cfg: KataConfig | None,
        handlers: dict[str, Any],
    ) -> SizingConfig:
        """The handler's own ConfigPath (kata-deploy), else the node's configuration, else defaults."""
        h = handlers.get(handler or "")
        if h is not None and h.config_path:
            try:
                kc = await asyncio.to_thread(load_config, host, h.config_path)
                return from_kata_config(kc)
            except Exception as exc:  # noqa: BLE001 - recorded; fall back to the node's file
                out.item_failed(h.config_path, f"{type(exc).__name__}: {exc}")
        if node_cfg is not None:
            return from_kata_config(node_cfg)
        return for_handler(handler)

    async def _sandbox(
        self,
        ctx: CollectContext,
        out: CollectorOutput,
        sid: str,
        g: _Sandbox,
        node_cfg: KataConfig | None,
        handlers: dict[str, Any],
        cpus: int | None,
        qemus: list[QemuProcess],
    ) -> dict[str, Any]:
        host = ctx.host
        sb = g.sandbox.entry if g.sandbox else None
        ann = ((g.sandbox.spec or {}).get("annotations") or {}) if g.sandbox else {}
        handler = next((ann[a] for a in HANDLER_ANNOTATIONS if ann.get(a)), None)
        cfg = await self._config_for(host, out, handler, node_cfg, handlers)
        obs = Observed()
        for q in qemus:
            if any(sid in a for a in q.argv):
                from_qemu(q.argv, obs)
                obs.sources.append(f"/proc/{q.pid}/cmdline")
                break
        persist = PERSIST.format(sid=sid)
        cap = ctx.max_parse_bytes

        def _read_persist() -> tuple[Any, int | None]:
            with host.open(persist) as fh:
                return read_json_capped(fh, cap)

        try:
            state, oversize = await asyncio.to_thread(_read_persist)
            if oversize is not None:
                out.item_failed(persist, f"{oversize} bytes, over the {cap} byte parse cap: not parsed")
            else:
                from_persist(state, obs)
                obs.sources.append(persist)
        except FileNotFoundError:
            pass
        except OSError as exc:
            out.item_failed(persist, describe(exc))
        except ValueError as exc:
            out.item_failed(persist, f"malformed JSON: {exc}")
        # containerd deletes an exited init container's task bundle: the pod's sizing
        # annotations stand in for it (model.exited_init_stand_in).
        inp = SandboxInput(
            containers=[ContainerInput(c.entry.container_name or c.entry.id, c.entry.resources) for c in g.containers],
            sandbox_annotations=dict(sb.sandbox_annotations) if sb else {},
            kata_annotations=dict(sb.kata_annotations) if sb else {},
            host_cpus=cpus,
            memory_block_mib=obs.block_mib,
            init_containers_may_be_gone=True,
        )
        vm = size_vm(inp, cfg)
        findings = compare(vm, obs) if obs.sources else []
        if vm.init_peak is not None and any(f["resource"] == "memory" for f in findings):
            # The VM may also have been sized without that init container (a pod-level limit
            # above its containers' sum looks the same): accept what matches either.
            plain = size_vm(dataclasses.replace(inp, init_containers_may_be_gone=False), cfg)
            if not [f for f in compare(plain, obs) if f["resource"] == "memory"]:
                vm = plain
                findings = compare(vm, obs)
        peak = init_peak_finding(vm)
        if peak is not None:
            findings.append(peak)
        if sb is None:
            findings.append(
                {
                    "rule": "unevaluable",
                    "severity": "info",
                    "resource": None,
                    "message": "no sandbox (pause) bundle: the CRI sizing annotations are unknown",
                }
            )
        return {
            "sandbox_id": sid,
            "pod": {"namespace": sb.pod_namespace, "name": sb.pod_name, "uid": sb.pod_uid} if sb else None,
            "runtime_handler": handler,
            "config": cfg.source,
            "sandbox_annotations": inp.sandbox_annotations,
            "containers": [
                {
                    "id": c.entry.id,
                    "name": c.entry.container_name,
                    **{k: v for k, v in c.entry.to_json()["resources"].items()},
                }
                for c in g.containers
            ],
            "computed": vm.to_json(),
            "observed": {
                "sources": obs.sources,
                "boot_vcpus": obs.boot_vcpus,
                "max_vcpus": obs.max_vcpus,
                "boot_memory_mib": obs.boot_memory_mib,
                "current_vcpus": obs.current_vcpus,
                "current_memory_mib": obs.current_memory_mib,
                **obs.detail,
            }
            if obs.sources
            else None,
            "findings": findings,
        }


def _text(rows: list[dict[str, Any]], node_cfg: str, cpus: int | None) -> str:
    lines = [f"Kata configuration: {node_cfg}", f"host CPUs: {cpus if cpus is not None else 'unknown'}", ""]
    for r in rows:
        c, o = r["computed"], r["observed"]
        pod = r["pod"] or {}
        lines.append(f"{r['sandbox_id']}  {pod.get('namespace')}/{pod.get('name')}  ({c['runtime']} / {c['mode']})")
        lines.append(
            f"  computed: boot {c['boot_vcpus']} vCPU / {c['boot_memory_mib']} MiB, "
            f"running {c['vcpus']} vCPU / {c['memory_mib']} MiB"
        )
        if o:

            def known(v: Any) -> Any:
                return "unknown" if v is None else v

            lines.append(
                f"  observed: boot {known(o['boot_vcpus'])} vCPU / {known(o['boot_memory_mib'])} MiB, now "
                f"{known(o['current_vcpus'])} vCPU / {known(o['current_memory_mib'])} MiB "
                f"({', '.join(o['sources'])})"
            )
        else:
            lines.append("  observed: no hypervisor command line or persist.json found")
        for f in r["findings"]:
            lines.append(f"  {f['severity']}: {f['rule']}: {f['message']}")
        lines.append("")
    return "\n".join(lines)
