"""Shared bits for the `kata-debug limits` tests: fixture location and small manifest builders."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import yaml

from kata_debug.sizing.inputs import load
from kata_debug.sizing.limits import Entry, Options, Report, analyse

HERE = Path(__file__).resolve().parent
COPY = HERE / "fixtures" / "kata-manifests"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "kata-manifests"
# Prefer the copy in the repository; shared/ is the upstream source of truth beside the checkout.
MANIFESTS = COPY if COPY.is_dir() else SHARED
BEFORE = MANIFESTS / "before"
AFTER = MANIFESTS / "after"
FIX_FILES = sorted(
    [p.name for p in BEFORE.glob("tools__packaging__kata-deploy__examples__*")]
    + ["tests__integration__kubernetes__runtimeclass_workloads__redis-master-deployment.yaml"]
)


def analyse_text(text: str, opts: Options | None = None) -> Report:
    docs, errors = load(["-"], stdin=io.StringIO(text))
    assert not errors, errors
    return analyse(docs, opts)


def analyse_objs(*objs: dict[str, Any], opts: Options | None = None) -> Report:
    return analyse_text(yaml.safe_dump_all(objs), opts)


def only(report: Report, kind: str | None = None) -> Entry:
    entries = [e for e in report.entries if kind is None or e.kind == kind]
    assert len(entries) == 1, [(e.kind, e.name) for e in report.entries]
    return entries[0]


def rules(entry: Entry) -> list[tuple[str, str | None, str | None]]:
    return [(f.rule, f.container, f.resource) for f in entry.findings]


def container(
    name: str = "app", limits: dict[str, Any] | None = None, requests: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    res: dict[str, Any] = {}
    if requests is not None:
        res["requests"] = requests
    if limits is not None:
        res["limits"] = limits
    return {"name": name, "image": "registry.k8s.io/pause:3.10", "resources": res, **extra}


def pod(
    *containers: dict[str, Any],
    name: str = "web",
    runtime_class: str | None = "kata",
    namespace: str | None = None,
    annotations: dict[str, str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    if annotations:
        meta["annotations"] = annotations
    body: dict[str, Any] = {"containers": list(containers or [container()]), **spec}
    if runtime_class is not None:
        body["runtimeClassName"] = runtime_class
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": body}


def limit_range(name: str = "limits", namespace: str | None = None, **item: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    return {
        "apiVersion": "v1",
        "kind": "LimitRange",
        "metadata": meta,
        "spec": {"limits": [{"type": "Container", **item}]},
    }


def runtime_class(name: str, handler: str, overhead: dict[str, str] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "node.k8s.io/v1",
        "kind": "RuntimeClass",
        "metadata": {"name": name},
        "handler": handler,
    }
    if overhead:
        obj["overhead"] = {"podFixed": overhead}
    return obj
