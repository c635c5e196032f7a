"""`kata-debug limits` throughput: documents/s, and the cost of analysis next to YAML parsing.

Builds one multi-document YAML stream of N workload documents (Deployments, Pods,
StatefulSets, Jobs, CronJobs; 1-3 containers, init containers, requests-only, limits,
templates, Kata and non-Kata runtime classes, Kata annotations) plus a few RuntimeClasses and
LimitRanges, then times in the same run:
  * bare parsing: `list(yaml.load_all(text, Loader=yaml.CSafeLoader))` (the baseline), and
  * the command's work: the same parse + kubelet translation + VM sizing + rules
    (`limits_input.parse_text` + `limits.analyse`), and, for information, + JSON rendering.
Target: analysis adds at most as much time as parsing, i.e. ratio = parse time / total time
>= 0.5. Best of --repeat runs; prints numbers, asserts nothing.

    python bench/limits.py                 # 10,000 documents
    python bench/limits.py --docs 50000 --repeat 5
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kata_debug.sizing.inputs import parse_text  # noqa: E402
from kata_debug.sizing.limits import analyse  # noqa: E402

CPU = ["100m", "250m", "500m", "1", "1500m", "2", 0.5, 1]
MEM = ["64Mi", "128Mi", "256Mi", "512Mi", "800Mi", "1Gi", "2Gi", "1G"]
RUNTIME_CLASSES = [
    "kata",
    "kata-qemu",
    "kata-clh",
    "kata-fc",
    "kata-dragonball",
    "kata-qemu-runtime-rs",
    None,
    "runc",
    "gvisor",
]


def container(rng: random.Random, i: int) -> dict[str, Any]:
    res: dict[str, Any] = {}
    style = rng.random()
    if style < 0.35:
        res["requests"] = {"cpu": rng.choice(CPU), "memory": rng.choice(MEM)}
    elif style < 0.8:
        res["limits"] = {"cpu": rng.choice(CPU), "memory": rng.choice(MEM)}
        if rng.random() < 0.5:
            res["requests"] = {"cpu": rng.choice(CPU), "memory": rng.choice(MEM)}
    elif style < 0.9:
        res["limits"] = {"memory": "${MEMORY_LIMIT}", "cpu": rng.choice(CPU)}
    return {
        "name": f"c{i}",
        "image": f"registry.example.com/team/app-{rng.randrange(1000)}:v{rng.randrange(50)}",
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"containerPort": 8080 + i, "protocol": "TCP", "name": f"http{i}"}],
        "env": [{"name": f"VAR_{k}", "value": f"value-{rng.randrange(10**6)}"} for k in range(rng.randrange(1, 5))],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080 + i}, "periodSeconds": 10},
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        "resources": res,
    }


def pod_spec(rng: random.Random) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [container(rng, i) for i in range(rng.choice([1, 1, 1, 2, 2, 3]))],
        "volumes": [{"name": "data", "emptyDir": {}}],
        "securityContext": {"runAsUser": 1000, "runAsGroup": 1000},
        "restartPolicy": "Always",
    }
    rc = rng.choice(RUNTIME_CLASSES)
    if rc is not None:
        spec["runtimeClassName"] = rc
    if rng.random() < 0.2:
        spec["initContainers"] = [container(rng, 9)]
    return spec


def workload(rng: random.Random, n: int) -> dict[str, Any]:
    kind = rng.choices(["Deployment", "Pod", "StatefulSet", "Job", "CronJob"], [55, 25, 8, 7, 5])[0]
    meta: dict[str, Any] = {
        "name": f"w{n}",
        "namespace": f"team-{n % 20}",
        "labels": {"app": f"w{n}", "tier": rng.choice(["web", "db", "batch"])},
    }
    tmeta: dict[str, Any] = {"labels": {"app": f"w{n}"}}
    if rng.random() < 0.1:
        tmeta["annotations"] = {"io.katacontainers.config.hypervisor.default_vcpus": "2"}
    template = {"metadata": tmeta, "spec": pod_spec(rng)}
    if kind == "Pod":
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {**meta, **tmeta}, "spec": template["spec"]}
    if kind == "CronJob":
        return {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": meta,
            "spec": {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": template}}},
        }
    api = "batch/v1" if kind == "Job" else "apps/v1"
    spec: dict[str, Any] = {"template": template}
    if kind != "Job":
        spec.update({"replicas": rng.randrange(1, 5), "selector": {"matchLabels": {"app": f"w{n}"}}})
    return {"apiVersion": api, "kind": kind, "metadata": meta, "spec": spec}


def stream(n: int, seed: int = 7) -> str:
    rng = random.Random(seed)
    objs: list[dict[str, Any]] = [
        {
            "apiVersion": "node.k8s.io/v1",
            "kind": "RuntimeClass",
            "metadata": {"name": "kata-qemu"},
            "handler": "kata-qemu",
            "overhead": {"podFixed": {"cpu": "250m", "memory": "160Mi"}},
        },
        {
            "apiVersion": "v1",
            "kind": "LimitRange",
            "metadata": {"name": "defaults", "namespace": "team-3"},
            "spec": {
                "limits": [
                    {"type": "Container", "default": {"cpu": "1", "memory": "512Mi"}, "defaultRequest": {"cpu": "100m"}}
                ]
            },
        },
    ]
    objs += [workload(rng, i) for i in range(n)]
    return yaml.dump_all(objs, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False)


def best(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    text = stream(args.docs)
    n = args.docs + 2

    def parse_only() -> None:
        list(yaml.load_all(text, Loader=yaml.CSafeLoader))

    def library() -> Any:
        """`limits.analyse` as a library call (the cluster bundle uses it this way)."""
        docs, err = parse_text(text, "bench.yaml", "bench.yaml")
        assert err is None
        return analyse(docs)

    def cli() -> Any:
        """As `kata-debug limits` runs it: parse, freeze the parsed documents for the GC, analyse."""
        docs, err = parse_text(text, "bench.yaml", "bench.yaml")
        assert err is None
        gc.freeze()
        try:
            return analyse(docs)
        finally:
            gc.unfreeze()

    def with_json() -> None:
        json.dumps(cli().to_json())

    s = library().summary()
    t_parse = best(parse_only, args.repeat)
    t_cli = best(cli, args.repeat)
    t_lib = best(library, args.repeat)
    t_json = best(with_json, args.repeat)
    print(
        f"input: {n} documents, {len(text) / 2**20:.1f} MiB of YAML; {s['workloads']} workloads, "
        f"{s['kata_workloads']} Kata; {s['warnings']} warnings, {s['info']} info"
    )
    rows = [
        ("bare yaml.load_all (CSafeLoader)", t_parse),
        ("kata-debug limits (parse + analysis)", t_cli),
        ("limits.analyse as a library call", t_lib),
        ("kata-debug limits --format json", t_json),
    ]
    for label, t in rows:
        print(f"{label:<40} {n / t:9,.0f} documents/s  ({t:.2f} s)")
    print(
        f"per document: parsing {t_parse / n * 1e6:.0f} us, analysis {(t_cli - t_parse) / n * 1e6:.0f} us "
        f"({(t_lib - t_parse) / n * 1e6:.0f} us as a library call)"
    )
    for label, t in (("kata-debug limits", t_cli), ("library call", t_lib)):
        ratio = t_parse / t
        print(
            f"ratio {label} (parse time / total time) = {ratio:.2f}  "
            f"(target >= 0.50: {'met' if ratio >= 0.5 else 'NOT met'})"
        )


if __name__ == "__main__":
    main()
