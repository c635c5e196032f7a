"""`kata-debug limits`: what VM each Kata workload gets, and which requests do nothing.

Input is a stream of Kubernetes objects (from files or a live cluster, see
`inputs`/`live`); RuntimeClasses and LimitRanges among them are used the way
the API server uses them. Each workload goes through the kubelet translation
(`workloads`) and Kata's own arithmetic (`model`); the rules below turn the gap between
what the manifest asks for and what the VM gets into findings.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from kata_debug.node.oci import A_SANDBOX_CPU_QUOTA, A_SANDBOX_MEMORY
from kata_debug.sizing.config import for_handler
from kata_debug.sizing.model import MIB, RS, STATIC, SizingConfig, VmSize, size_vm
from kata_debug.sizing.workloads import (
    WORKLOAD_KINDS,
    Container,
    LimitRange,
    Path_,
    RuntimeClass,
    Value,
    Workload,
    api_defaults,
    apply_limit_ranges,
    defaulted_requests,
    limit_range_rejections,
    pod_total,
    read_limit_range,
    read_runtime_class,
    read_workload,
    request_limit_rejections,
    sandbox_input,
)

ERROR = "error"
WARNING = "warning"
INFO = "info"
RULES: dict[str, str] = {
    "request-exceeds-limit": ERROR,
    "limitrange-violation": ERROR,
    "duplicate-key": ERROR,
    "unevaluable": ERROR,
    "request-without-limit": WARNING,
    "request-ignored": INFO,
    "limitrange-default-request": WARNING,
    "annotation-not-enabled": WARNING,
    "vm-refused": WARNING,
    "memory-limit-missing": INFO,
    "overhead-not-vm-size": INFO,
    "init-container-peak": INFO,
}


@dataclass
class Document:
    """One parsed YAML/JSON document and where it came from."""

    source: str  # "path", "path#2", or an API path for live objects
    path: str | None  # the file, when --fix may rewrite it
    index: int  # document index in the file
    obj: Any
    duplicates: list[str] = field(default_factory=list)  # "key 'cpu' (line 9)": keys given twice


@dataclass(frozen=True)
class FixTarget:
    """A mechanical fix: move `resource` from `source_key` to `target_key` of the mapping at `path`."""

    path: Path_
    source_key: str  # requests | defaultRequest
    target_key: str  # limits | default
    resource: str


@dataclass
class Finding:
    rule: str
    severity: str
    container: str | None
    resource: str | None
    message: str
    field: str | None = None
    fix: FixTarget | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "severity": self.severity,
            "container": self.container,
            "resource": self.resource,
            "message": self.message,
            "field": self.field,
            "fixable": self.fix is not None,
        }


def finding(
    rule: str,
    container: str | None,
    resource: str | None,
    message: str,
    field_: str | None = None,
    fix: FixTarget | None = None,
) -> Finding:
    return Finding(rule, RULES[rule], container, resource, message, field_, fix)


@dataclass
class Entry:
    """One analysed object: a workload, a RuntimeClass or a LimitRange."""

    doc: Document
    kind: str
    namespace: str | None
    name: str | None
    runtime_class: str | None = None
    handler: str | None = None
    kata: bool | None = None
    vm: VmSize | None = None
    config: SizingConfig | None = None
    workload: Workload | None = None
    findings: list[Finding] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)

    @property
    def warnings(self) -> int:
        return sum(1 for f in self.findings if f.severity == WARNING)

    @property
    def errors(self) -> int:
        return sum(1 for f in self.findings if f.severity == ERROR)

    def to_json(self) -> dict[str, Any]:
        vm = None
        if self.vm is not None:
            vm = self.vm.to_json()
            vm["complete"] = not self.unresolved
            vm["config"] = self.config.source if self.config else None
        return {
            "source": self.doc.source,
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
            "runtime_class": self.runtime_class,
            "handler": self.handler,
            "kata": self.kata,
            "vm": vm,
            "containers": self._containers_json(),
            "findings": [f.to_json() for f in self.findings],
            "unresolved": self.unresolved,
        }

    def _containers_json(self) -> list[dict[str, Any]]:
        if self.workload is None:
            return []
        sizes = {c.name: c for c in self.vm.containers} if self.vm else {}
        out = []
        for c in self.workload.containers:
            row: dict[str, Any] = {
                "name": c.name,
                "role": c.role,
                "requests": {k: v.text for k, v in c.requests.items() if v.origin is None},
                "limits": {k: v.text for k, v in c.limits.items()},
            }
            defaults = {f"limits.{k}": v.origin for k, v in c.limits.items() if v.origin}
            defaults.update(
                {
                    f"requests.{k}": v.origin
                    for k, v in c.requests.items()
                    if v.origin and v.origin.startswith("LimitRange")
                }
            )
            if defaults:
                row["defaults"] = defaults
            s = sizes.get(c.name)
            if s is not None:
                row["vm_vcpus"] = s.vcpus
                mem = (s.memory_bytes or 0) + s.hugepages_bytes
                row["vm_memory_mib"] = round(mem / MIB, 1) if mem else None
            out.append(row)
        return out


@dataclass
class InputError:
    source: str
    message: str


@dataclass
class Report:
    entries: list[Entry]
    documents: int = 0
    ignored: int = 0
    errors: list[InputError] = field(default_factory=list)

    @property
    def warnings(self) -> int:
        return sum(e.warnings for e in self.entries)

    @property
    def rejected(self) -> int:
        """Findings of severity error: objects the API server would refuse."""
        return sum(e.errors for e in self.entries)

    def exit_code(self) -> int:
        """0 clean, 1 errors or warnings (a CI lint), 2 input errors."""
        if self.errors:
            return 2
        return 1 if self.warnings or self.rejected else 0

    def summary(self) -> dict[str, Any]:
        by_rule: Counter[str] = Counter()
        by_sev: Counter[str] = Counter()
        for e in self.entries:
            for f in e.findings:
                by_rule[f.rule] += 1
                by_sev[f.severity] += 1
        workloads = [e for e in self.entries if e.kind in WORKLOAD_KINDS]
        return {
            "documents": self.documents,
            "objects": len(self.entries),
            "ignored_objects": self.ignored,
            "workloads": len(workloads),
            "kata_workloads": sum(1 for e in workloads if e.kata),
            "errors": by_sev.get(ERROR, 0),
            "warnings": by_sev.get(WARNING, 0),
            "info": by_sev.get(INFO, 0),
            "by_rule": dict(sorted(by_rule.items())),
            "incomplete": sum(1 for e in self.entries if e.unresolved),
            "input_errors": [{"source": x.source, "message": x.message} for x in self.errors],
            "exit_code": self.exit_code(),
        }

    def to_json(self) -> dict[str, Any]:
        return {"workloads": [e.to_json() for e in self.entries], "summary": self.summary()}


@dataclass
class Options:
    runtime: str | None = None  # force go|rs (else from the handler or the config file)
    config: SizingConfig | None = None  # --config: one file for every workload
    host_cpus: int | None = None
    runtime_classes: tuple[str, ...] = ()
    # Manifests: apply API defaulting and LimitRange admission. Live pods: already applied.
    admission: bool = True
    # Live mode: namespaces with Kata pods (LimitRanges elsewhere are not about Kata).
    kata_namespaces: frozenset[str] | None = None


def is_kata_name(name: str | None, extra: tuple[str, ...]) -> bool:
    return bool(name) and (name.startswith("kata") or name in extra)  # type: ignore[union-attr]


def flatten(docs: Iterable[Document]) -> Iterable[tuple[Document, dict[str, Any], Path_]]:
    """Objects of the input, `kind: List` (and `*List`) items unpacked, with their document paths."""
    for d in docs:
        obj = d.obj
        if not isinstance(obj, dict):
            continue
        items = obj.get("items")
        kind = obj.get("kind")
        if isinstance(kind, str) and kind.endswith("List") and isinstance(items, list):
            for i, item in enumerate(items):
                if isinstance(item, dict):
                    yield d, item, ("items", i)
        else:
            yield d, obj, ()


def analyse(docs: Iterable[Document], opts: Options | None = None) -> Report:
    """Analyse a whole input; RuntimeClasses and LimitRanges anywhere in it apply to all of it."""
    opts = opts or Options()
    documents = list(docs)
    report = Report(entries=[], documents=len(documents))
    objs = list(flatten(documents))
    rcs: dict[str, RuntimeClass] = {}
    lrs: list[LimitRange] = []
    for _d, obj, _p in objs:
        kind = obj.get("kind")
        if kind == "RuntimeClass":
            rc = read_runtime_class(obj)
            if rc.name:
                rcs.setdefault(rc.name, rc)
        elif kind == "LimitRange":
            lrs.append(read_limit_range(obj))
    for d, obj, prefix in objs:
        kind = obj.get("kind")
        if kind in WORKLOAD_KINDS:
            report.entries.append(_workload_entry(d, obj, prefix, rcs, lrs, opts))
        elif kind == "RuntimeClass":
            report.entries.append(_runtime_class_entry(d, obj, opts))
        elif kind == "LimitRange":
            report.entries.append(_limit_range_entry(d, obj, prefix, opts))
        else:
            report.ignored += 1
    _duplicate_findings(report.entries)
    return report


def _duplicate_findings(entries: list[Entry]) -> None:
    """Keys given twice in one mapping: kubectl's strict field validation (the default since
    Kubernetes 1.27, `--validate=strict`) refuses the object; lenient decoding keeps the last."""
    seen: set[int] = set()
    for e in entries:
        if not e.doc.duplicates or not e.kata or id(e.doc) in seen:
            continue
        seen.add(id(e.doc))
        for dup in e.doc.duplicates:
            e.findings.append(
                finding(
                    "duplicate-key",
                    None,
                    None,
                    f"{dup} is given twice in one mapping: kubectl (strict field validation) refuses the object, "
                    "and a lenient reader silently keeps the last value",
                )
            )


# ---- workloads ----------------------------------------------------------------------------


def _workload_entry(
    d: Document, obj: dict[str, Any], prefix: Path_, rcs: dict[str, RuntimeClass], lrs: list[LimitRange], opts: Options
) -> Entry:
    w = read_workload(obj, prefix)
    assert w is not None
    rc = rcs.get(w.runtime_class) if w.runtime_class else None
    handler = rc.handler if rc else None
    kata = is_kata_name(w.runtime_class, opts.runtime_classes) or is_kata_name(handler, opts.runtime_classes)
    entry = Entry(
        doc=d,
        kind=w.kind,
        namespace=w.namespace,
        name=w.name,
        runtime_class=w.runtime_class,
        handler=handler,
        kata=kata,
        workload=w,
    )
    if not kata:
        return entry
    if opts.admission:
        api_defaults(w)
        apply_limit_ranges(w, lrs)
    else:
        defaulted_requests(w)
    cfg = opts.config or for_handler(handler or w.runtime_class, opts.runtime)
    inp = sandbox_input(w, opts.host_cpus)
    vm = size_vm(inp, cfg)
    entry.vm, entry.config = vm, cfg
    f = entry.findings
    for problem in w.problems:
        f.append(finding("unevaluable", None, None, f"{problem}: left out of the VM size", problem.split(" ", 1)[0]))
    rejections = request_limit_rejections(w)
    if opts.admission:
        rejections += limit_range_rejections(w, lrs)
    for r in rejections:
        f.append(finding(r.rule, r.container, r.resource, r.message, r.field))
    for c in w.containers:
        _container_findings(c, vm, f, entry.unresolved)
    for which, values in (("limits", w.pod_limits), ("requests", w.pod_requests)):
        for key, v in values.items():
            _value_problem(v, f"{w.spec_field}.resources.{which}.{key}", None, key, f, entry.unresolved)
    _init_peak_findings(w, vm, f)
    for issue in vm.annotation_issues:
        if issue.problem == "not-enabled":
            effect = (
                'the Go runtime refuses to create the pod ("annotation ... is not enabled")'
                if issue.effect == "rejected"
                else "runtime-rs ignores it"
            )
            f.append(
                finding(
                    "annotation-not-enabled",
                    None,
                    issue.annotation,
                    f"{issue.annotation}={issue.value}: {issue.detail}; {effect}",
                    "metadata.annotations",
                )
            )
    for err in vm.errors:
        if "is not enabled" not in err:
            f.append(finding("vm-refused", None, None, err))
    _overhead_findings(w, rc, vm, f)
    if (
        vm.runtime == RS
        and vm.mode == STATIC
        and inp.sandbox_annotations.get(A_SANDBOX_MEMORY) == "0"
        and inp.sandbox_annotations.get(A_SANDBOX_CPU_QUOTA, "0") != "0"
    ):
        f.append(
            finding(
                "memory-limit-missing",
                None,
                "memory",
                f"runtime-rs static sizing: the pod has a CPU limit but no memory limit, so the VM gets only "
                f"overhead_memory ({vm.memory_mib} MiB) instead of default_memory ({cfg.default_memory} MiB); "
                "set memory limits",
                f"{w.spec_field}.containers",
            )
        )
    return entry


def _init_peak_findings(w: Workload, vm: VmSize, out: list[Finding]) -> None:
    """A large init container that keeps the VM big for the pod's whole life.

    Dynamic sizing (Go sandbox.go updateResources, runtime-rs cpu_mem/mem.rs): memory an
    init container made the VM hot-plug is never hot-unplugged. Static sizing (Go
    pkg/oci/utils.go CalculateSandboxSizing, runtime-rs initial_size.rs): the VM is sized once
    from the kubelet's pod total, which is the largest init container when it exceeds the
    steady containers (resourcehelper.PodLimits).
    """
    p = vm.init_peak
    if p is not None and p.memory_mib > p.steady_memory_mib:
        out.append(
            finding(
                "init-container-peak",
                p.container,
                "memory",
                f"init container {p.container} makes the VM hot-plug memory up to {p.memory_mib} MiB; memory is "
                f"never hot-unplugged, so the VM keeps it for the pod's lifetime (the running containers need "
                f"{p.steady_memory_mib} MiB)",
            )
        )
        return
    if vm.mode != STATIC or w.pod_limits:
        return
    for key in ("memory", "cpu"):
        total = pod_total(w, key, "limits")
        steady = sum(
            (v.value for c in w.containers if c.role != "init" and (v := c.limits.get(key)) and v.value is not None),
            start=Fraction(0),
        )
        if total > steady:
            big = max(
                (c for c in w.containers if c.role == "init" and (v := c.limits.get(key)) and v.value is not None),
                key=lambda c: c.limits[key].value or 0,
                default=None,
            )
            name = big.name if big else "an init container"
            out.append(
                finding(
                    "init-container-peak",
                    name,
                    key,
                    f"static sizing: the pod's {key} limit total is its largest init container ({name}), not its "
                    f"running containers, so the VM is sized for {name} for the pod's lifetime",
                )
            )
            return


def _value_problem(
    v: Value, where: str, container: str | None, resource: str, out: list[Finding], unresolved: list[str]
) -> bool:
    """Report a value that cannot be evaluated; True when the value is unusable."""
    if v.value is not None:
        return False
    if v.templated:
        unresolved.append(f"{where} {v.text} (template placeholder; not counted)")
    else:
        out.append(
            finding(
                "unevaluable",
                container,
                resource,
                f"{where}: {v.problem}; the API server refuses it (not counted in the VM size)",
                where,
            )
        )
    return True


def _container_findings(c: Container, vm: VmSize, out: list[Finding], unresolved: list[str]) -> None:
    for key, v in c.limits.items():
        if v.origin is None:
            _value_problem(v, f"{c.field}.resources.limits.{key}", c.name, key, out, unresolved)
        if "${" in key or "{{" in key:
            unresolved.append(f"{c.field}.resources.limits.{key} (templated resource name; not counted)")
    for key, v in c.requests.items():
        if v.origin is not None:
            continue  # defaulted from a limit or a LimitRange: not written by the user
        where = f"{c.field}.resources.requests.{key}"
        _value_problem(v, where, c.name, key, out, unresolved)
        lim = c.limits.get(key)
        if lim is None:
            out.append(
                finding(
                    "request-without-limit",
                    c.name,
                    key,
                    _without_limit_message(key, v, vm),
                    where,
                    FixTarget((*c.path, "resources"), "requests", "limits", key),
                )
            )
        else:
            scope = "scheduling and cpu shares" if key == "cpu" else "scheduling"
            src = f" (from {lim.origin})" if lim.origin else ""
            out.append(
                finding(
                    "request-ignored",
                    c.name,
                    key,
                    f"requests.{key} {v.text} is beside limits.{key} {lim.text}{src}: only the limit sizes "
                    f"the Kata VM; the request affects {scope} only",
                    where,
                )
            )


def _without_limit_message(key: str, v: Value, vm: VmSize) -> str:
    if key == "cpu":
        shared = f"{vm.boot_vcpus} boot vCPU(s)"
    elif key == "memory":
        shared = f"{vm.boot_memory_mib} MiB it boots with"
    else:
        shared = "memory it boots with"
    return (
        f"requests.{key} {v.text} has no limit: Kata sizes the VM from limits, so the VM reserves "
        f"nothing for it and it shares the {shared}; set limits.{key} (e.g. {v.text})"
    )


def _overhead_text(values: dict[str, Value]) -> str:
    return ", ".join(f"{k} {v.text}" for k, v in sorted(values.items()))


def _overhead_findings(w: Workload, rc: RuntimeClass | None, vm: VmSize, out: list[Finding]) -> None:
    overhead = w.overhead or (rc.overhead if rc else {})
    if not overhead:
        return
    origin = f"RuntimeClass {rc.name}" if rc and not w.overhead else "pod"
    out.append(
        finding(
            "overhead-not-vm-size",
            None,
            None,
            f"{origin} overhead ({_overhead_text(overhead)}) is added to the pod's host cgroup and scheduling, "
            f"not to the VM: the VM is still {vm.vcpus} vCPU(s) / {vm.memory_mib} MiB",
            f"{w.spec_field}.overhead" if w.overhead else "overhead.podFixed",
        )
    )


# ---- RuntimeClass and LimitRange ----------------------------------------------------------


def _meta(obj: dict[str, Any]) -> tuple[str | None, str | None]:
    meta = got if isinstance(got := obj.get("metadata"), dict) else {}
    name, ns = meta.get("name"), meta.get("namespace")
    return (str(name) if name is not None else None, str(ns) if ns else None)


def _runtime_class_entry(d: Document, obj: dict[str, Any], opts: Options) -> Entry:
    rc = read_runtime_class(obj)
    kata = is_kata_name(rc.name, opts.runtime_classes) or is_kata_name(rc.handler, opts.runtime_classes)
    entry = Entry(
        doc=d, kind="RuntimeClass", namespace=None, name=rc.name, runtime_class=rc.name, handler=rc.handler, kata=kata
    )
    if not kata:
        return entry
    for p in rc.problems:
        entry.findings.append(finding("unevaluable", None, None, p, "overhead.podFixed"))
    usable = {
        k: v
        for k, v in rc.overhead.items()
        if not _value_problem(v, f"overhead.podFixed.{k}", None, k, entry.findings, entry.unresolved)
    }
    if usable:
        entry.findings.append(
            finding(
                "overhead-not-vm-size",
                None,
                None,
                f"overhead.podFixed ({_overhead_text(usable)}) sizes the pod's host cgroup and scheduling, not the "
                "Kata VM: the VM is sized from container limits plus the Kata configuration's defaults",
                "overhead.podFixed",
            )
        )
    return entry


def _limit_range_entry(d: Document, obj: dict[str, Any], prefix: Path_, opts: Options) -> Entry:
    lr = read_limit_range(obj, prefix)
    kata = opts.kata_namespaces is None or (lr.namespace or "default") in opts.kata_namespaces
    entry = Entry(doc=d, kind="LimitRange", namespace=lr.namespace, name=lr.name, kata=kata)
    if not kata:
        return entry
    f = entry.findings
    for p in lr.problems:
        f.append(finding("unevaluable", None, None, p, p.split(" ", 1)[0]))
    for item in lr.items:
        for k, v in item.default.items():
            _value_problem(v, f"{item.field}.default.{k}", None, k, f, entry.unresolved)
        for k, v in item.max.items():
            _value_problem(v, f"{item.field}.max.{k}", None, k, f, entry.unresolved)
        if item.type != "Container":
            continue
        for key, v in item.default_request.items():
            where = f"{item.field}.defaultRequest.{key}"
            _value_problem(v, where, None, key, f, entry.unresolved)
            limit = item.default.get(key) or item.max.get(key)
            if limit is None:
                f.append(
                    finding(
                        "limitrange-default-request",
                        None,
                        key,
                        f"defaultRequest.{key} {v.text} without default.{key}: containers without limits get a "
                        f"request but no limit, so their Kata VMs reserve nothing for them; set default.{key} "
                        "(it also becomes the default request)",
                        where,
                        FixTarget(item.path, "defaultRequest", "default", key),
                    )
                )
            else:
                which = "default" if key in item.default else "max (the default limit when default is unset)"
                f.append(
                    finding(
                        "request-ignored",
                        None,
                        key,
                        f"defaultRequest.{key} {v.text} is beside {which}.{key} {limit.text}: only the default "
                        "limit sizes Kata VMs; the default request affects scheduling only",
                        where,
                    )
                )
    return entry


def vm_text(e: Entry) -> str:
    """`1->2 vCPU, 2048->2848 MiB (guest ~2944)`: boot -> all containers running, and the memory
    the guest sees when hot-plug rounding makes it more (`~`: block size assumed); for tables."""
    vm = e.vm
    if vm is None:
        return "-"
    more = "+?" if e.unresolved else ""
    cpu = f"{vm.vcpus}{more}" if vm.boot_vcpus == vm.vcpus else f"{vm.boot_vcpus}->{vm.vcpus}{more}"
    mem = (
        f"{vm.memory_mib}{more}"
        if vm.boot_memory_mib == vm.memory_mib
        else f"{vm.boot_memory_mib}->{vm.memory_mib}{more}"
    )
    guest = ""
    if vm.guest_memory_mib and vm.guest_memory_mib != vm.memory_mib:
        guest = f" (guest {'~' if vm.guest_memory_estimate else ''}{vm.guest_memory_mib})"
    return f"{cpu} vCPU, {mem} MiB{guest}"


__all__ = [
    "Document",
    "Entry",
    "Finding",
    "FixTarget",
    "InputError",
    "Options",
    "Report",
    "RULES",
    "analyse",
    "is_kata_name",
    "vm_text",
]
