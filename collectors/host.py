"""Host facts Kata depends on: virtualization, vsock, cgroups, kernel, memory, runtimes.

Most "sandbox won't start" reports come down to one of these (no /dev/kvm, vhost_vsock not
loaded, cgroup v1 vs v2, no hugepages), so the collector states each as a fact and lists
what is missing instead of failing.
"""

from __future__ import annotations

import asyncio
import os
import stat
from typing import Any

from kata_debug.collectors.base import CollectContext, Collector, CollectorOutput, host_tool_note
from kata_debug.node.containerd_config import CONTAINERD_CONFIGS, containerd_configs, docker_runtimes
from kata_debug.node.hostroot import HostItemError, HostRoot, describe
from kata_debug.node.kata_config import CONFIG_DIRS, effective_config_path

_MODULES = (
    "kvm",
    "kvm_intel",
    "kvm_amd",
    "vhost",
    "vhost_net",
    "vhost_vsock",
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "virtio_vsock",
    # Hold the host side of AF_VSOCK on VMware / Hyper-V guests, so vhost_vsock cannot load.
    "vmw_vsock_vmci_transport",
    "vmw_vmci",
    "hv_sock",
)
_DEVICES = ("/dev/kvm", "/dev/vhost-vsock", "/dev/vhost-net", "/dev/vsock")
_MEMINFO_KEYS = ("MemTotal", "MemAvailable", "HugePages_Total", "HugePages_Free", "Hugepagesize", "SwapTotal")
_FILES = (
    "/proc/cmdline",
    "/proc/version",
    "/etc/os-release",
    "/proc/meminfo",
    "/proc/modules",
    "/sys/fs/cgroup/cgroup.controllers",
)


def _read(host: HostRoot, path: str) -> str | None:
    try:
        return host.read_text(path, 1 << 20)
    except OSError:
        return None


def _list(host: HostRoot, path: str, failed: list[HostItemError]) -> list[str]:
    try:
        return host.listdir(path)
    except OSError as exc:
        failed.append(HostItemError(path, describe(exc)))
        return []


def _kata_configs(host: HostRoot) -> list[str]:
    """Kata configuration files in the directories Kata installs them to (bounded: the first 64)."""
    found: list[str] = []
    for d in CONFIG_DIRS:
        try:
            names = host.listdir(d)
        except OSError:
            continue
        found += [f"{d}/{n}" for n in sorted(names) if n.startswith("configuration") and n.endswith(".toml")]
    return found[:64]


def gather_facts(host: HostRoot, failed: list[HostItemError] | None = None) -> dict[str, Any]:
    """Blocking: read everything from the host root and interpret it.

    A directory that cannot be listed (a link loop, no permission) goes to `failed`.
    """
    failed = [] if failed is None else failed
    facts: dict[str, Any] = {"missing": []}
    missing: list[str] = facts["missing"]
    facts["kernel"] = (_read(host, "/proc/sys/kernel/osrelease") or "").strip() or None
    facts["cmdline"] = (_read(host, "/proc/cmdline") or "").strip() or None
    os_release = _read(host, "/etc/os-release") or ""
    facts["os"] = next(
        (ln.split("=", 1)[1].strip('"') for ln in os_release.splitlines() if ln.startswith("PRETTY_NAME=")), None
    )

    cpuinfo = _read(host, "/proc/cpuinfo") or ""
    flags: set[str] = set()
    cpus = 0
    x86 = False
    for line in cpuinfo.splitlines():
        if line.startswith("processor"):
            cpus += 1
        elif line.startswith(("flags", "Features")) and not flags:
            # x86 names its feature list "flags"; Arm's "Features" never holds vmx/svm
            # (virtualization there is EL2, not a cpuinfo flag), so only x86 can lack them.
            x86 = line.startswith("flags")
            flags = set(line.split(":", 1)[1].split())
    virt = sorted(flags & {"vmx", "svm"})
    facts["cpu"] = {
        "count": cpus or os.cpu_count(),
        # None: not known (no cpuinfo, or not an x86 CPU); [] : an x86 CPU without vmx/svm.
        "virtualization_flags": virt if x86 or virt else None,
        "nested_hint": "hypervisor" in flags,
    }
    if x86 and not virt:
        missing.append("CPU virtualization flag (vmx/svm) not exposed")

    devices: dict[str, Any] = {}
    for dev in _DEVICES:
        try:
            st = host.stat(dev)
            devices[dev] = {"present": True, "char_device": stat.S_ISCHR(st.st_mode), "mode": oct(st.st_mode & 0o777)}
        except OSError:
            devices[dev] = {"present": False}
    facts["devices"] = devices
    for dev in ("/dev/kvm", "/dev/vhost-vsock"):
        if not devices[dev]["present"]:
            missing.append(f"{dev} not present")

    modules_text = _read(host, "/proc/modules")
    loaded = {ln.split()[0] for ln in (modules_text or "").splitlines() if ln.strip()}
    builtin_text = _read(host, f"/lib/modules/{facts['kernel']}/modules.builtin") if facts["kernel"] else None
    builtin = {os.path.basename(ln).removesuffix(".ko").replace("-", "_") for ln in (builtin_text or "").splitlines()}
    # Without /proc/modules (a container's view, a kernel without module support) what is
    # not built in is "unknown", never "absent": nobody may conclude a module is missing.
    not_loaded = "absent" if modules_text is not None else "unknown"
    facts["modules"] = {m: ("loaded" if m in loaded else "builtin" if m in builtin else not_loaded) for m in _MODULES}
    facts["modules_known"] = modules_text is not None
    if facts["modules"]["vhost_vsock"] == "absent" and not devices["/dev/vhost-vsock"]["present"]:
        missing.append("vhost_vsock module not loaded")

    if host.exists("/sys/fs/cgroup/cgroup.controllers"):
        controllers = (_read(host, "/sys/fs/cgroup/cgroup.controllers") or "").split()
        facts["cgroup"] = {"version": 2, "controllers": controllers}
    elif host.exists("/sys/fs/cgroup/memory"):
        facts["cgroup"] = {"version": 1, "controllers": _list(host, "/sys/fs/cgroup", failed)}
    else:
        facts["cgroup"] = {"version": None}
        missing.append("/sys/fs/cgroup not visible under the host root")

    meminfo: dict[str, str] = {}
    for line in (_read(host, "/proc/meminfo") or "").splitlines():
        key, _, value = line.partition(":")
        if key in _MEMINFO_KEYS:
            meminfo[key] = value.strip()
    facts["memory"] = meminfo
    facts["hugepages"] = {
        n: (_read(host, f"/sys/kernel/mm/hugepages/{n}/nr_hugepages") or "").strip()
        for n in _list(host, "/sys/kernel/mm/hugepages", failed)
    }

    enforce = (_read(host, SELINUX_ENFORCE) or "").strip()
    facts["selinux"] = {"enforce": int(enforce) if enforce in ("0", "1") else None}

    # Imports (conf.d drop-ins) merged as containerd merges them; k3s/RKE2 templates apart.
    configs = containerd_configs(host)
    handlers = [h for c in configs if not c.template for h in c.handlers]
    facts["containerd"] = {
        "configs": list(dict.fromkeys(f for c in configs for f in c.files)),
        "runtime_handlers": [h.to_json() for h in handlers],
        "merged": [c.to_json() for c in configs],
    }
    docker_problems: list[str] = []
    facts["docker"] = {
        "runtimes": [r.to_json() for r in docker_runtimes(host, docker_problems)],
        "problems": docker_problems,
    }
    if not any(h.kata for h in handlers):
        missing.append("no Kata runtime handler in the containerd config")
    # Whether Kata is installed at all, from the host collector alone: `diagnose` must tell
    # a node without Kata from a broken one even in a bundle without the kata-config collector.
    facts["kata"] = {
        "config_in_effect": effective_config_path(host),
        # kata-deploy's configuration-<hypervisor>.toml under /opt/kata (CRI-O handlers name
        # them in crio.conf.d, which containerd's handlers do not show).
        "configs": _kata_configs(host),
        "handler_configs": sorted({h.config_path for h in handlers if h.config_path and host.is_file(h.config_path)}),
    }
    # Who collected, and from where: a non-root run on the node itself misses root-only
    # evidence, which a reader of the bundle (not only the person who ran it) must know.
    # (Whether, not which, host root: the same node read through a pod's mounts gives the same facts.)
    facts["collection"] = {"euid": os.geteuid(), "host_root_is_slash": str(host.root) == "/"}
    return facts


#: Copied as they are, next to the facts drawn from them.
_COPIED = ("/proc/cmdline", "/proc/version", "/etc/os-release", "/proc/meminfo")
#: The other container managers' configuration: which CRI runs Kata, and how (diagnose reads
#: CRI-O's runtimes and storage options, Docker's runtimes).
CRIO_CONFIGS = ("/etc/crio/crio.conf", "/etc/containers/storage.conf")
CRIO_DROP_INS = "/etc/crio/crio.conf.d"
DOCKER_CONFIG = "/etc/docker/daemon.json"
SELINUX_ENFORCE = "/sys/fs/selinux/enforce"


def other_cri_configs(host: HostRoot, failed: list[HostItemError] | None = None) -> list[str]:
    """CRI-O and Docker configuration files present on the node. Blocking.

    A drop-in directory that cannot be listed goes to `failed`.
    """
    found = [p for p in CRIO_CONFIGS if host.is_file(p)]
    names = _list(host, CRIO_DROP_INS, [] if failed is None else failed)
    found += [f"{CRIO_DROP_INS}/{n}" for n in names if n.endswith(".conf")]
    if host.is_file(DOCKER_CONFIG):
        found.append(DOCKER_CONFIG)
    return found


class HostCollector(Collector):
    name = "host"
    summary = (
        "kernel, cmdline, CPU virtualization, /dev/kvm and vsock devices, modules, cgroups, memory, SELinux mode, "
        "containerd handlers, CRI-O / containers-storage / Docker configuration"
    )
    reads = (
        *_FILES,
        "/proc/cpuinfo",
        "/proc/sys/kernel/osrelease",
        *_DEVICES,
        "/sys/kernel/mm/hugepages",
        *CONTAINERD_CONFIGS,
        "/etc/containerd/conf.d/*.toml (containerd `imports`, wherever they point)",
        "/var/lib/rancher/k3s/agent/etc/containerd/config.toml.tmpl",
        "/var/lib/rancher/rke2/agent/etc/containerd/config.toml.tmpl",
        *CRIO_CONFIGS,
        f"{CRIO_DROP_INS}/*.conf",
        DOCKER_CONFIG,
        SELINUX_ENFORCE,
        "containerd --version",
    )

    async def collect(self, ctx: CollectContext, out: CollectorOutput) -> None:
        failed: list[HostItemError] = []
        facts = await asyncio.to_thread(gather_facts, ctx.host, failed)
        for f in failed:
            out.item_failed(f.path, f.reason)
        for path in _COPIED:
            if await asyncio.to_thread(ctx.host.exists, path):
                await out.add_host_file("files" + path, path, max_bytes=1 << 20)
        for path in facts["containerd"]["configs"]:
            await out.add_host_file("files" + path, path, max_bytes=4 << 20)
        cri_failed: list[HostItemError] = []
        facts["other_cri_configs"] = await asyncio.to_thread(other_cri_configs, ctx.host, cri_failed)
        for f in cri_failed:
            out.item_failed(f.path, f.reason)
        for path in facts["other_cri_configs"]:
            await out.add_host_file("files" + path, path, max_bytes=4 << 20)
        facts["containerd"]["version"], facts["containerd"]["version_from"] = await self._containerd_version(ctx)
        await out.add_json("facts.json", facts)

    async def _containerd_version(self, ctx: CollectContext) -> tuple[str | None, str]:
        """Ask the node's containerd binary, when host tools may run; and say where it ran."""
        exe = await asyncio.to_thread(ctx.host.first_file, ("/usr/bin/containerd", "/usr/local/bin/containerd"))
        if exe is None:
            return None, "no containerd binary on the node"
        if not ctx.run_host_tools:
            return None, f"{exe} not run: --host-root is not / (pass --run-host-tools to run the node's binaries)"
        where = host_tool_note(ctx, str(exe))
        try:
            proc = await asyncio.create_subprocess_exec(
                str(exe),
                "--version",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                stdin=asyncio.subprocess.DEVNULL,
            )
        except OSError as exc:
            return None, f"{where}; could not start: {describe(exc)}"
        try:
            stdout, _ = await asyncio.wait_for(proc.communicate(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return None, f"{where}; no answer within 10s"
        return stdout.decode(errors="replace").strip() or None, where
