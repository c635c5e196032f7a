"""The short-lived collector pod: what `collect --cluster` creates on a node with no agent pod.

It is `kubectl debug node/<node>` made for one job: pinned to the node by `nodeName` (no
scheduler, no affinity to satisfy), tolerating every taint (the node to debug is often the
tainted one), the node's evidence mounted read-only under `/host` exactly where the
DaemonSet's agent sees it (so `kata-debug collect --host-root /host` reads the same files),
and the agent's security context except for seccomp: the collector needs no AF_VSOCK, so it
keeps the runtime's default filter. It only sleeps; the collection itself is exec'd into it
like into an agent pod, and `activeDeadlineSeconds` makes the kubelet end it even if the
run that made it is killed before it can delete it.

The mounts, security context and resources are defined here once. deploy/daemonset.yaml
spells the same ones out for the agent, and tests/test_collector_pod.py fails when the two
drift apart.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any

from kata_debug import __version__

#: What deploy/daemonset.yaml's agent runs (a test checks the two agree).
DEFAULT_IMAGE = f"localhost/kata-debug:{__version__}"
CONTAINER = "collector"
HOST = "/host"

#: Labels on every collector pod: how a later run finds leftovers, and how an operator does
#: (`kubectl -n kata-debug get pods -l app.kubernetes.io/name=kata-debug-collector`).
NAME_LABEL = "app.kubernetes.io/name"
NAME_VALUE = "kata-debug-collector"
MANAGED_LABEL = "app.kubernetes.io/managed-by"
RUN_LABEL = "kata-debug/run"
SELECTOR = f"{NAME_LABEL}={NAME_VALUE},{MANAGED_LABEL}=kata-debug"
NODE_ANNOTATION = "kata-debug/node"  # node names can be longer than a label value may be

#: Seconds the kubelet lets a pod run on top of what the run itself allows it.
DEADLINE_MARGIN = 60
#: A leftover pod is only deleted once it cannot belong to a run still in progress.
LEFTOVER_GRACE = 300


@dataclass(frozen=True)
class HostMount:
    """One node path, visible read-only in the pod at /host<path>."""

    name: str  # the volume's name (the DaemonSet's, for the same path)
    path: str
    type: str  # hostPath type: what the kubelet checks (or creates) on the node

    @property
    def mount_path(self) -> str:
        return HOST + self.path


#: Every node path the DaemonSet mounts, in its order. Why each one is needed, and why the
#: types are what they are, is written next to them in deploy/daemonset.yaml.
HOST_MOUNTS: tuple[HostMount, ...] = (
    HostMount("trace-spool", "/var/lib/kata-debug/traces", "DirectoryOrCreate"),
    HostMount("run-vc", "/run/vc", "DirectoryOrCreate"),
    HostMount("run-kata", "/run/kata", "DirectoryOrCreate"),
    HostMount("etc-kata-containers", "/etc/kata-containers", "DirectoryOrCreate"),
    HostMount("etc-containerd", "/etc/containerd", "DirectoryOrCreate"),
    HostMount("machine-id", "/etc/machine-id", "File"),
    HostMount("os-release", "/etc/os-release", "File"),
    HostMount("localtime", "/etc/localtime", "File"),
    HostMount("usr", "/usr", "Directory"),
    HostMount("lib", "/lib", "Directory"),
    HostMount("opt", "/opt", "Directory"),
    HostMount("var-log", "/var/log", "Directory"),
    HostMount("run-log-journal", "/run/log/journal", "DirectoryOrCreate"),
    HostMount("containerd-tasks", "/run/containerd/io.containerd.runtime.v2.task", "DirectoryOrCreate"),
    HostMount("crio-containers", "/run/containers/storage/overlay-containers", "DirectoryOrCreate"),
    HostMount("run-kata-containers", "/run/kata-containers", "DirectoryOrCreate"),
    HostMount("proc", "/proc", "Directory"),
    HostMount("sys", "/sys", "Directory"),
    HostMount("dev", "/dev", "Directory"),
)


def security_context() -> dict[str, Any]:
    """The agent's container security context, with the runtime's default seccomp filter."""
    return {
        "privileged": False,
        "allowPrivilegeEscalation": False,
        "runAsUser": 0,
        "runAsGroup": 0,
        "readOnlyRootFilesystem": True,
        # DAC_READ_SEARCH: read journal files and VMM state whose mode keeps root's group out.
        "capabilities": {"drop": ["ALL"], "add": ["DAC_READ_SEARCH"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def resources() -> dict[str, Any]:
    """The agent's limits (requests equal): a node collection costs the same in either pod."""
    amounts = {"cpu": "500m", "memory": "512Mi", "ephemeral-storage": "2Gi"}
    return {"limits": dict(amounts), "requests": dict(amounts)}


#: Writable scratch for `kata-debug collect`'s spools (the root filesystem is read-only).
TMP_SIZE = "1536Mi"

_NOT_DNS = re.compile(r"[^a-z0-9-]+")


def pod_name(node: str, run_id: str) -> str:
    """`kata-debug-<node>-<hash>-<run>`: a DNS label (63 characters at most), unique per run and node.

    The node name is cut and its dots replaced to fit, so two nodes could share a stem (long
    names with one prefix, `a.b` and `a-b`): a short hash of the whole name keeps them apart,
    or one node's clean-up would delete the other's pod mid-collection.
    """
    tail = f"-{hashlib.sha256(node.encode()).hexdigest()[:6]}-{run_id}"
    stem = _NOT_DNS.sub("-", node.lower())
    stem = stem[: 63 - len("kata-debug-") - len(tail)].strip("-") or "node"
    return f"kata-debug-{stem}{tail}"


def active_deadline(pod_timeout: float, node_timeout: float) -> int:
    """Seconds the kubelet lets the pod live: starting, collecting, and a margin to be deleted."""
    return math.ceil(pod_timeout + node_timeout) + DEADLINE_MARGIN


def collector_pod(node: str, namespace: str, image: str, run_id: str, deadline: int) -> dict[str, Any]:
    """The Pod object to create for `node` (`deadline`: its activeDeadlineSeconds)."""
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE}}]
    volumes += [{"name": m.name, "hostPath": {"path": m.path, "type": m.type}} for m in HOST_MOUNTS]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    mounts += [{"name": m.name, "mountPath": m.mount_path, "readOnly": True} for m in HOST_MOUNTS]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(node, run_id),
            "namespace": namespace,
            "labels": {
                NAME_LABEL: NAME_VALUE,
                "app.kubernetes.io/part-of": "kata-debug",
                MANAGED_LABEL: "kata-debug",
                RUN_LABEL: run_id,
            },
            "annotations": {NODE_ANNOTATION: node},
        },
        "spec": {
            "nodeName": node,
            # Every taint, NoExecute included: the node to debug is often the tainted one.
            "tolerations": [{"operator": "Exists"}],
            "restartPolicy": "Never",
            "activeDeadlineSeconds": deadline,
            "terminationGracePeriodSeconds": 0,
            # The pod never talks to the API server: no token, no service environment.
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "containers": [
                {
                    "name": CONTAINER,
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    # Idle until exec'd into; the kubelet ends it at the deadline anyway.
                    "command": ["sleep", str(deadline)],
                    "env": [
                        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
                        {"name": "TMPDIR", "value": "/tmp"},
                    ],
                    "securityContext": security_context(),
                    "resources": resources(),
                    "volumeMounts": mounts,
                }
            ],
            "volumes": volumes,
        },
    }
