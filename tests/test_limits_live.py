"""`kata-debug limits` against a live cluster: the real `kubernetes.aio` client and real kubectl
talking to a loopback API server that serves complete Pod/RuntimeClass/LimitRange objects."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from kata_debug.errors import UsageError
from kata_debug.kube import client as kube_client
from kata_debug.sizing import live as limits_live
from tests.conftest import REPO
from tests.fake_kube import FakeKube


def api_pod(
    name: str,
    namespace: str,
    runtime_class: str | None,
    resources: dict[str, Any],
    overhead: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A pod as the API server returns it after admission (defaults filled in, status set)."""
    spec: dict[str, Any] = {
        "containers": [
            {
                "name": "app",
                "image": "registry.k8s.io/pause:3.10",
                "imagePullPolicy": "IfNotPresent",
                "resources": resources,
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
            }
        ],
        "dnsPolicy": "ClusterFirst",
        "enableServiceLinks": True,
        "nodeName": "node-1",
        "preemptionPolicy": "PreemptLowerPriority",
        "priority": 0,
        "restartPolicy": "Always",
        "schedulerName": "default-scheduler",
        "securityContext": {},
        "serviceAccountName": "default",
        "terminationGracePeriodSeconds": 30,
        "tolerations": [
            {
                "effect": "NoExecute",
                "key": "node.kubernetes.io/not-ready",
                "operator": "Exists",
                "tolerationSeconds": 300,
            }
        ],
    }
    if runtime_class:
        spec["runtimeClassName"] = runtime_class
    if overhead:
        spec["overhead"] = overhead
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}, "annotations": annotations or {}},
        "spec": spec,
        "status": {
            "phase": "Running",
            "qosClass": "Burstable",
            "hostIP": "10.0.0.11",
            "podIP": "10.244.1.7",
            "startTime": "2026-01-01T00:00:05Z",
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:09Z"}],
            "containerStatuses": [
                {
                    "name": "app",
                    "ready": True,
                    "restartCount": 0,
                    "started": True,
                    "image": "registry.k8s.io/pause:3.10",
                    "imageID": "",
                    "containerID": "containerd://0123",
                    "state": {"running": {"startedAt": "2026-01-01T00:00:08Z"}},
                }
            ],
        },
    }


def cluster_objects() -> list[dict[str, Any]]:
    rc = lambda name, handler, overhead=None: {  # noqa: E731
        "apiVersion": "node.k8s.io/v1",
        "kind": "RuntimeClass",
        "metadata": {"name": name},
        "handler": handler,
        **({"overhead": {"podFixed": overhead}} if overhead else {}),
        **({"scheduling": {"nodeSelector": {"katacontainers.io/kata-runtime": "true"}}} if handler != "runc" else {}),
    }
    lr = lambda name, ns, item: {  # noqa: E731
        "apiVersion": "v1",
        "kind": "LimitRange",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"limits": [{"type": "Container", **item}]},
    }
    return [
        rc("kata-qemu", "kata-qemu", {"cpu": "250m", "memory": "160Mi"}),
        rc("secure", "kata-clh"),
        rc("runc", "runc"),
        lr("requests-only", "apps", {"defaultRequest": {"cpu": "100m"}}),
        lr("also-requests-only", "plain", {"defaultRequest": {"memory": "64Mi"}}),
        api_pod(
            "needs-limits",
            "apps",
            "kata-qemu",
            {"requests": {"cpu": "100m", "memory": "128Mi"}},
            overhead={"cpu": "250m", "memory": "160Mi"},
        ),
        api_pod(
            "sized",
            "apps",
            "secure",
            {"limits": {"cpu": "500m", "memory": "800Mi"}, "requests": {"cpu": "500m", "memory": "800Mi"}},
        ),
        api_pod("ordinary", "plain", None, {"requests": {"cpu": "1"}}),
        api_pod(
            "batch",
            "jobs",
            "kata-qemu",
            {"limits": {"cpu": "2", "memory": "1Gi"}, "requests": {"cpu": "2", "memory": "1Gi"}},
            annotations={"io.katacontainers.config.hypervisor.default_memory": "4096"},
        ),
    ]


async def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any] | str, str]:
    """Run the CLI as a separate process without blocking the loop that serves the fake API."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kata_debug",
        "limits",
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode()
    try:
        return proc.returncode or 0, json.loads(text), err.decode()
    except ValueError:
        return proc.returncode or 0, text, err.decode()


@pytest.fixture
async def kube(tmp_path: Path):  # noqa: ANN201 - (FakeKube, kubeconfig path)
    async with FakeKube().add(*cluster_objects()) as fk:
        yield fk, fk.kubeconfig(tmp_path / "kubeconfig", namespace="apps")


async def test_all_namespaces_through_the_real_client(kube: tuple[FakeKube, Path]) -> None:
    fk, kc = kube
    code, out, err = await cli("--kubeconfig", str(kc), "-A", "--format", "json")
    assert code == 1, err
    assert isinstance(out, dict)
    by_name = {w["name"]: w for w in out["workloads"]}
    assert by_name["needs-limits"]["source"] == "/api/v1/namespaces/apps/pods/needs-limits"
    assert [f["rule"] for f in by_name["needs-limits"]["findings"]] == [
        "request-without-limit",
        "request-without-limit",
        "overhead-not-vm-size",
    ]
    assert by_name["needs-limits"]["vm"]["memory_mib"] == 2048
    sized = by_name["sized"]
    assert (sized["kata"], sized["handler"], sized["vm"]["vcpus"], sized["vm"]["memory_mib"]) == (
        True,
        "kata-clh",
        2,
        2848,
    )
    assert sized["findings"] == []  # requests equal to limits are API defaults, not user intent
    assert by_name["ordinary"]["kata"] is False and by_name["ordinary"]["vm"] is None
    assert [f["rule"] for f in by_name["batch"]["findings"]] == ["annotation-not-enabled", "overhead-not-vm-size"]
    assert "RuntimeClass kata-qemu overhead (cpu 250m, memory 160Mi)" in by_name["batch"]["findings"][1]["message"]
    # LimitRanges matter only where Kata pods run: "apps" is flagged, "plain" is not.
    assert [f["rule"] for f in by_name["requests-only"]["findings"]] == ["limitrange-default-request"]
    assert by_name["also-requests-only"]["kata"] is False and by_name["also-requests-only"]["findings"] == []
    assert by_name["kata-qemu"]["findings"][0]["rule"] == "overhead-not-vm-size"
    assert "/api/v1/pods?limit=500" in fk.requests


async def test_namespace_comes_from_the_context_or_the_option(kube: tuple[FakeKube, Path]) -> None:
    fk, kc = kube
    _, out, _ = await cli("--kubeconfig", str(kc), "--format", "json")
    assert isinstance(out, dict)
    assert {w["namespace"] for w in out["workloads"] if w["kind"] == "Pod"} == {"apps"}
    code, out, _ = await cli("--kubeconfig", str(kc), "-n", "jobs", "--format", "json")
    assert isinstance(out, dict)
    assert [w["name"] for w in out["workloads"] if w["kind"] == "Pod"] == ["batch"]
    assert "/api/v1/namespaces/jobs/pods?limit=500" in fk.requests


async def test_table_output_names_the_cluster(kube: tuple[FakeKube, Path]) -> None:
    fk, kc = kube
    code, out, err = await cli("--kubeconfig", str(kc))
    assert code == 1 and isinstance(out, str)
    assert f"cluster: fake ({fk.url}), namespace apps" in out
    assert "Pod/apps/sized" in out and "1->2 vCPU, 2048->2848 MiB" in out


async def test_lists_are_read_page_by_page(kube: tuple[FakeKube, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    fk, kc = kube
    monkeypatch.setattr(kube_client, "PAGE", 2)
    objs = await limits_live.fetch(str(kc), None, None, True)
    assert sorted(d.obj["metadata"]["name"] for d in objs.pods) == ["batch", "needs-limits", "ordinary", "sized"]
    assert any(r.startswith("/api/v1/pods?") and "continue=2" in r and "limit=2" in r for r in fk.requests)


async def test_forbidden_runtime_classes_degrade_with_a_note(kube: tuple[FakeKube, Path]) -> None:
    fk, kc = kube
    fk.forbidden.add("/apis/node.k8s.io/v1/runtimeclasses")
    code, out, _ = await cli("--kubeconfig", str(kc), "-A", "--format", "json")
    assert isinstance(out, dict)
    assert any("HTTP 403" in n for n in out["summary"]["notes"])
    names = {w["name"]: w for w in out["workloads"]}
    assert names["sized"]["kata"] is False  # "secure" is Kata only through its handler, now unknown
    assert names["needs-limits"]["kata"] is True


async def test_unreachable_cluster_is_one_clear_line(tmp_path: Path) -> None:
    fk = FakeKube()
    await fk.start()
    kc = fk.kubeconfig(tmp_path / "kc")
    await fk.close()  # nothing listens there any more
    code, out, err = await cli("--kubeconfig", str(kc))
    assert code == 2
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert err.startswith("kata-debug: error: ") and "cannot reach the Kubernetes API server" in err


async def test_no_kubeconfig_at_all(tmp_path: Path) -> None:
    code, _, err = await cli(
        env={"KUBECONFIG": str(tmp_path / "none"), "HOME": str(tmp_path), "KUBERNETES_SERVICE_HOST": ""}
    )
    assert code == 2 and err.strip().count("\n") == 0
    assert "not found; no cluster to read" in err


async def test_bad_context_and_bad_credentials(tmp_path: Path) -> None:
    async with FakeKube(token="s3cret").add(*cluster_objects()) as fk:
        kc = fk.kubeconfig(tmp_path / "kc")
        code, _, err = await cli("--kubeconfig", str(kc), "--context", "nope")
        assert code == 2 and err.startswith("kata-debug: error: --context nope") and err.count("\n") == 1
        bad = fk.kubeconfig(tmp_path / "bad", token="wrong")
        code, _, err = await cli("--kubeconfig", str(bad))
        assert code == 2 and "HTTP 401" in err and err.count("\n") == 1
        with pytest.raises(UsageError, match="HTTP 401"):
            await limits_live.fetch(str(bad), None, None, False)


async def test_served_objects_are_valid_for_kubectl(kube: tuple[FakeKube, Path]) -> None:
    fk, kc = kube
    proc = await asyncio.create_subprocess_exec(
        "/usr/bin/kubectl",
        "--kubeconfig",
        str(kc),
        "get",
        "pods,limitranges",
        "-A",
        "-o",
        "json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    items = json.loads(out)["items"]
    assert sorted((i["kind"], i["metadata"]["name"]) for i in items) == sorted(
        [
            ("Pod", "batch"),
            ("Pod", "needs-limits"),
            ("Pod", "ordinary"),
            ("Pod", "sized"),
            ("LimitRange", "also-requests-only"),
            ("LimitRange", "requests-only"),
        ]
    )
    proc = await asyncio.create_subprocess_exec(
        "/usr/bin/kubectl",
        "--kubeconfig",
        str(kc),
        "get",
        "runtimeclass",
        "kata-qemu",
        "-o",
        "jsonpath={.handler} {.overhead.podFixed.memory}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert (proc.returncode, out.decode()) == (0, "kata-qemu 160Mi"), err.decode()
