"""Find and read OCI bundles of containerd and CRI-O tasks on a node.

Shared by the `oci-specs` and `resource-limits` collectors and by the forwarder's pod
identity lookup: all three need the same answer to "which sandbox is this, which pod does it
belong to, and what limits did the kubelet pass down".
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kata_debug.node.hostroot import HostRoot

CONTAINERD_TASK_ROOT = "/run/containerd/io.containerd.runtime.v2.task"
CRIO_ROOT = "/run/containers/storage/overlay-containers"

KATA_RUNTIME_MARKERS = ("kata",)

# CRI annotation names (containerd first, CRI-O second).
A_CONTAINER_TYPE = ("io.kubernetes.cri.container-type", "io.kubernetes.cri-o.ContainerType")
A_SANDBOX_ID = ("io.kubernetes.cri.sandbox-id", "io.kubernetes.cri-o.SandboxID")
A_POD_NAME = ("io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name")
A_POD_NAMESPACE = ("io.kubernetes.cri.sandbox-namespace", "io.kubernetes.pod.namespace")
A_POD_UID = ("io.kubernetes.cri.sandbox-uid", "io.kubernetes.pod.uid")
A_CONTAINER_NAME = ("io.kubernetes.cri.container-name", "io.kubernetes.container.name")
A_SANDBOX_CPU_QUOTA = "io.kubernetes.cri.sandbox-cpu-quota"
A_SANDBOX_CPU_PERIOD = "io.kubernetes.cri.sandbox-cpu-period"
A_SANDBOX_MEMORY = "io.kubernetes.cri.sandbox-memory"


def _first(annotations: dict[str, str], names: tuple[str, ...]) -> str | None:
    for n in names:
        if annotations.get(n):
            return annotations[n]
    return None


@dataclass
class Resources:
    """The OCI `linux.resources` fields that drive Kata's VM sizing."""

    cpu_quota: int | None = None
    cpu_period: int | None = None
    cpu_shares: int | None = None
    cpuset_cpus: str | None = None
    memory_limit: int | None = None
    hugepage_limits: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Resources:
        res = (spec.get("linux") or {}).get("resources") or {}
        cpu = res.get("cpu") or {}
        mem = res.get("memory") or {}
        huge = {
            str(h.get("pageSize")): int(h.get("limit", 0))
            for h in res.get("hugepageLimits") or []
            if isinstance(h, dict)
        }
        return cls(
            cpu_quota=_int(cpu.get("quota")),
            cpu_period=_int(cpu.get("period")),
            cpu_shares=_int(cpu.get("shares")),
            cpuset_cpus=cpu.get("cpus") or None,
            memory_limit=_int(mem.get("limit")),
            hugepage_limits=huge,
        )


def _int(v: Any) -> int | None:
    if v is None:
        return None
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


@dataclass
class OciEntry:
    """Index entry for one task bundle (sandbox or container)."""

    id: str
    engine: str  # containerd | cri-o
    namespace: str | None  # containerd namespace
    bundle: str  # node path of the bundle dir
    runtime: str | None
    kata: bool
    type: str  # sandbox | container | unknown
    sandbox_id: str | None
    pod_name: str | None
    pod_namespace: str | None
    pod_uid: str | None
    container_name: str | None
    resources: Resources
    sandbox_annotations: dict[str, str]
    kata_annotations: dict[str, str]
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class OciBundle:
    entry: OciEntry
    config_path: Path  # real path under the host root
    spec: dict[str, Any] | None


def runtime_of(host: HostRoot, bundle_dir: Path, spec: dict[str, Any] | None) -> str | None:
    """The runtime a bundle runs under, as containerd names it (`io.containerd.kata.v2`)."""
    for name in ("runtime", "shim-binary-path"):
        try:
            text = host.read_text(bundle_dir / name, 4096).strip()
        except OSError:
            continue
        if not text:
            continue
        base = os.path.basename(text)
        if base.startswith("containerd-shim-"):
            # containerd-shim-kata-v2 -> io.containerd.kata.v2
            parts = base[len("containerd-shim-") :].rsplit("-", 1)
            if len(parts) == 2:
                return f"io.containerd.{parts[0]}.{parts[1]}"
        return text
    if spec:
        ann = spec.get("annotations") or {}
        for key in ("io.kubernetes.cri-o.RuntimeHandler", "io.kubernetes.cri.runtime-handler"):
            if ann.get(key):
                return ann[key]
    return None


def is_kata_runtime(runtime: str | None, spec: dict[str, Any] | None = None) -> bool:
    """Decided by the runtime when it is known; Kata annotations only when it is not."""
    if runtime:
        return any(m in runtime.lower() for m in KATA_RUNTIME_MARKERS)
    ann = (spec or {}).get("annotations") or {}
    return any(k.startswith("io.katacontainers.") for k in ann)


def _entry(host: HostRoot, engine: str, ns: str | None, bundle_dir: Path, cid: str) -> OciBundle:
    config = bundle_dir / "config.json"
    spec: dict[str, Any] | None = None
    error: str | None = None
    try:
        with host.open(config) as fh:
            spec = json.load(fh)
        if not isinstance(spec, dict):
            raise ValueError("top level is not a JSON object")
    except FileNotFoundError:
        error = "config.json missing"
        spec = None
    except (ValueError, UnicodeDecodeError) as exc:
        error = f"malformed config.json: {exc}"
        spec = None
    except OSError as exc:
        error = f"cannot read config.json: {exc.strerror}"
        spec = None
    ann: dict[str, str] = {str(k): str(v) for k, v in ((spec or {}).get("annotations") or {}).items()}
    ctype = (_first(ann, A_CONTAINER_TYPE) or "unknown").lower()
    if ctype not in ("sandbox", "container"):
        ctype = "unknown"
    sandbox_id = _first(ann, A_SANDBOX_ID) or (cid if ctype == "sandbox" else None)
    runtime = runtime_of(host, bundle_dir, spec)
    entry = OciEntry(
        id=cid,
        engine=engine,
        namespace=ns,
        bundle=host.node_path(bundle_dir),
        runtime=runtime,
        kata=is_kata_runtime(runtime, spec),
        type=ctype,
        sandbox_id=sandbox_id,
        pod_name=_first(ann, A_POD_NAME),
        pod_namespace=_first(ann, A_POD_NAMESPACE),
        pod_uid=_first(ann, A_POD_UID),
        container_name=_first(ann, A_CONTAINER_NAME),
        resources=Resources.from_spec(spec or {}),
        sandbox_annotations={
            k: v
            for k, v in ann.items()
            if k.startswith("io.kubernetes.cri.sandbox-")
            and k.split("sandbox-", 1)[1] in ("cpu-quota", "cpu-period", "cpu-shares", "memory")
        },
        kata_annotations={k: v for k, v in ann.items() if k.startswith("io.katacontainers.")},
        error=error,
    )
    return OciBundle(entry=entry, config_path=config, spec=spec)


def iter_bundles(host: HostRoot) -> Iterator[OciBundle]:
    """Every containerd task bundle and CRI-O userdata dir on the node (blocking I/O)."""
    task_root = host.resolve(CONTAINERD_TASK_ROOT)
    for ns in host.listdir(CONTAINERD_TASK_ROOT):
        for cid in host.listdir(f"{CONTAINERD_TASK_ROOT}/{ns}"):
            bundle = task_root / ns / cid
            if bundle.is_dir() and not bundle.is_symlink():
                yield _entry(host, "containerd", ns, bundle, cid)
    crio_root = host.resolve(CRIO_ROOT)
    for cid in host.listdir(CRIO_ROOT):
        userdata = crio_root / cid / "userdata"
        if userdata.is_dir() and not userdata.is_symlink():
            yield _entry(host, "cri-o", None, userdata, cid)


def find_sandbox(host: HostRoot, sandbox_id: str) -> OciEntry | None:
    """The sandbox entry for a Kata sandbox id (the forwarder tags spans with its pod)."""
    for b in iter_bundles(host):
        if b.entry.id == sandbox_id or (b.entry.type == "sandbox" and b.entry.sandbox_id == sandbox_id):
            return b.entry
    return None


def read_bundle(host: HostRoot, engine: str, ns: str | None, bundle_dir: Path, cid: str) -> OciBundle:
    """One task bundle (`bundle_dir` under the root), read now: the node agent reads each new one once."""
    return _entry(host, engine, ns, bundle_dir, cid)
