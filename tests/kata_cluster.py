"""A small Kata cluster as complete Kubernetes objects, served by `ClusterFake`.

Nodes carry kata-deploy's label, a RuntimeClass names the Kata handler, a Deployment's pod
runs under it (with a secret in its env, to prove redaction), kata-deploy's DaemonSet has
logs, and every Kata node has a kata-debug agent pod whose exec runs the real
`kata-debug collect` against that node's synthetic host root; so does the exec of any pod
created on a Kata node through the API (collector pods).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fake_kube_exec import ClusterFake, ExecBehaviour, LogLine
from tests.hostroots import kata_node

AGENT_NS = "kata-debug"
AGENT_LABELS = {"app.kubernetes.io/name": "kata-debug-node-agent", "app.kubernetes.io/part-of": "kata-debug"}
SECRET = "hunter2-db-password"


def node(name: str, kata: str | None = "true", taints: list[dict[str, str]] | None = None) -> dict[str, Any]:
    labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}
    if kata is not None:
        labels["katacontainers.io/kata-runtime"] = kata
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
        "spec": {"podCIDR": "10.244.1.0/24", "taints": taints or []},
        "status": {
            "capacity": {"cpu": "8", "memory": "32827812Ki", "pods": "110", "hugepages-2Mi": "0"},
            "allocatable": {"cpu": "7800m", "memory": "31676836Ki", "pods": "110", "hugepages-2Mi": "0"},
            "conditions": [
                {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory"},
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "kubelet is posting ready status",
                },
            ],
            "addresses": [{"type": "InternalIP", "address": "192.0.2.10"}, {"type": "Hostname", "address": name}],
            "nodeInfo": {
                "machineID": "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
                "systemUUID": "4c4c4544-0000-1000-8000-000000000000",
                "bootID": "b0b0b0b0-0000-4000-8000-000000000000",
                "kernelVersion": "6.8.0-51-generic",
                "osImage": "Ubuntu 24.04.1 LTS",
                "containerRuntimeVersion": "containerd://1.7.24",
                "kubeletVersion": "v1.32.4",
                "kubeProxyVersion": "v1.32.4",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        },
    }


def runtime_class(name: str, handler: str, overhead: dict[str, str] | None = None) -> dict[str, Any]:
    rc: dict[str, Any] = {
        "apiVersion": "node.k8s.io/v1",
        "kind": "RuntimeClass",
        "metadata": {"name": name},
        "handler": handler,
    }
    if overhead:
        rc["overhead"] = {"podFixed": overhead}
    if handler.startswith("kata"):
        rc["scheduling"] = {"nodeSelector": {"katacontainers.io/kata-runtime": "true"}}
    return rc


def container(
    name: str,
    image: str,
    limits: dict[str, str] | None = None,
    requests: dict[str, str] | None = None,
    env: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    c: dict[str, Any] = {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "resources": {},
    }
    if limits:
        c["resources"]["limits"] = limits
    if requests:
        c["resources"]["requests"] = requests
    if env:
        c["env"] = env
    return c


def pod(
    namespace: str,
    name: str,
    node_name: str,
    containers: list[dict[str, Any]],
    *,
    runtime_class_name: str | None = None,
    labels: dict[str, str] | None = None,
    owner: dict[str, Any] | None = None,
    phase: str = "Running",
    uid: str | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels or {}}
    if uid:
        meta["uid"] = uid
    if owner:
        meta["ownerReferences"] = [{**owner, "controller": True, "blockOwnerDeletion": True}]
    if annotations:
        meta["annotations"] = annotations
    spec: dict[str, Any] = {
        "containers": containers,
        "nodeName": node_name,
        "restartPolicy": "Always",
        "dnsPolicy": "ClusterFirst",
        "schedulerName": "default-scheduler",
        "serviceAccountName": "default",
        "terminationGracePeriodSeconds": 30,
    }
    if runtime_class_name:
        spec["runtimeClassName"] = runtime_class_name
    ready = "True" if phase == "Running" else "False"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": spec,
        "status": {
            "phase": phase,
            "hostIP": "192.0.2.10",
            "podIP": "10.244.1.7",
            "qosClass": "Burstable",
            "startTime": "2026-01-01T00:00:00Z",
            "conditions": [{"type": "Ready", "status": ready}, {"type": "ContainersReady", "status": ready}],
            "containerStatuses": [
                {
                    "name": c["name"],
                    "image": c["image"],
                    "imageID": "",
                    "ready": ready == "True",
                    "restartCount": 0,
                    "started": phase == "Running",
                    "state": {"running": {"startedAt": "2026-01-01T00:00:01Z"}},
                }
                for c in containers
            ],
        },
    }


def agent_pod(node_name: str, phase: str = "Running") -> dict[str, Any]:
    env = [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "spec.nodeName"}}}]
    c = container(
        "agent",
        "ghcr.io/kata-debug/kata-debug:0.1.0",
        limits={"cpu": "500m", "memory": "512Mi"},
        requests={"cpu": "500m", "memory": "512Mi"},
        env=env,
    )
    owner = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "name": "kata-debug-node-agent",
        "uid": "00000000-0000-4000-8000-0000000000da",
    }
    return pod(
        AGENT_NS,
        f"kata-debug-node-agent-{node_name}",
        node_name,
        [c],
        labels=dict(AGENT_LABELS),
        owner=owner,
        phase=phase,
    )


@dataclass
class KataCluster:
    fake: ClusterFake
    roots: dict[str, Path] = field(default_factory=dict)  # node -> synthetic host root

    def agent(self, node_name: str) -> str:
        return f"kata-debug-node-agent-{node_name}"


def build(
    fake: ClusterFake, tmp: Path, kata_nodes: list[str], other_nodes: tuple[str, ...] = ("plain-1",)
) -> KataCluster:
    """The standard cluster: Kata nodes with agents, one non-Kata node, one Kata Deployment."""
    cluster = KataCluster(fake)
    for n in kata_nodes:
        fake.add(node(n))
        root = tmp / "hosts" / n
        root.mkdir(parents=True)
        kata_node(root, sandbox_id=f"sb-{n}")
        cluster.roots[n] = root
        fake.add(agent_pod(n))
        fake.behave(cluster.agent(n), ExecBehaviour("run", host_root=root))
        fake.behave_node(n, ExecBehaviour("run", host_root=root))  # collector pods made there
    for n in other_nodes:
        fake.add(node(n, kata=None))
    fake.add(
        runtime_class("kata-qemu", "kata-qemu", {"cpu": "250m", "memory": "160Mi"}),
        runtime_class("runc", "runc"),
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": AGENT_NS,
                "labels": {
                    "pod-security.kubernetes.io/enforce": "privileged",
                    "app.kubernetes.io/part-of": "kata-debug",
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "LimitRange",
            "metadata": {"name": "defaults", "namespace": "shop"},
            "spec": {
                "limits": [
                    {
                        "type": "Container",
                        "default": {"cpu": "1", "memory": "1Gi"},
                        "defaultRequest": {"cpu": "100m", "memory": "256Mi"},
                    }
                ]
            },
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop", "uid": "00000000-0000-4000-8000-00000000d001"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "runtimeClassName": "kata-qemu",
                        "containers": [container("app", "nginx:1.27", limits={"cpu": "2", "memory": "1Gi"})],
                    },
                },
            },
            "status": {"replicas": 1, "readyReplicas": 1},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": "web-7d9f8",
                "namespace": "shop",
                "uid": "00000000-0000-4000-8000-00000000a5e7",
                "ownerReferences": [
                    {
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "name": "web",
                        "uid": "00000000-0000-4000-8000-00000000d001",
                        "controller": True,
                    }
                ],
            },
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": []}},
            },
            "status": {"replicas": 1},
        },
    )
    web_uid = "00000000-0000-4000-8000-00000000beef"
    fake.add(
        pod(
            "shop",
            "web-7d9f8-x2x4q",
            kata_nodes[0] if kata_nodes else "plain-1",
            [
                container(
                    "app",
                    "nginx:1.27",
                    limits={"cpu": "2", "memory": "1Gi"},
                    requests={"cpu": "100m", "memory": "256Mi"},
                    env=[{"name": "DB_PASSWORD", "value": SECRET}],
                )
            ],
            runtime_class_name="kata-qemu",
            labels={"app": "web"},
            uid=web_uid,
            owner={
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": "web-7d9f8",
                "uid": "00000000-0000-4000-8000-00000000a5e7",
            },
        )
    )
    fake.add(pod("shop", "db-0", "plain-1" if other_nodes else kata_nodes[0], [container("db", "postgres:16")]))
    fake.add(
        {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": "web-7d9f8-x2x4q.1", "namespace": "shop"},
            "involvedObject": {"kind": "Pod", "namespace": "shop", "name": "web-7d9f8-x2x4q", "uid": web_uid},
            "reason": "FailedCreatePodSandBox",
            "type": "Warning",
            "count": 3,
            "message": "Failed to create pod sandbox: rpc error: QEMU: failed to allocate memory",
            "source": {"component": "kubelet", "host": kata_nodes[0] if kata_nodes else ""},
            "firstTimestamp": "2026-01-01T00:00:02Z",
            "lastTimestamp": "2026-01-01T00:01:02Z",
        },
        {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": "db-0.1", "namespace": "shop"},
            "involvedObject": {"kind": "Pod", "namespace": "shop", "name": "db-0", "uid": "not-a-kata-pod"},
            "reason": "Pulled",
            "type": "Normal",
            "message": "Container image already present",
            "firstTimestamp": "2026-01-01T00:00:02Z",
            "lastTimestamp": "2026-01-01T00:00:02Z",
        },
    )
    fake.add(
        {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {"name": "kata-deploy", "namespace": "kube-system", "labels": {"name": "kata-deploy"}},
            "spec": {
                "selector": {"matchLabels": {"name": "kata-deploy"}},
                "template": {
                    "metadata": {"labels": {"name": "kata-deploy"}},
                    "spec": {"containers": [container("kube-kata", "quay.io/kata-containers/kata-deploy:3.13.0")]},
                },
            },
            "status": {
                "currentNumberScheduled": len(kata_nodes),
                "desiredNumberScheduled": len(kata_nodes),
                "numberReady": len(kata_nodes),
                "numberMisscheduled": 0,
            },
        }
    )
    if kata_nodes:
        fake.add(
            pod(
                "kube-system",
                f"kata-deploy-{kata_nodes[0]}",
                kata_nodes[0],
                [container("kube-kata", "quay.io/kata-containers/kata-deploy:3.13.0")],
                labels={"name": "kata-deploy"},
            )
        )
        now = time.time()
        fake.logs[("kube-system", f"kata-deploy-{kata_nodes[0]}", "kube-kata", False)] = [
            LogLine(now - 30, "Installing Kata Containers artifacts"),
            LogLine(now - 20, "Add Kata Containers as a supported runtime for containerd"),
            LogLine(now - 10, "node/" + kata_nodes[0] + " labeled katacontainers.io/kata-runtime=true"),
            LogLine(now - 5, "using registry token=ghp_leakyTokenValue123"),
        ]
    return cluster
