"""Run deploy/daemonset.yaml's agent container on the real containerd, the way the kubelet would.

`translate` reads the YAML (never a copy of its settings) and turns the pod template into
`ctr run` flags: read-only root, the capability set, no-new-privileges, seccomp, limits, env,
and every volume mount bound from a synthetic host root with the same read-only/writable
choice. What `ctr run` cannot express raises, so a new setting in the YAML cannot be silently
left out of the proof.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# Every Linux capability (up to CAP_CHECKPOINT_RESTORE); `drop: [ALL]` drops each of them.
ALL_CAPS = (
    "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE "
    "NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO "
    "SYS_CHROOT SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME "
    "SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG "
    "WAKE_ALARM BLOCK_SUSPEND AUDIT_READ PERFMON BPF CHECKPOINT_RESTORE"
).split()
CAP_BITS = {name: bit for bit, name in enumerate(ALL_CAPS)}


class Untranslatable(ValueError):
    """A DaemonSet setting `ctr run` cannot reproduce: the proof would not be the real thing."""


@dataclass
class Mount:
    name: str
    source: Path
    destination: str
    read_only: bool


@dataclass
class ContainerRun:
    """The agent container as `ctr run` flags plus what the kubelet would exec in it."""

    flags: list[str]
    command: list[str] | None  # the container's `command` (None: the image's entrypoint)
    args: list[str]
    env: dict[str, str]
    mounts: list[Mount]
    cap_effective: set[str]
    probes: dict[str, list[str]] = field(default_factory=dict)

    def argv(self, entrypoint: list[str]) -> list[str]:
        """The process: `command` or the image's entrypoint, then `args` (Kubernetes' rule)."""
        return [*(self.command if self.command is not None else entrypoint), *self.args]


def load_daemonset(path: Path) -> dict[str, Any]:
    (ds,) = [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "DaemonSet"]
    return dict(ds)


def _quantity(value: str | int) -> float:
    """A Kubernetes quantity (500m, 512Mi, 2Gi, 1) as a number."""
    text = str(value)
    m = re.fullmatch(r"([0-9.]+)(m|Ki|Mi|Gi|Ti|k|M|G|T)?", text)
    if not m:
        raise Untranslatable(f"quantity {text!r}")
    scale = {
        None: 1,
        "m": 1e-3,
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
        "k": 1e3,
        "M": 1e6,
        "G": 1e9,
        "T": 1e12,
    }
    return float(m.group(1)) * scale[m.group(2)]


def translate(
    daemonset: Path,
    *,
    host_root: Path,
    scratch: Path,
    node_name: str,
    image_user: str = "0:0",
    container: str = "agent",
) -> ContainerRun:
    """The DaemonSet's `container` as `ctr run` would run it on a node whose / is host_root."""
    ds = load_daemonset(daemonset)
    spec = ds["spec"]["template"]["spec"]
    (c,) = [c for c in spec["containers"] if c["name"] == container]
    flags: list[str] = []

    sc = c.get("securityContext", {})
    if sc.get("privileged"):
        flags.append("--privileged")
    if sc.get("readOnlyRootFilesystem"):
        flags.append("--read-only")
    if sc.get("allowPrivilegeEscalation", True):
        flags.append("--allow-new-privs")  # ctr sets no_new_privileges unless told otherwise
    user = f"{sc.get('runAsUser', 0)}:{sc.get('runAsGroup', 0)}"
    if user != image_user:
        raise Untranslatable(f"runAsUser/runAsGroup {user}: ctr run uses the image's user {image_user}")
    if sc.get("runAsNonRoot"):
        raise Untranslatable("runAsNonRoot")
    caps = sc.get("capabilities", {})
    added = {a.removeprefix("CAP_") for a in caps.get("add", [])}
    dropped = {d.removeprefix("CAP_") for d in caps.get("drop", [])}
    if "ALL" not in dropped:
        raise Untranslatable("capabilities without drop: [ALL] (the runtime's default set would differ)")
    dropped = set(ALL_CAPS)
    # ctr applies --cap-add before --cap-drop: never drop what the YAML adds back.
    flags += [f"--cap-add=CAP_{a}" for a in sorted(added)]
    flags += [f"--cap-drop=CAP_{d}" for d in sorted(dropped - added)]
    seccomp = sc.get("seccompProfile", {}).get("type", "RuntimeDefault")
    if seccomp == "RuntimeDefault":
        flags.append("--seccomp")
    elif seccomp != "Unconfined":
        raise Untranslatable(f"seccompProfile {seccomp}")

    limits = c.get("resources", {}).get("limits", {})
    if "cpu" in limits:
        flags.append(f"--cpus={_quantity(limits['cpu']):g}")
    if "memory" in limits:
        flags.append(f"--memory-limit={int(_quantity(limits['memory']))}")
    # ephemeral-storage is the kubelet's eviction threshold, not a runtime setting.

    env: dict[str, str] = {}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = str(e["value"])
        elif e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName":
            env[e["name"]] = node_name
        else:
            raise Untranslatable(f"env {e['name']}: {e.get('valueFrom')}")
    for src in c.get("envFrom", []):
        ref = src.get("configMapRef") or src.get("secretRef") or {}
        if not ref.get("optional"):
            raise Untranslatable(f"envFrom {ref.get('name')} is required: the test node has none")
    flags += [f"--env={k}={v}" for k, v in env.items()]

    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts: list[Mount] = []
    for vm in c.get("volumeMounts", []):
        vol = volumes[vm["name"]]
        if "hostPath" in vol:
            src = host_root / vol["hostPath"]["path"].lstrip("/")
            kind = vol["hostPath"].get("type", "")
            if kind == "DirectoryOrCreate":
                src.mkdir(parents=True, exist_ok=True)
            elif kind == "Directory" and not src.is_dir():
                raise Untranslatable(f"hostPath {vol['hostPath']['path']} (Directory) missing on the node")
            elif kind == "File" and not src.is_file():
                raise Untranslatable(f"hostPath {vol['hostPath']['path']} (File) missing on the node")
            elif kind not in ("DirectoryOrCreate", "Directory", "File"):
                raise Untranslatable(f"hostPath type {kind!r}")
        elif "emptyDir" in vol:
            src = scratch / vm["name"]
            src.mkdir(parents=True, exist_ok=True)
        else:
            raise Untranslatable(f"volume {vm['name']}: {sorted(vol)}")
        if vm.get("subPath") or vm.get("mountPropagation"):
            raise Untranslatable(f"volumeMount {vm['name']}: subPath/mountPropagation")
        ro = bool(vm.get("readOnly"))
        mounts.append(Mount(vm["name"], src, vm["mountPath"], ro))
        flags.append(f"--mount=type=bind,src={src},dst={vm['mountPath']},options=rbind:{'ro' if ro else 'rw'}")

    probes = {
        kind: list(c[kind]["exec"]["command"])
        for kind in ("startupProbe", "livenessProbe", "readinessProbe")
        if kind in c and "exec" in c[kind]
    }
    return ContainerRun(
        flags=flags,
        command=c.get("command"),
        args=list(c.get("args", [])),
        env=env,
        mounts=mounts,
        cap_effective=added,
        probes=probes,
    )
