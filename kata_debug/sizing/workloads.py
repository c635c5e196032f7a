"""Kubernetes objects -> what the kubelet hands the Kata shim (the manifest and live-pod adapter).

A workload manifest says requests and limits; Kata sees OCI resources and CRI annotations.
This module does the translation the API server and kubelet do in between, so manifests
and live pods reach `sizing.size_vm` with exactly what a node would give it:

* LimitRange admission (`plugin/pkg/admission/limitranger`): missing limits come from
  `default` (itself defaulted from `max`), missing requests from `defaultRequest` (defaulted
  from `default`, then `min`); the first LimitRange that sets a value wins.
* kubelet (`pkg/kubelet/kuberuntime`): CPU limit -> CFS quota over a 100000us period
  (at least 1000us), CPU request -> shares, memory limit -> bytes, `hugepages-<size>`
  limits -> hugepage limits; the pod's total (sum of app containers and sidecars, or the
  largest init container if bigger; pod-level `spec.resources` when set; overhead
  excluded) -> the `io.kubernetes.cri.sandbox-cpu-quota|-cpu-period|-cpu-shares|-memory`
  annotations containerd puts on the sandbox.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from kata_debug.node.oci import A_SANDBOX_CPU_PERIOD, A_SANDBOX_CPU_QUOTA, A_SANDBOX_MEMORY, Resources
from kata_debug.sizing import quantity as q
from kata_debug.sizing.model import A_SANDBOX_CPU_SHARES, ContainerInput, SandboxInput

CFS_PERIOD = 100_000  # kubelet quotaPeriod (us)
MIN_QUOTA = 1_000  # kubelet minQuotaPeriod
MIN_SHARES, MAX_SHARES = 2, 262_144

# kind -> (path to the pod spec, path to the pod metadata)
POD_PATHS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "Pod": (("spec",), ("metadata",)),
    "Deployment": (("spec", "template", "spec"), ("spec", "template", "metadata")),
    "StatefulSet": (("spec", "template", "spec"), ("spec", "template", "metadata")),
    "DaemonSet": (("spec", "template", "spec"), ("spec", "template", "metadata")),
    "ReplicaSet": (("spec", "template", "spec"), ("spec", "template", "metadata")),
    "ReplicationController": (("spec", "template", "spec"), ("spec", "template", "metadata")),
    "Job": (("spec", "template", "spec"), ("spec", "template", "metadata")),
    "CronJob": (
        ("spec", "jobTemplate", "spec", "template", "spec"),
        ("spec", "jobTemplate", "spec", "template", "metadata"),
    ),
    "PodTemplate": (("template", "spec"), ("template", "metadata")),
}
WORKLOAD_KINDS = frozenset(POD_PATHS)
SIZING_RESOURCES = ("cpu", "memory")

Path_ = tuple[str | int, ...]


def sizes_vm(resource: str) -> bool:
    """Resources that reach Kata's sizing: cpu, memory and hugepages-<size>."""
    return resource in SIZING_RESOURCES or resource.startswith("hugepages-")


@dataclass
class Value:
    """One requests/limits entry: its text, its value when it has one, and why not."""

    raw: Any
    value: Fraction | None
    problem: str | None = None  # set when value is None
    templated: bool = False
    origin: str | None = None  # "LimitRange <name> default" when admission filled it in

    @property
    def text(self) -> str:
        try:
            return q.quantity_text(self.raw)
        except q.QuantityError:
            return repr(self.raw)


def read_value(raw: Any, origin: str | None = None) -> Value:
    if q.is_templated(raw):
        return Value(raw, None, "template placeholder", True, origin)
    try:
        return Value(raw, q.parse(raw), None, False, origin)
    except q.QuantityError as exc:
        return Value(raw, None, str(exc), False, origin)


def read_list(raw: Any, field_path: str, problems: list[str]) -> dict[str, Value]:
    """A ResourceList (`{cpu: 500m, memory: 1Gi}`) restricted to what sizes the VM."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.append(f"{field_path} is not a mapping")
        return {}
    out: dict[str, Value] = {}
    for k, v in raw.items():
        key = str(k)
        if sizes_vm(key):
            out[key] = read_value(v)
    return out


@dataclass
class Container:
    name: str
    role: str  # app | init | sidecar
    field: str  # spec.template.spec.containers[0]
    path: Path_  # document path of the container mapping
    requests: dict[str, Value]
    limits: dict[str, Value]


@dataclass
class Workload:
    """A pod template from any workload kind, normalised."""

    kind: str
    name: str | None
    namespace: str | None
    runtime_class: str | None
    annotations: dict[str, str]
    containers: list[Container]
    pod_limits: dict[str, Value]  # spec.resources.limits (pod-level resources)
    pod_requests: dict[str, Value]  # spec.resources.requests (pod-level resources)
    overhead: dict[str, Value]  # spec.overhead (set by RuntimeClass admission on live pods)
    spec_field: str
    problems: list[str] = field(default_factory=list)


def dig(obj: Any, path: tuple[str, ...]) -> Any:
    for p in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(p)
    return obj


def _field(path: Path_) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


def read_workload(obj: dict[str, Any], prefix: Path_ = ()) -> Workload | None:
    """A workload object -> Workload; None when `kind` is not one that makes pods."""
    kind = obj.get("kind")
    if kind not in WORKLOAD_KINDS:
        return None
    spec_path, meta_path = POD_PATHS[kind]
    meta = got if isinstance(got := obj.get("metadata"), dict) else {}
    problems: list[str] = []
    spec = dig(obj, spec_path)
    spec_field = _field((*prefix, *spec_path))
    if not isinstance(spec, dict):
        problems.append(f"{spec_field} is missing or not a mapping")
        spec = {}
    pod_meta = dig(obj, meta_path)
    ann_raw = pod_meta.get("annotations") if isinstance(pod_meta, dict) else None
    annotations = {str(k): str(v) for k, v in ann_raw.items()} if isinstance(ann_raw, dict) else {}
    containers: list[Container] = []
    for list_key in ("initContainers", "containers"):
        items = spec.get(list_key)
        if items is None:
            continue
        if not isinstance(items, list):
            problems.append(f"{spec_field}.{list_key} is not a list")
            continue
        for i, c in enumerate(items):
            cpath: Path_ = (*prefix, *spec_path, list_key, i)
            cfield = _field(cpath)
            if not isinstance(c, dict):
                problems.append(f"{cfield} is not a mapping")
                continue
            role = "app"
            if list_key == "initContainers":
                role = "sidecar" if c.get("restartPolicy") == "Always" else "init"
            res = c.get("resources")
            if res is not None and not isinstance(res, dict):
                problems.append(f"{cfield}.resources is not a mapping")
                res = None
            res = res or {}
            containers.append(
                Container(
                    name=str(c.get("name") or f"{list_key}[{i}]"),
                    role=role,
                    field=cfield,
                    path=cpath,
                    requests=read_list(res.get("requests"), f"{cfield}.resources.requests", problems),
                    limits=read_list(res.get("limits"), f"{cfield}.resources.limits", problems),
                )
            )
    if not containers and not problems:
        problems.append(f"{spec_field}.containers is empty")
    pod_res = got if isinstance(got := spec.get("resources"), dict) else {}
    rc = spec.get("runtimeClassName")
    ns = meta.get("namespace")
    return Workload(
        kind=str(kind),
        name=str(meta["name"]) if meta.get("name") is not None else None,
        namespace=str(ns) if ns else None,
        runtime_class=str(rc) if rc is not None else None,
        annotations=annotations,
        containers=containers,
        pod_limits=read_list(pod_res.get("limits"), f"{spec_field}.resources.limits", problems),
        pod_requests=read_list(pod_res.get("requests"), f"{spec_field}.resources.requests", problems),
        overhead=read_list(spec.get("overhead"), f"{spec_field}.overhead", problems),
        spec_field=spec_field,
        problems=problems,
    )


# ---- LimitRange ---------------------------------------------------------------------------


@dataclass
class LimitRangeItem:
    index: int
    type: str
    default: dict[str, Value]
    default_request: dict[str, Value]
    max: dict[str, Value]
    min: dict[str, Value]
    field: str
    path: Path_
    max_ratio: dict[str, Value]  # maxLimitRequestRatio


@dataclass
class LimitRange:
    name: str | None
    namespace: str | None
    items: list[LimitRangeItem]
    problems: list[str]

    def container_defaults(self) -> Iterator[tuple[LimitRangeItem, dict[str, Value], dict[str, Value]]]:
        """(item, effective default, effective defaultRequest), API-server defaulting applied.

        `SetDefaults_LimitRangeItem`: default <- max, then defaultRequest <- default, then
        defaultRequest <- min, each only for keys not already set.
        """
        for item in self.items:
            if item.type != "Container":
                continue
            default = dict(item.default)
            for k, v in item.max.items():
                default.setdefault(k, v)
            request = dict(item.default_request)
            for k, v in default.items():
                request.setdefault(k, v)
            for k, v in item.min.items():
                request.setdefault(k, v)
            yield item, default, request


def read_limit_range(obj: dict[str, Any], prefix: Path_ = ()) -> LimitRange:
    meta = got if isinstance(got := obj.get("metadata"), dict) else {}
    problems: list[str] = []
    items: list[LimitRangeItem] = []
    limits = dig(obj, ("spec", "limits"))
    if not isinstance(limits, list):
        problems.append("spec.limits is missing or not a list")
        limits = []
    for i, it in enumerate(limits):
        path: Path_ = (*prefix, "spec", "limits", i)
        f = _field(path)
        if not isinstance(it, dict):
            problems.append(f"{f} is not a mapping")
            continue
        items.append(
            LimitRangeItem(
                index=i,
                type=str(it.get("type") or ""),
                default=read_list(it.get("default"), f"{f}.default", problems),
                default_request=read_list(it.get("defaultRequest"), f"{f}.defaultRequest", problems),
                max=read_list(it.get("max"), f"{f}.max", problems),
                min=read_list(it.get("min"), f"{f}.min", problems),
                field=f,
                path=path,
                max_ratio=read_list(it.get("maxLimitRequestRatio"), f"{f}.maxLimitRequestRatio", problems),
            )
        )
    ns = meta.get("namespace")
    return LimitRange(
        name=str(meta["name"]) if meta.get("name") is not None else None,
        namespace=str(ns) if ns else None,
        items=items,
        problems=problems,
    )


API_DEFAULT = "defaulted from the limit"


def api_defaults(w: Workload) -> None:
    """API-server defaulting of a new pod: a limit without a request makes the request equal to it.

    Runs before admission, so LimitRange defaults never see those keys as missing. Requests
    made this way carry an `origin`, which keeps the rules from treating them as written.
    """
    for c in w.containers:
        for k, v in c.limits.items():
            if k not in c.requests:
                c.requests[k] = Value(v.raw, v.value, v.problem, v.templated, API_DEFAULT)


def defaulted_requests(w: Workload) -> None:
    """Live pods: a request equal to its limit may be the API server's default; don't call it written.

    The stored pod no longer says which requests the user wrote, and one that equals the
    limit has no effect of its own anyway.
    """
    for c in w.containers:
        for k, v in c.requests.items():
            lim = c.limits.get(k)
            if lim is not None and v.origin is None and lim.value is not None and v.value == lim.value:
                v.origin = API_DEFAULT


def apply_limit_ranges(w: Workload, ranges: list[LimitRange]) -> None:
    """What LimitRanger admission does to the pods this workload creates (in place)."""
    for lr in ranges:
        if lr.namespace != w.namespace:
            continue
        for _item, default, request in lr.container_defaults():
            origin = f"LimitRange {lr.name or '?'}"
            for c in w.containers:
                for k, v in default.items():
                    if k not in c.limits:
                        c.limits[k] = Value(v.raw, v.value, v.problem, v.templated, f"{origin} default")
                for k, v in request.items():
                    if k not in c.requests:
                        c.requests[k] = Value(v.raw, v.value, v.problem, v.templated, f"{origin} defaultRequest")


@dataclass
class Rejection:
    """Why the API server refuses a pod made from a workload (after defaulting and admission)."""

    rule: str  # request-exceeds-limit | limitrange-violation
    container: str | None
    resource: str
    field: str
    message: str


def _known(v: Value | None) -> Fraction | None:
    return v.value if v is not None else None


def request_limit_rejections(w: Workload) -> list[Rejection]:
    """Requests above limits: `ValidateResourceRequirements` (pkg/apis/core/validation/
    validation.go: "must be less than or equal to <resource> limit") for each container, and
    for pod-level `spec.resources` (validatePodResourceRequirements). Runs after LimitRange
    admission, so a `default` limit below a written request is refused here too."""
    out: list[Rejection] = []
    for c in w.containers:
        for key, req in c.requests.items():
            lim = c.limits.get(key)
            rv, lv = _known(req), _known(lim)
            if rv is None or lv is None or lim is None or rv <= lv:
                continue
            src = f" (the default limit of {lim.origin})" if lim.origin else ""
            out.append(
                Rejection(
                    "request-exceeds-limit",
                    c.name,
                    key,
                    f"{c.field}.resources.requests.{key}",
                    f"requests.{key} {req.text} is more than limits.{key} {lim.text}{src}: the API server refuses "
                    f"the pod (must be less than or equal to {key} limit)",
                )
            )
    for key, req in w.pod_requests.items():
        lim = w.pod_limits.get(key)
        rv, lv = _known(req), _known(lim)
        if rv is not None and lv is not None and lim is not None and rv > lv:
            out.append(
                Rejection(
                    "request-exceeds-limit",
                    None,
                    key,
                    f"{w.spec_field}.resources.requests.{key}",
                    f"pod-level requests.{key} {req.text} is more than limits.{key} {lim.text}: the API server "
                    "refuses the pod",
                )
            )
    return out


def limit_range_rejections(w: Workload, ranges: list[LimitRange]) -> list[Rejection]:
    """LimitRanger validation of each container (plugin/pkg/admission/limitranger/admission.go
    PodValidateLimitFunc: minConstraint, maxConstraint, limitRequestRatioConstraint), for
    `type: Container` items of the workload's namespace, after defaults were applied."""
    out: list[Rejection] = []
    for lr in ranges:
        if lr.namespace != w.namespace:
            continue
        for item in lr.items:
            if item.type != "Container":
                continue
            origin = f"LimitRange {lr.name or '?'}"
            for c in w.containers:
                for why, key in _item_violations(item, c):
                    out.append(
                        Rejection(
                            "limitrange-violation",
                            c.name,
                            key,
                            f"{c.field}.resources",
                            f"{origin} ({item.field}): {why}; the API server refuses the pod",
                        )
                    )
    return out


def _item_violations(item: LimitRangeItem, c: Container) -> Iterator[tuple[str, str]]:
    for key, bound in item.min.items():
        b, req, lim = bound.value, c.requests.get(key), c.limits.get(key)
        if b is None:
            continue
        if req is None or req.value is None:
            yield f"minimum {key} per container is {bound.text}, but no request is specified", key
        elif req.value < b:
            yield f"minimum {key} per container is {bound.text}, but request is {req.text}", key
        if lim is not None and lim.value is not None and lim.value < b:
            yield f"minimum {key} per container is {bound.text}, but limit is {lim.text}", key
    for key, bound in item.max.items():
        b, req, lim = bound.value, c.requests.get(key), c.limits.get(key)
        if b is None:
            continue
        if lim is None or lim.value is None:
            yield f"maximum {key} per container is {bound.text}, but no limit is specified", key
        elif lim.value > b:
            yield f"maximum {key} per container is {bound.text}, but limit is {lim.text}", key
        if req is not None and req.value is not None and req.value > b:
            yield f"maximum {key} per container is {bound.text}, but request is {req.text}", key
    for key, bound in item.max_ratio.items():
        b, req, lim = bound.value, c.requests.get(key), c.limits.get(key)
        if b is None:
            continue
        if req is None or not req.value:
            yield f"{key} max limit to request ratio is {bound.text}, but no request is specified or it is 0", key
        elif lim is None or not lim.value:
            yield f"{key} max limit to request ratio is {bound.text}, but no limit is specified or it is 0", key
        elif lim.value / req.value > b:
            ratio = float(lim.value / req.value)
            yield f"{key} max limit to request ratio is {bound.text}, but limit/request is {ratio:g}", key


# ---- kubelet ------------------------------------------------------------------------------


def milli_cpu_to_quota(milli: int, period: int = CFS_PERIOD) -> int:
    """kubelet milliCPUToQuota: 0 stays 0 (no limit), else at least 1000us."""
    if milli == 0:
        return 0
    return max(milli * period // 1000, MIN_QUOTA)


def milli_cpu_to_shares(milli: int) -> int:
    """kubelet MilliCPUToShares: 2..262144."""
    if milli == 0:
        return MIN_SHARES
    return min(max(milli * 1024 // 1000, MIN_SHARES), MAX_SHARES)


def hugepage_size_label(resource: str) -> str | None:
    """`hugepages-2Mi` -> `2MB` (the OCI `hugepageLimits[].pageSize` spelling)."""
    size = resource[len("hugepages-") :]
    if q.is_templated(size):
        return None
    try:
        n = q.int_value(q.parse_quantity(size))
    except q.QuantityError:
        return None
    for unit, label in ((1 << 30, "GB"), (1 << 20, "MB"), (1 << 10, "KB")):
        if n >= unit and n % unit == 0:
            return f"{n // unit}{label}"
    return f"{n}B"


def _cpu_request(c: Container) -> Fraction | None:
    """The effective CPU request (a missing one counts as the limit, as the API server defaults it)."""
    v = c.requests.get("cpu") or c.limits.get("cpu")
    return v.value if v is not None else None


def pod_level_limit(w: Workload, c: Container, key: str) -> Value | None:
    """The limit the kubelet uses for `key` of container `c`, pod-level resources included.

    kubelet `getCPULimit`/`getMemoryLimit` (pkg/kubelet/kuberuntime/
    kuberuntime_container_linux.go, Kubernetes 1.34, feature gate PodLevelResources: beta and
    on by default since 1.34, alpha in 1.32-1.33): when the pod sets `spec.resources`, a
    container whose own cpu/memory limit is unset or zero gets the pod-level limit in its
    CRI (and so OCI) resources. Every such container carries the whole pod limit, and
    Kata's dynamic sizing adds them up.
    """
    own = c.limits.get(key)
    if own is not None and own.value is not None and own.value != 0:
        return own
    if w.pod_limits or w.pod_requests:  # resourcehelper.IsPodLevelResourcesSet
        pod = w.pod_limits.get(key)
        if pod is not None and pod.value is not None and pod.value != 0:
            return pod
    return own


def container_resources(c: Container, w: Workload | None = None) -> Resources:
    """The OCI `linux.resources` containerd writes for this container."""
    lim_cpu = pod_level_limit(w, c, "cpu") if w is not None else c.limits.get("cpu")
    quota: int | None = None
    if lim_cpu is not None and lim_cpu.value is not None:
        quota = milli_cpu_to_quota(q.milli_value(lim_cpu.value)) or None  # containerd skips 0
    req = _cpu_request(c)
    mem = pod_level_limit(w, c, "memory") if w is not None else c.limits.get("memory")
    mem_bytes = q.int_value(mem.value) if mem is not None and mem.value is not None and mem.value > 0 else None
    huge: dict[str, int] = {}
    for k, v in c.limits.items():
        if k.startswith("hugepages-") and v.value is not None:
            label = hugepage_size_label(k)
            if label:
                huge[label] = q.int_value(v.value)
    return Resources(
        cpu_quota=quota,
        cpu_period=CFS_PERIOD,
        cpu_shares=milli_cpu_to_shares(q.milli_value(req) if req is not None else 0),
        memory_limit=mem_bytes,
        hugepage_limits=huge,
    )


def pod_level_notes(w: Workload) -> list[str]:
    """Steps saying which containers got the pod-level limit (for `--explain`)."""
    notes: list[str] = []
    if not (w.pod_limits or w.pod_requests):
        return notes
    for c in w.containers:
        for key in SIZING_RESOURCES:
            got = pod_level_limit(w, c, key)
            if got is not None and got is not c.limits.get(key):
                notes.append(
                    f"{c.role} container {c.name} has no {key} limit: the kubelet gives it the pod-level "
                    f"limit {got.text} (PodLevelResources, Kubernetes >= 1.34), which Kata counts for it"
                )
    return notes


def _sum(containers: list[Container], key: str, which: str) -> Fraction:
    total = q.ZERO
    for c in containers:
        src = c.limits if which == "limits" else c.requests
        v = src.get(key)
        if v is None and which == "requests":
            v = c.limits.get(key)
        if v is not None and v.value is not None:
            total += v.value
    return total


def pod_total(w: Workload, key: str, which: str) -> Fraction:
    """resourcehelper.PodLimits/PodRequests (overhead excluded): the sandbox's share of `key`."""
    if which == "limits":
        pl = w.pod_limits.get(key)
        if pl is not None and pl.value is not None:
            return pl.value
    sidecars: list[Container] = []
    peak_init = q.ZERO
    for c in w.containers:
        if c.role == "sidecar":
            sidecars.append(c)
        elif c.role == "init":
            peak_init = max(peak_init, _sum([*sidecars, c], key, which))
    steady = _sum(sidecars + [c for c in w.containers if c.role == "app"], key, which)
    return max(steady, peak_init)


def sandbox_annotations(w: Workload) -> dict[str, str]:
    """The sizing annotations containerd (>= 1.6) sets on the sandbox from the kubelet's PodSandboxConfig."""
    cpu_lim = pod_total(w, "cpu", "limits")
    cpu_req = pod_total(w, "cpu", "requests")
    mem_lim = pod_total(w, "memory", "limits")
    return {
        A_SANDBOX_CPU_PERIOD: str(CFS_PERIOD),
        A_SANDBOX_CPU_QUOTA: str(milli_cpu_to_quota(q.milli_value(cpu_lim))),
        A_SANDBOX_CPU_SHARES: str(milli_cpu_to_shares(q.milli_value(cpu_req))),
        A_SANDBOX_MEMORY: str(q.int_value(mem_lim)),
    }


def sandbox_input(w: Workload, host_cpus: int | None = None) -> SandboxInput:
    """The shim's view of a pod made from this workload."""
    return SandboxInput(
        containers=[ContainerInput(c.name, container_resources(c, w), c.role) for c in w.containers],
        sandbox_annotations=sandbox_annotations(w),
        kata_annotations={k: v for k, v in w.annotations.items() if k.startswith("io.katacontainers.")},
        host_cpus=host_cpus,
        notes=pod_level_notes(w),
    )


# ---- RuntimeClass -------------------------------------------------------------------------


@dataclass
class RuntimeClass:
    name: str | None
    handler: str | None
    overhead: dict[str, Value]
    problems: list[str]


def read_runtime_class(obj: dict[str, Any]) -> RuntimeClass:
    meta = got if isinstance(got := obj.get("metadata"), dict) else {}
    problems: list[str] = []
    fixed = dig(obj, ("overhead", "podFixed"))
    overhead: dict[str, Value] = {}
    if isinstance(fixed, dict):
        overhead = {str(k): read_value(v) for k, v in fixed.items() if str(k) in SIZING_RESOURCES}
    elif fixed is not None:
        problems.append("overhead.podFixed is not a mapping")
    handler = obj.get("handler")
    return RuntimeClass(
        name=str(meta["name"]) if meta.get("name") is not None else None,
        handler=str(handler) if handler is not None else None,
        overhead=overhead,
        problems=problems,
    )
