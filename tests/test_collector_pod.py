"""The collector pod sees the node as the DaemonSet's agent does, with less; its Role grants what a run uses."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from kata_debug.cluster.collector_pod import (
    CONTAINER,
    DEFAULT_IMAGE,
    HOST_MOUNTS,
    SELECTOR,
    active_deadline,
    collector_pod,
    pod_name,
)
from kata_debug.cluster.ephemeral import pod_state

REPO = Path(__file__).resolve().parents[1]


def load(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((REPO / "deploy" / name).read_text()) if d]


@pytest.fixture(scope="module")
def agent_spec() -> dict[str, Any]:
    (ds,) = [d for d in load("daemonset.yaml") if d["kind"] == "DaemonSet"]
    return ds["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def pod() -> dict[str, Any]:
    return collector_pod("worker-3", "kata-debug", DEFAULT_IMAGE, "a1b2c3", 780)


def host_views(spec: dict[str, Any]) -> dict[str, tuple[str, str, bool]]:
    """hostPath -> (type, mountPath, readOnly) for every node path the pod's container sees."""
    volumes = {v["name"]: v["hostPath"] for v in spec["volumes"] if "hostPath" in v}
    (container,) = spec["containers"]
    return {
        volumes[m["name"]]["path"]: (volumes[m["name"]]["type"], m["mountPath"], bool(m.get("readOnly")))
        for m in container["volumeMounts"]
        if m["name"] in volumes
    }


def test_it_mounts_exactly_the_daemonsets_node_paths_at_the_same_places_all_read_only(
    agent_spec: dict[str, Any], pod: dict[str, Any]
) -> None:
    agent, collector = host_views(agent_spec), host_views(pod["spec"])
    assert {p: v[:2] for p, v in collector.items()} == {p: v[:2] for p, v in agent.items()}
    assert all(read_only for _, _, read_only in collector.values()), "nothing on the node is writable"
    assert {p for p, v in agent.items() if not v[2]} == {"/var/lib/kata-debug/traces", "/run/vc", "/run/kata"}
    assert len(HOST_MOUNTS) == len(collector)


def test_it_has_the_agents_security_context_scratch_and_resources_but_the_default_seccomp_filter(
    agent_spec: dict[str, Any], pod: dict[str, Any]
) -> None:
    (agent,) = agent_spec["containers"]
    (collector,) = pod["spec"]["containers"]
    assert agent["securityContext"]["seccompProfile"] == {"type": "Unconfined"}, "the agent needs AF_VSOCK"
    assert collector["securityContext"] == {**agent["securityContext"], "seccompProfile": {"type": "RuntimeDefault"}}
    assert collector["resources"] == agent["resources"]
    scratch = {v["name"]: v for v in agent_spec["volumes"]}["tmp"]
    assert {v["name"]: v for v in pod["spec"]["volumes"]}["tmp"] == scratch
    assert {"name": "tmp", "mountPath": "/tmp"} in collector["volumeMounts"]
    env = {e["name"]: e for e in collector["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"


def test_the_default_image_is_the_one_the_daemonset_runs(agent_spec: dict[str, Any]) -> None:
    (agent,) = agent_spec["containers"]
    assert DEFAULT_IMAGE == agent["image"]


def test_it_is_pinned_tolerates_every_taint_never_restarts_and_ends_itself(pod: dict[str, Any]) -> None:
    spec = pod["spec"]
    assert spec["nodeName"] == "worker-3" and "affinity" not in spec and "nodeSelector" not in spec
    assert spec["tolerations"] == [{"operator": "Exists"}], "no key and no effect: every taint"
    assert spec["restartPolicy"] == "Never" and spec["activeDeadlineSeconds"] == 780
    assert spec["automountServiceAccountToken"] is False and "serviceAccountName" not in spec
    (container,) = spec["containers"]
    assert container["name"] == CONTAINER and container["command"] == ["sleep", "780"]
    labels = pod["metadata"]["labels"]
    for term in SELECTOR.split(","):
        key, value = term.split("=")
        assert labels[key] == value, "leftovers are found by this selector"
    assert labels["kata-debug/run"] == "a1b2c3" and pod["metadata"]["annotations"]["kata-debug/node"] == "worker-3"


def test_it_is_a_valid_pod_for_the_kubernetes_api_schema(pod: dict[str, Any]) -> None:
    from kubernetes.aio.client import ApiClient, models

    assert ApiClient().sanitize_for_serialization(models.V1Pod.from_dict(pod)) == pod


@pytest.mark.parametrize(
    "node", ["worker-3", "ip-10-0-1-17.eu-west-1.compute.internal", "N" * 250, "a." * 100 + "z", "-.-"]
)
def test_pod_names_are_dns_labels_unique_per_run(node: str) -> None:
    name = pod_name(node, "a1b2c3")
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", name), name
    assert name.endswith("-a1b2c3") and pod_name(node, "d4e5f6") != name


def test_two_nodes_whose_names_fit_the_same_stem_get_different_pods() -> None:
    long_a = "gke-production-cluster-default-pool-1a2b3c4d-node-aaaa"
    long_b = "gke-production-cluster-default-pool-1a2b3c4d-node-bbbb"
    for a, b in ((long_a, long_b), ("kata.a", "kata-a")):
        assert pod_name(a, "a1b2c3") != pod_name(b, "a1b2c3"), (a, b)


def test_the_deadline_covers_starting_collecting_and_deleting() -> None:
    assert active_deadline(120, 600) == 780 and active_deadline(0.5, 1.2) == 62


def _status(phase: str, state: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"status": {"phase": phase, "containerStatuses": [{"name": CONTAINER, "state": state}], **extra}}


def test_pod_states_that_never_run_are_told_apart_from_ones_still_starting() -> None:
    creating = pod_state(_status("Pending", {"waiting": {"reason": "ContainerCreating"}}))
    assert (creating.running, creating.fatal, creating.why_not) == (False, None, "ContainerCreating")
    pulling = pod_state(_status("Pending", {"waiting": {"reason": "ErrImagePull", "message": "not found"}}))
    assert pulling.fatal is None, "the kubelet retries a failed pull"
    backoff = pod_state(_status("Pending", {"waiting": {"reason": "ImagePullBackOff", "message": 'pulling "x"'}}))
    assert backoff.fatal == 'ImagePullBackOff: pulling "x"'
    ended = pod_state(
        _status(
            "Failed",
            {"terminated": {"reason": "Error", "exitCode": 137}},
            reason="DeadlineExceeded",
            message="Pod was active on the node longer than the specified deadline",
        )
    )
    assert ended.fatal == (
        "DeadlineExceeded: container Error (exit 137): Pod was active on the node longer than the specified deadline"
    )
    assert pod_state(_status("Running", {"running": {"startedAt": "2026-01-01T00:00:00Z"}})).running
    assert not pod_state({"status": {"phase": "Running"}}).running, "no container status yet"


def test_the_ephemeral_role_is_its_own_file_in_kata_debug_with_only_what_a_run_uses() -> None:
    docs = load("ephemeral-rbac.yaml")
    assert [d["kind"] for d in docs] == ["Namespace", "Role"], "no binding: bind it to whom you choose"
    (namespace, role) = docs
    (agent_ns,) = [d for d in load("daemonset.yaml") if d["kind"] == "Namespace"]
    assert namespace == agent_ns, "one namespace object, whichever file is applied first"
    assert role["metadata"]["namespace"] == "kata-debug" and role["metadata"]["name"] == "kata-debug-ephemeral"
    grants = {(res, verb) for rule in role["rules"] for res in rule["resources"] for verb in rule["verbs"]}
    assert grants == {
        ("pods", "create"),
        ("pods", "get"),
        ("pods", "list"),
        ("pods", "delete"),
        ("pods/exec", "get"),
        ("pods/exec", "create"),
    }
    assert all(rule["apiGroups"] == [""] for rule in role["rules"])
    text = (REPO / "deploy" / "ephemeral-rbac.yaml").read_text()
    assert "root on every node" in text, "the file says plainly what the grant amounts to"
    from kubernetes.aio.client import ApiClient, models

    for doc in docs:
        model = getattr(models, f"V1{doc['kind']}")
        assert ApiClient().sanitize_for_serialization(model.from_dict(doc)) == doc
