"""The container manager side: handler, shim, RuntimeClass, legacy CLI runtime, annotations, cgroups.

These fail before any VM exists, with text unique to each cause, so they rank first; the
node's containerd/CRI-O configuration (host facts) confirms which handler or path is wrong.
"""

from __future__ import annotations

import fnmatch
from typing import Any

from kata_debug.analyze.analyzer import Analyzer
from kata_debug.analyze.base import Evidence, Finding, LineMatch, Severity, Signature
from kata_debug.analyze.common import DOCS, ISSUES, containerd_handlers, fact, finding, uses_crio
from kata_debug.analyze.evidence import EvidenceView

HANDLER = (
    Signature.of(
        "handler.containerd", ("is configured",), r"no runtime for \\*\"(?P<handler>[^\"\\]+)\\*\" is configured"
    ),
    Signature.of(
        "handler.crio",
        ("failed to find runtime handler", "not supported", "is being ignored due to", "empty runtime path"),
        r"failed to find runtime handler (?P<handler>\S+) from runtime list|RuntimeHandler \\*\"(?P<h2>[^\"\\]+)\\*\" not supported|Runtime handler \\*\"(?P<h3>[^\"\\]+)\\*\" is being ignored due to|empty runtime path for runtime handler (?P<h4>\S+)",
    ),
)
RUNTIMECLASS = Signature.of(
    "runtimeclass.missing",
    ("RuntimeClass", "runtimeclass.node.k8s.io"),
    r"RuntimeClass \\*\"(?P<rc>[^\"\\]+)\\*\" not found|runtimeclass\.node\.k8s\.io \\*\"(?P<rc2>[^\"\\]+)\\*\" not found|(?i:failed to lookup RuntimeClass) (?P<rc3>[^\s:]+):",
)
SHIM = Signature.of(
    "shim.missing",
    ("binary not installed", "containerd-shim-kata", "failed to create shim: not found", "shim task: not found"),
    r"binary not installed \\*\"(?P<bin>containerd-shim-[\w.-]+)\\*\"|fork/exec (?P<bin2>\S*containerd-shim-kata[\w-]*-v2): no such file or directory|exec: \\*\"(?P<bin3>containerd-shim-kata[\w-]*-v2)\\*\": executable file not found|flag provided but not defined: -namespace",
)
LEGACY = Signature.of(
    "legacy.cli",
    ("Invalid command",),
    r"Invalid command \\*\"(?P<cmd>create|start|delete|state|kill|run|list|exec|ps|features)\\*\"",
)
ANNOTATION = Signature.of(
    "annotation.go",
    ("is not enabled", "required from annotation is not valid", "less than minimum required"),
    r"annotation (?P<key>io\.katacontainers\.[\w.\-]+) is not enabled|(?P<key2>io\.katacontainers\.[\w.\-]+): is not enabled|(?P<what>hypervisor|jailer|virtiofs daemon|entropy source|vhost store path) (?P<value>\S+) required from annotation is not valid|specified in annotation (?P<key3>\S+) is less than minimum required",
)
ANNOTATION_RS = Signature.of(
    "annotation.rs", ("Annotation io.katacontainers.",), r"Annotation (?P<key>io\.katacontainers\.[\w.\-]+) not enabled"
)
CGROUP = Signature.of(
    "cgroup.v2",
    ("cgroup mountpoint does not exist", "not implemented for cgroup v2 unified hierarchy"),
    r"cgroups: cgroup mountpoint does not exist|not implemented for cgroup v2 unified hierarchy",
)


def _first(m: LineMatch, *keys: str) -> str | None:
    return next((m.groups[k] for k in keys if m.groups.get(k)), None)


def _runtimeclasses(view: EvidenceView) -> dict[str, str]:
    """name -> handler of the cluster's RuntimeClasses (cluster bundles)."""
    rcs = view.json("cluster/runtimeclasses.json")
    items = rcs.get("items") if isinstance(rcs, dict) else rcs
    out: dict[str, str] = {}
    for rc in items or []:
        if isinstance(rc, dict):
            out[str((rc.get("metadata") or {}).get("name"))] = str(rc.get("handler"))
    return out


#: Where the host collector copies Docker's daemon configuration.
DOCKER_MEMBER = "host/files/etc/docker/daemon.json"


def _docker_runtimes(view: EvidenceView) -> list[dict[str, Any]]:
    runtimes = (view.facts.get("docker") or {}).get("runtimes") or []
    return [r for r in runtimes if isinstance(r, dict)]


def _merged_configs(view: EvidenceView) -> list[dict[str, Any]]:
    merged = (view.facts.get("containerd") or {}).get("merged") or []
    return [c for c in merged if isinstance(c, dict)]


def _config_member(view: EvidenceView, node_path: Any) -> str:
    """The bundle member a containerd config file was copied to (facts when it was not)."""
    member = f"host/files{node_path}"
    return member if node_path and view.has(member) else "host/facts.json"


def passes_kata_annotations(patterns: Any) -> bool:
    """containerd passes a pod annotation whose key matches one of pod_annotations (globs)."""
    probe = "io.katacontainers.config.hypervisor.default_memory"
    return isinstance(patterns, list) and any(fnmatch.fnmatchcase(probe, str(p)) for p in patterns)


class CriConfigAnalyzer(Analyzer):
    name = "cri-config"
    causes = (
        "legacy-runtime-cli",
        "shim-not-found",
        "runtimeclass-not-found",
        "runtime-handler-missing",
        "annotation-not-enabled",
        "cgroup-v2-unsupported-config",
    )
    reads = ("cluster/runtimeclasses.json", "cluster/pods/*/*.json", "kata-config/files/*", "host/files/*")
    signatures = (*HANDLER, RUNTIMECLASS, SHIM, LEGACY, ANNOTATION, ANNOTATION_RS, CGROUP)

    def analyze(self, view: EvidenceView) -> list[Finding]:
        found = [
            self._legacy(view),
            self._shim(view),
            self._runtimeclass(view),
            self._handler(view),
            self._annotation(view),
            self._cgroup(view),
        ]
        return [f for f in found if f is not None]

    def _legacy(self, view: EvidenceView) -> Finding | None:
        lines = view.matches(LEGACY.name)
        facts = [
            fact(view, DOCKER_MEMBER, f"runtimes.{r.get('name')}.path = {r.get('path')}: the kata-runtime OCI CLI")
            for r in _docker_runtimes(view)
            if r.get("legacy_kata_cli")
        ]
        if not lines and not facts:
            return None
        return finding(
            view,
            "legacy-runtime-cli",
            "error" if lines else "warning",
            "Docker or CRI-O runs kata-runtime as an OCI CLI runtime, which Kata 2.x removed",
            '`Invalid command "create"` is kata-runtime 2.x answering an OCI runtime CLI call: since 2.0 Kata is '
            "only a containerd shim v2 (containerd-shim-kata-v2)"
            + (
                "; Docker's daemon.json names kata-runtime as a runtime `path`, which dockerd execs as runc"
                if facts
                else ""
            )
            + ". Not shim-not-found: the binary was found, it is the wrong kind of runtime.",
            'Use containerd (runtime_type io.containerd.kata.v2) or, for CRI-O, runtime_type = "vm" with '
            'runtime_path = containerd-shim-kata-v2; Docker: replace the runtime\'s "path" with '
            '"runtimeType": "io.containerd.kata.v2" in /etc/docker/daemon.json (or `docker run --runtime '
            f"io.containerd.kata.v2`). Refs: {ISSUES}12076, {ISSUES}1775, {DOCS}install/README.md",
            lines,
            facts,
            confirmed=True,
            occurrences=view.count(LEGACY.name) or len(facts),
        )

    def _shim(self, view: EvidenceView) -> Finding | None:
        lines = view.matches(SHIM.name)
        docker = [
            fact(
                view,
                DOCKER_MEMBER,
                f"runtimes.{r.get('name')}.runtimeType = {r.get('runtime_type')}: {r.get('shim')} not found on the node",
            )
            for r in _docker_runtimes(view)
            if r.get("shim") and not r.get("shim_found")
        ]
        if not lines and not docker:
            return None
        facts = list(docker)
        if lines:
            for h in containerd_handlers(view):
                if h.get("kata") and h.get("shim"):
                    where = f"found at {h['shim_found']}" if h.get("shim_found") else "not found on the node"
                    key = "runtime_path" if h.get("runtime_path") else "runtime_type"
                    facts.append(
                        fact(
                            view,
                            _config_member(view, h.get("source")),
                            f"runtimes.{h.get('name')}.{key} = {h.get(key)}: {h['shim']} {where}",
                        )
                    )
        binary = next((_first(m, "bin", "bin2", "bin3") for m in lines if _first(m, "bin", "bin2", "bin3")), None)
        return finding(
            view,
            "shim-not-found",
            "error" if lines else "warning",
            f"{'containerd' if lines else 'Docker'} cannot find the Kata shim{f' ({binary})' if binary else ''}",
            "The handler is configured but containerd could not start its shim binary: it is not on containerd's "
            "PATH or runtime_path points at a file that does not exist. Not runtime-handler-missing (the handler "
            "exists) and not hypervisor-asset-missing (this is the shim, not the hypervisor).",
            "Put containerd-shim-kata-v2 where containerd looks (symlink /opt/kata/bin/containerd-shim-kata-v2 into "
            "/usr/local/bin) or set runtime_path on the runtime to its absolute path; runtime_type "
            "io.containerd.<name>.v2 needs containerd-shim-<name>-v2. Refs: "
            f"{ISSUES}9256, {ISSUES}5800, {DOCS}install/container-manager/containerd/containerd-install.md",
            lines,
            facts,
            confirmed=any(f.text.endswith("not found on the node") for f in facts),
            occurrences=view.count(SHIM.name) or len(facts),
        )

    def _runtimeclass(self, view: EvidenceView) -> Finding | None:
        lines = view.matches(RUNTIMECLASS.name)
        rcs = _runtimeclasses(view)
        facts: list[Evidence] = []
        wanted: set[str] = {r for m in lines if (r := _first(m, "rc", "rc2", "rc3"))}
        pod = None
        for path in view.members("cluster/pods/*/*.json"):
            record = view.json(path)
            if not isinstance(record, dict):
                continue
            spec = (record.get("pod") or {}).get("spec") or {}
            name = spec.get("runtimeClassName")
            if rcs is not None and name and name not in rcs and view.has("cluster/runtimeclasses.json"):
                meta = (record.get("pod") or {}).get("metadata") or {}
                pod = pod or f"{meta.get('namespace')}/{meta.get('name')}"
                wanted.add(name)
                facts.append(fact(view, path, f"spec.runtimeClassName: {name}"))
            for e in record.get("events") or []:
                msg = str(e.get("message") or "")
                if RUNTIMECLASS.match(msg):
                    facts.append(fact(view, path, f"event {e.get('reason')}: {msg}"))
        if not lines and not facts:
            return None
        if view.has("cluster/runtimeclasses.json"):
            facts.append(
                fact(view, "cluster/runtimeclasses.json", f"RuntimeClasses: {', '.join(sorted(rcs)) or 'none'}")
            )
        handlers = {h: n for n, h in rcs.items()}
        hint = next((f" (a RuntimeClass named {handlers[w]!r} has handler {w!r})" for w in wanted if w in handlers), "")
        f = finding(
            view,
            "runtimeclass-not-found",
            "error",
            f"Pods name a RuntimeClass that does not exist: {', '.join(sorted(wanted)) or '?'}",
            "The pod's runtimeClassName has no RuntimeClass object, so the API server or kubelet refuses it before "
            f"any node runtime is involved{hint}. Not runtime-handler-missing: that one has a RuntimeClass whose "
            "handler the node's CRI lacks.",
            "Create the RuntimeClass (kata-deploy's runtimeclasses, or a node.k8s.io/v1 RuntimeClass whose handler "
            "matches the CRI runtime name) and reference it by metadata.name. Refs: "
            f"{ISSUES}3633, https://kubernetes.io/docs/concepts/containers/runtime-class/",
            lines,
            facts,
            confirmed=bool(facts),
            occurrences=view.count(RUNTIMECLASS.name) or len(facts),
        )
        f.pod = f.pod or pod
        return f

    def _handler(self, view: EvidenceView) -> Finding | None:
        lines = view.matches(*(s.name for s in HANDLER))
        if not lines:
            return None
        wanted = sorted({h for m in lines if (h := _first(m, "handler", "h2", "h3", "h4"))})
        handlers = {str(h.get("name")): h for h in containerd_handlers(view)}
        facts = [fact(view, "host/facts.json", f"containerd runtime handlers: {', '.join(handlers) or 'none'}")] + [
            fact(view, "host/facts.json", f"containerd config: {p}") for p in self._containerd_configs(view)
        ]
        present = [w for w in wanted if w in handlers]
        for w in present:
            facts.append(fact(view, _config_member(view, handlers[w].get("source")), f"runtimes.{w} is declared here"))
        for cfg in _merged_configs(view):
            declared = {str(h.get("name")) for h in cfg.get("runtime_handlers") or [] if isinstance(h, dict)}
            if cfg.get("template") and set(wanted) & declared - set(handlers):
                facts.append(
                    fact(
                        view,
                        _config_member(view, cfg.get("main")),
                        f"{', '.join(sorted(set(wanted) & declared))} only in this template: k3s/RKE2 writes it into "
                        "config.toml at the next restart",
                    )
                )
        crio = uses_crio(view)
        if present and len(present) == len(wanted) and not crio:
            # Declared now (possibly only in a conf.d drop-in): the error predates the config,
            # or containerd has not been restarted since it changed.
            return finding(
                view,
                "runtime-handler-missing",
                "warning",
                f"containerd reported handler(s) {', '.join(repr(w) for w in wanted)} missing, but its config "
                "declares them now",
                "The merged containerd configuration (main file and its imports, merged as containerd does) "
                "declares the handler, so it is not missing from the configuration: containerd was running with "
                "an older configuration when it logged the error (it reads its config only at start).",
                "Restart containerd so it loads the current configuration; if the error persists, check that the "
                "drop-in is listed in the main config's `imports`. Refs: "
                f"{ISSUES}10809, https://github.com/containerd/containerd/issues/5837",
                lines,
                facts,
                occurrences=view.count(*(s.name for s in HANDLER)),
            )
        confirmed = bool(wanted) and view.has("host/facts.json") and not present
        return finding(
            view,
            "runtime-handler-missing",
            "error",
            f"The CRI has no runtime handler {', '.join(repr(w) for w in wanted) or ''}".rstrip(),
            "The RuntimeClass names a handler the node's containerd/CRI-O does not have configured (kata-deploy "
            "did not write it, a k3s/RKE2 template or drop-in was not picked up, the CRI was not restarted, or a "
            "typo); containerd's imports (conf.d drop-ins) were merged before looking. Not runtimeclass-not-found: "
            "the RuntimeClass exists, the node side is missing.",
            "Add the handler to the configuration the node's CRI actually reads (containerd: runtimes.<handler> "
            "with runtime_type io.containerd.kata.v2; CRI-O: [crio.runtime.runtimes.<handler>] with runtime_path "
            'and runtime_type = "vm") and restart it; on k3s/RKE2 edit config.toml.tmpl. Refs: '
            f"{ISSUES}10809, {ISSUES}2011, {DOCS}how-to/containerd-kata.md",
            lines,
            facts,
            confirmed=confirmed,
            occurrences=view.count(*(s.name for s in HANDLER)),
        )

    @staticmethod
    def _containerd_configs(view: EvidenceView) -> list[str]:
        configs: Any = (view.facts.get("containerd") or {}).get("configs") or []
        return [str(c) for c in configs]

    def _annotation(self, view: EvidenceView) -> Finding | None:
        errors = view.matches(ANNOTATION.name)
        dropped = view.matches(ANNOTATION_RS.name)
        filtered = [
            h
            for h in containerd_handlers(view)
            if h.get("kata") and h.get("pod_annotations") and not passes_kata_annotations(h["pod_annotations"])
        ]
        if not errors and not dropped and not filtered:
            return None
        keys = sorted({k for m in errors + dropped if (k := _first(m, "key", "key2", "key3", "value"))})
        facts = []
        for path, name, section in view.hypervisor_sections():
            facts.append(
                fact(
                    view,
                    f"kata-config/files{path}",
                    f"[hypervisor.{name}] enable_annotations = {section.get('enable_annotations', [])}",
                )
            )
        for h in filtered:
            facts.append(
                fact(
                    view,
                    _config_member(view, h.get("source")),
                    f"runtimes.{h.get('name')}.pod_annotations = {h.get('pod_annotations')}: io.katacontainers.* "
                    "annotations are dropped by containerd before Kata sees them",
                )
            )
        severity: Severity = "error" if errors else "warning"
        return finding(
            view,
            "annotation-not-enabled",
            severity,
            f"Kata annotation(s) not enabled: {', '.join(keys)}"[:200]
            if keys
            else "containerd drops Kata annotations: pod_annotations does not pass io.katacontainers.*",
            "The pod sets a Kata annotation the configuration's enable_annotations does not allow"
            + (
                " (runtime-rs drops it with a warning and the setting is silently ignored)"
                if dropped and not errors
                else ""
            )
            + "; containerd passes only annotations listed in the runtime's pod_annotations"
            + (", and a Kata runtime here lists patterns that do not match io.katacontainers.*" if filtered else "")
            + ".",
            "Add the annotation's suffix to enable_annotations in [hypervisor.<name>] (and path values to the "
            "matching valid_*_paths), and list io.katacontainers.* in the containerd runtime's pod_annotations; or "
            f"drop the annotation. Refs: {ISSUES}2088, {ISSUES}6345, {DOCS}how-to/how-to-set-sandbox-config-kata.md",
            errors or dropped,
            facts,
            confirmed=bool(facts),
            occurrences=view.count(ANNOTATION.name, ANNOTATION_RS.name) or len(filtered),
        )

    def _cgroup(self, view: EvidenceView) -> Finding | None:
        lines = view.matches(CGROUP.name)
        if not lines:
            return None
        version = (view.facts.get("cgroup") or {}).get("version")
        rt = view.runtime_section()
        facts = []
        if version is not None:
            facts.append(fact(view, "host/facts.json", f"cgroup version: {version}"))
        if "sandbox_cgroup_only" in rt:
            facts.append(
                fact(
                    view,
                    f"kata-config/files{view.kata_summary.get('in_effect')}",
                    f"[runtime] sandbox_cgroup_only = {str(rt['sandbox_cgroup_only']).lower()}",
                )
            )
        return finding(
            view,
            "cgroup-v2-unsupported-config",
            "error",
            "The runtime cannot create the sandbox cgroup on this cgroup v2 host with this configuration",
            "The Go runtime looked for cgroup v1 mount points (or a v1-only operation) on a unified-hierarchy host"
            + (": cgroup v2 confirmed by the host facts" if version == 2 else "")
            + ". Older Kata releases need sandbox_cgroup_only = true on cgroup v2.",
            "Set sandbox_cgroup_only = true in [runtime] (and use the systemd cgroup driver consistently), or "
            f"upgrade Kata to a release with cgroup v2 support. Refs: {ISSUES}1927, {ISSUES}3038, {DOCS}design/host-cgroups.md",
            lines,
            facts,
            confirmed=version == 2,
            occurrences=view.count(CGROUP.name),
        )
