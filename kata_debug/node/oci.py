"""Find and read OCI bundles of containerd and CRI-O tasks on a node.

Shared by the `oci-specs` and `resource-limits` collectors and by the forwarder's pod
identity lookup: all three need the same answer to "which sandbox is this, which pod does it
belong to, and what limits did the kubelet pass down".
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from kata_debug.node.hostroot import HostDir, HostItemError, HostRoot, describe

CONTAINERD_TASK_ROOT = "/run/containerd/io.containerd.runtime.v2.task"
CRIO_ROOT = "/run/containers/storage/overlay-containers"

KATA_RUNTIME_MARKERS = ("kata",)

#: Spec and state files larger than this are kept raw instead of parsed (`collect --max-parse-size`).
SPEC_PARSE_CAP = 16 << 20

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
    config_path: Path  # where config.json is under the host root (for display and `node_path`)
    spec: dict[str, Any] | None
    #: Bytes of config.json when it was too large to parse (kept raw instead); None otherwise.
    oversize: int | None = None


def runtime_of(bundle: HostDir, spec: dict[str, Any] | None) -> str | None:
    """The runtime a bundle runs under, as containerd names it (`io.containerd.kata.v2`)."""
    for name in ("runtime", "shim-binary-path"):
        try:
            with bundle.open(name) as fh:
                text = fh.read(4096).decode("utf-8", "replace").strip()
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
                return str(ann[key])
    return None


def is_kata_runtime(runtime: str | None, spec: dict[str, Any] | None = None) -> bool:
    """Decided by the runtime when it is known; Kata annotations only when it is not."""
    if runtime:
        return any(m in runtime.lower() for m in KATA_RUNTIME_MARKERS)
    ann = (spec or {}).get("annotations") or {}
    return any(k.startswith("io.katacontainers.") for k in ann)


def read_json_capped(fh: BinaryIO, cap: int) -> tuple[Any, int | None]:
    """Parse an open JSON file unless it is larger than `cap` bytes: (value, None) or (None, its size).

    Parsing holds the whole document several times over in Python objects (a 200 MiB
    config.json took 1.28 GB), so a file over the cap is not parsed at all; callers keep it
    raw, cut, instead. The size is the open file's own, so it is the file that was read.
    """
    size = os.fstat(fh.fileno()).st_size
    if size > cap:
        return None, size
    data = fh.read(cap + 1)
    if len(data) > cap:  # grew since fstat (a /proc-like file reports 0)
        return None, len(data)
    return json.loads(data), None


def _entry(host: HostRoot, engine: str, ns: str | None, bundle: HostDir, cid: str, cap: int) -> OciBundle:
    spec: dict[str, Any] | None = None
    error: str | None = None
    oversize: int | None = None
    try:
        with bundle.open("config.json") as fh:
            spec, oversize = read_json_capped(fh, cap)
        if oversize is not None:
            error = f"config.json is {oversize} bytes, over the {cap} byte parse cap: kept raw, cut"
        elif not isinstance(spec, dict):
            raise ValueError("top level is not a JSON object")
    except FileNotFoundError:
        error = "config.json missing"
        spec = None
    except (ValueError, UnicodeDecodeError) as exc:
        error = f"malformed config.json: {exc}"
        spec = None
    except OSError as exc:
        error = f"cannot read config.json: {describe(exc)}"
        spec = None
    ann: dict[str, str] = {str(k): str(v) for k, v in ((spec or {}).get("annotations") or {}).items()}
    ctype = (_first(ann, A_CONTAINER_TYPE) or "unknown").lower()
    if ctype not in ("sandbox", "container"):
        ctype = "unknown"
    sandbox_id = _first(ann, A_SANDBOX_ID) or (cid if ctype == "sandbox" else None)
    runtime = runtime_of(bundle, spec)
    entry = OciEntry(
        id=cid,
        engine=engine,
        namespace=ns,
        bundle=bundle.path,
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
    config_path = host.root.joinpath(bundle.path.lstrip("/"), "config.json")
    return OciBundle(entry=entry, config_path=config_path, spec=spec, oversize=oversize)


def _subdirs(d: HostDir, failed: list[HostItemError]) -> Iterator[tuple[str, HostDir]]:
    """Each real subdirectory of `d`, open; one that cannot be opened is a failed item, not the end."""
    for name in d.names():
        try:
            if not stat.S_ISDIR(d.lstat(name).st_mode):
                continue  # a link or a file where a bundle should be: not a task bundle
            with d.open_dir(name) as sub:
                yield name, sub
        except OSError as exc:
            failed.append(HostItemError(d.child(name), describe(exc)))


def _root(host: HostRoot, path: str, failed: list[HostItemError]) -> Iterator[HostDir]:
    try:
        with host.open_dir(path) as d:
            yield d
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as exc:
        failed.append(HostItemError(path, describe(exc)))


def iter_bundles(
    host: HostRoot, failed: list[HostItemError] | None = None, parse_cap: int = SPEC_PARSE_CAP
) -> Iterator[OciBundle]:
    """Every containerd task bundle and CRI-O userdata dir on the node (blocking I/O).

    A directory that cannot be read (a link loop, no permission) is appended to `failed`
    and the walk goes on: one bad namespace does not hide the others, nor CRI-O's bundles.
    """
    failed = [] if failed is None else failed
    for root in _root(host, CONTAINERD_TASK_ROOT, failed):
        for ns, ns_dir in _subdirs(root, failed):
            for cid, bundle in _subdirs(ns_dir, failed):
                yield _entry(host, "containerd", ns, bundle, cid, parse_cap)
    for root in _root(host, CRIO_ROOT, failed):
        for cid, ctr in _subdirs(root, failed):
            try:
                if not stat.S_ISDIR(ctr.lstat("userdata").st_mode):
                    continue
                with ctr.open_dir("userdata") as userdata:
                    yield _entry(host, "cri-o", None, userdata, cid, parse_cap)
            except FileNotFoundError:
                continue
            except OSError as exc:
                failed.append(HostItemError(ctr.child("userdata"), describe(exc)))


def find_sandbox(host: HostRoot, sandbox_id: str) -> OciEntry | None:
    """The sandbox entry for a Kata sandbox id (the forwarder tags spans with its pod)."""
    for b in iter_bundles(host):
        if b.entry.id == sandbox_id or (b.entry.type == "sandbox" and b.entry.sandbox_id == sandbox_id):
            return b.entry
    return None


def read_bundle(host: HostRoot, engine: str, ns: str | None, node_dir: str, cid: str) -> OciBundle:
    """One task bundle (a node path), read now: the node agent reads each new one once. OSError if it is gone."""
    with host.open_dir(node_dir) as d:
        return _entry(host, engine, ns, d, cid, SPEC_PARSE_CAP)
