"""`collect --cluster` through collector pods made on demand, against a loopback API server.

The server creates pods like a real one (validation, namespace must exist, 409 on a name
taken) and runs them like a kubelet: Pending (ContainerCreating), then Running, or, for an
image that cannot be pulled, ErrImagePull then ImagePullBackOff forever. Exec into a created
pod runs the real `kata-debug collect` against its node's synthetic host root.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from kata_debug.cluster.collector_pod import DEFAULT_IMAGE
from kata_debug.cluster.run import run_cluster_collection
from kata_debug.errors import UsageError
from tests.bundles import read_bundle
from tests.fake_kube_exec import ClusterFake, ExecBehaviour
from tests.kata_cluster import AGENT_NS, build, pod
from tests.test_cluster_collect import FAST, cli, entries, node_bundle, options

REPO = Path(__file__).resolve().parents[1]
COLLECTOR = ("app.kubernetes.io/name", "kata-debug-collector")


@pytest.fixture
async def fake() -> Any:
    async with ClusterFake() as server:
        yield server


def collector_pods(fake: ClusterFake, namespace: str = AGENT_NS) -> list[str]:
    return sorted(p["metadata"]["name"] for p in fake.pods_labelled(namespace, *COLLECTOR))


async def test_every_node_is_collected_through_a_pod_made_for_it_and_deleted_after(
    fake: ClusterFake, tmp_path: Path
) -> None:
    cluster = build(fake, tmp_path, ["kata-a", "kata-b"])
    fake.add(
        {
            **fake.find("/api/v1/nodes/kata-b"),
            "spec": {"taints": [{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]},
        }
    )
    result = await run_cluster_collection(options(fake, tmp_path, ephemeral=True, node_timeout=90))
    assert result.exit_code == 0, result.nodes
    bundle = read_bundle(tmp_path / "cluster.tar.gz")
    nodes = entries(bundle)
    run_id = bundle.manifest["collector_pods"]["run_id"]
    for name in ("kata-a", "kata-b"):
        n = nodes[name]
        node_hash = hashlib.sha256(name.encode()).hexdigest()[:6]
        assert (n["status"], n["via"], n["pod"]) == ("ok", "ephemeral", f"kata-debug-{name}-{node_hash}-{run_id}")
        inner = node_bundle(bundle, n["member"])
        assert inner.manifest["node"] == name and inner.manifest["host_root"] == str(cluster.roots[name])
    # What was created: one pod per node, pinned there, in the agent namespace.
    assert sorted(p["spec"]["nodeName"] for p in fake.created) == ["kata-a", "kata-b"]
    for created in fake.created:
        assert created["metadata"]["namespace"] == AGENT_NS
        assert created["spec"]["containers"][0]["image"] == bundle.manifest["collector_pods"]["image"]
        assert created["spec"]["tolerations"] == [{"operator": "Exists"}], "kata-b's NoExecute taint included"
    # Exec went to the collector pods only, never to the agents, and each pod was deleted after.
    assert sorted(s["pod"] for s in fake.exec.sessions) == sorted(n["pod"] for n in nodes.values())
    assert {s["container"] for s in fake.exec.sessions} == {"collector"}
    assert sorted(fake.deleted) == sorted(f"{AGENT_NS}/{n['pod']}" for n in nodes.values())
    assert collector_pods(fake) == []
    for n in nodes.values():
        order = [w for w in fake.writes if n["pod"] in w or w == f"POST /api/v1/namespaces/{AGENT_NS}/pods"]
        assert order[-1] == f"DELETE /api/v1/namespaces/{AGENT_NS}/pods/{n['pod']}?gracePeriodSeconds=0"
    assert bundle.manifest["collector_pods"] == {
        "namespace": AGENT_NS,
        "image": DEFAULT_IMAGE,
        "run_id": run_id,
        "leftovers_deleted": [],
        "leftovers_error": None,
    }


async def test_a_pod_whose_image_cannot_be_pulled_fails_its_node_with_the_kubelets_reason(
    fake: ClusterFake, tmp_path: Path
) -> None:
    build(fake, tmp_path, ["kata-a", "kata-b"])
    del fake.objects[f"/api/v1/namespaces/{AGENT_NS}/pods/kata-debug-node-agent-kata-b"]
    fake.unpullable.add("registry.invalid/kata-debug:nope")
    started = time.monotonic()
    result = await run_cluster_collection(options(fake, tmp_path, image="registry.invalid/kata-debug:nope"))
    assert time.monotonic() - started < 30, "ImagePullBackOff ends the wait, not --pod-timeout"
    n = {r.name: r for r in result.nodes}
    assert (n["kata-a"].status, n["kata-a"].via) == ("ok", "agent"), "a node with an agent pod is unaffected"
    b = n["kata-b"]
    assert (b.status, b.via, b.bytes, b.member) == ("failed", "ephemeral", 0, None)
    assert b.error is not None and b.error.startswith("no kata-debug agent pod on this node"), b.error
    assert (
        f"collector pod {b.pod} cannot run: ImagePullBackOff: "
        'Back-off pulling image "registry.invalid/kata-debug:nope"' in b.error
    )
    assert result.exit_code == 3 and collector_pods(fake) == [], "the pod that never ran is deleted too"
    assert f"{AGENT_NS}/{b.pod}" in fake.deleted


async def test_a_pod_that_is_not_running_within_pod_timeout_fails_its_node_and_is_deleted(
    fake: ClusterFake, tmp_path: Path
) -> None:
    build(fake, tmp_path, ["kata-a"])
    fake.start_delay = 30
    started = time.monotonic()
    result = await run_cluster_collection(options(fake, tmp_path, ephemeral=True, pod_timeout=1.5))
    (node,) = result.nodes
    assert node.status == "failed" and node.error == (
        f"collector pod {node.pod} not running within --pod-timeout 1.5s (ContainerCreating)"
    )
    assert 1.5 <= node.duration_s and time.monotonic() - started < 20
    assert collector_pods(fake) == []


async def test_pods_that_cannot_be_created_say_which_grant_or_namespace_is_missing(
    fake: ClusterFake, tmp_path: Path
) -> None:
    build(fake, tmp_path, ["kata-a"])
    fake.forbidden_writes.add(f"/api/v1/namespaces/{AGENT_NS}/pods")
    (node,) = (await run_cluster_collection(options(fake, tmp_path, ephemeral=True))).nodes
    assert node.status == "failed" and node.error is not None
    assert node.error.startswith(f"cannot create pods in namespace {AGENT_NS} (HTTP 403: pods is forbidden: ")
    assert node.error.endswith("bind the Role kata-debug-ephemeral (deploy/ephemeral-rbac.yaml)")
    (node,) = (await run_cluster_collection(options(fake, tmp_path, agent_namespace="elsewhere"))).nodes
    assert node.error is not None and node.error.startswith("no kata-debug agent pod on this node (label")
    assert "namespace elsewhere not found (HTTP 404" in node.error
    assert not fake.created


async def test_agent_namespace_is_where_agent_pods_are_found_and_collector_pods_made(
    fake: ClusterFake, tmp_path: Path
) -> None:
    build(fake, tmp_path, ["kata-a", "kata-b"])
    fake.add({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "debug-tools"}})
    moved = fake.objects.pop(f"/api/v1/namespaces/{AGENT_NS}/pods/kata-debug-node-agent-kata-a")
    fake.add({**moved, "metadata": {**moved["metadata"], "namespace": "debug-tools"}})
    result = await run_cluster_collection(options(fake, tmp_path, agent_namespace="debug-tools"))
    n = {r.name: r for r in result.nodes}
    assert (n["kata-a"].status, n["kata-a"].via) == ("ok", "agent")
    assert (n["kata-b"].status, n["kata-b"].via) == ("ok", "ephemeral"), "its agent is in another namespace"
    assert {s["namespace"] for s in fake.exec.sessions} == {"debug-tools"}
    assert [p["metadata"]["namespace"] for p in fake.created] == ["debug-tools"]
    assert collector_pods(fake, "debug-tools") == []


def leftover(name: str, node: str, run: str, phase: str, age: timedelta, deadline: int = 780) -> dict[str, Any]:
    old = pod(AGENT_NS, name, node, [{"name": "collector", "image": "x"}], phase=phase)
    old["metadata"]["labels"] = {
        "app.kubernetes.io/name": "kata-debug-collector",
        "app.kubernetes.io/managed-by": "kata-debug",
        "kata-debug/run": run,
    }
    old["metadata"]["creationTimestamp"] = (datetime.now(UTC) - age).strftime("%Y-%m-%dT%H:%M:%SZ")
    old["spec"]["activeDeadlineSeconds"] = deadline
    return old


async def test_leftovers_of_earlier_runs_are_deleted_by_label_but_not_a_concurrent_runs_pods(
    fake: ClusterFake, tmp_path: Path
) -> None:
    build(fake, tmp_path, ["kata-a"])
    fake.add(
        leftover("kata-debug-kata-a-old001", "kata-a", "old001", "Failed", timedelta(hours=2)),
        leftover("kata-debug-kata-a-lost02", "kata-a", "lost02", "Running", timedelta(minutes=30)),
        leftover("kata-debug-kata-a-live03", "kata-a", "live03", "Running", timedelta(minutes=2)),
        # The DaemonSet's agent pods are never touched: not our label.
    )
    result = await run_cluster_collection(options(fake, tmp_path, ephemeral=True))
    assert [n.status for n in result.nodes] == ["ok"]
    scope = read_bundle(tmp_path / "cluster.tar.gz").manifest["collector_pods"]
    assert scope["leftovers_deleted"] == ["kata-debug-kata-a-lost02", "kata-debug-kata-a-old001"]
    assert collector_pods(fake) == ["kata-debug-kata-a-live03"], "within its deadline: maybe another run's"
    assert fake.pod(AGENT_NS, "kata-debug-node-agent-kata-a") is not None
    assert any(w.startswith(f"DELETE /api/v1/namespaces/{AGENT_NS}/pods/kata-debug-kata-a-old001") for w in fake.writes)
    first_create = fake.writes.index(f"POST /api/v1/namespaces/{AGENT_NS}/pods")
    assert all(fake.writes.index(w) < first_create for w in fake.writes if "old001" in w or "lost02" in w), (
        "cleaned before this run creates its own"
    )


async def test_ctrl_c_deletes_the_collector_pods_and_still_writes_the_bundle(fake: ClusterFake, tmp_path: Path) -> None:
    build(fake, tmp_path, ["kata-a", "kata-b"])
    for n in ("kata-a", "kata-b"):
        fake.behave_node(n, ExecBehaviour("hang"))  # collections in flight when Ctrl-C comes
    out = tmp_path / "c.tar.gz"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kata_debug",
        "collect",
        "--cluster",
        "--ephemeral",
        "--kubeconfig",
        str(fake.kubeconfig(tmp_path / "kc")),
        "--output",
        str(out),
        "--format",
        "json",
        *FAST,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(60):
            while len(fake.exec.sessions) < 2:
                await asyncio.sleep(0.05)
        assert len(collector_pods(fake)) == 2
        proc.send_signal(signal.SIGINT)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 3, stderr.decode()
    assert collector_pods(fake) == [], "every collector pod deleted"
    assert len(fake.deleted) == 2
    summary = json.loads(stdout)
    assert summary["interrupted"] == "interrupted by SIGINT"
    manifest = read_bundle(out).manifest
    assert manifest["interrupted"] == "interrupted by SIGINT"
    assert {(n["name"], n["via"], n["status"]) for n in manifest["nodes"]} == {
        ("kata-a", "ephemeral", "failed"),
        ("kata-b", "ephemeral", "failed"),
    }


async def test_the_ephemeral_role_grants_every_request_a_run_makes_in_its_namespace(
    fake: ClusterFake, tmp_path: Path
) -> None:
    build(fake, tmp_path, ["kata-a"])
    fake.add(leftover("kata-debug-kata-a-old001", "kata-a", "old001", "Failed", timedelta(hours=2)))
    fake.only_namespace(AGENT_NS)
    result = await run_cluster_collection(options(fake, tmp_path, ephemeral=True))
    assert [(n.status, n.via) for n in result.nodes] == [("ok", "ephemeral")]
    docs = list(yaml.safe_load_all((REPO / "deploy" / "ephemeral-rbac.yaml").read_text()))
    (role,) = [d for d in docs if d["kind"] == "Role"]
    granted = {(res, verb) for rule in role["rules"] for res in rule["resources"] for verb in rule["verbs"]}
    inside = f"/api/v1/namespaces/{AGENT_NS}/pods"
    used = {("pods/exec", "create")} if fake.exec.sessions else set()
    for line in fake.writes:
        verb, path = line.split(" ", 1)
        used.add(("pods", "create" if verb == "POST" else "delete"))
        assert path.startswith(inside)
    for path in fake.requests:
        if path.startswith(inside):
            used.add(("pods", "list" if path.split("?")[0] == inside else "get"))
    assert used == {("pods", "create"), ("pods", "get"), ("pods", "list"), ("pods", "delete"), ("pods/exec", "create")}
    assert used <= granted


async def test_collector_pod_options_are_checked_and_refused_without_cluster(tmp_path: Path) -> None:
    for kw, message in [
        ({"pod_timeout": 0.0}, "--pod-timeout 0: must be a positive number of seconds"),
        ({"agent_namespace": "Kata_Debug"}, "--agent-namespace 'Kata_Debug': not a namespace name"),
        ({"image": "two words"}, "--image 'two words': not an image reference"),
    ]:
        from kata_debug.cluster.options import ClusterOptions

        with pytest.raises(UsageError) as info:
            await run_cluster_collection(ClusterOptions(**kw))
        assert str(info.value).startswith(message)
    for flag in (["--ephemeral"], ["--image", "x"], ["--agent-namespace", "x"], ["--pod-timeout", "5"]):
        code, _, err = await cli("collect", *flag, cwd=tmp_path)
        assert code == 2 and err.decode() == f"kata-debug: error: {flag[0]}: only valid with --cluster\n"
    code, _, err = await cli("collect", "--cluster", "--pod-timeout", "-1", cwd=tmp_path)
    assert code == 2 and err.decode() == "kata-debug: error: --pod-timeout -1: must be a positive number of seconds\n"
