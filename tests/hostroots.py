"""Build synthetic node filesystems for layouts no runtime on this machine creates (Kata)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TASKS = "run/containerd/io.containerd.runtime.v2.task"

KATA_CONFIG = """\
[hypervisor.qemu]
path = "/opt/kata/bin/qemu-system-x86_64"
default_vcpus = 1
default_maxvcpus = 0
default_memory = 2048
enable_annotations = ["default_vcpus"]

[runtime]
static_sandbox_resource_mgmt = false
sandbox_cgroup_only = false
"""


def oci_spec(
    *,
    ctype: str,
    sandbox_id: str,
    pod: str = "web-0",
    namespace: str = "default",
    uid: str = "6f1c2c1e-0000-4000-8000-000000000001",
    quota: int | None = None,
    period: int | None = 100000,
    memory: int | None = None,
    env: list[str] | None = None,
    extra_annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    annotations = {
        "io.kubernetes.cri.container-type": ctype,
        "io.kubernetes.cri.sandbox-id": sandbox_id,
        "io.kubernetes.cri.sandbox-name": pod,
        "io.kubernetes.cri.sandbox-namespace": namespace,
        "io.kubernetes.cri.sandbox-uid": uid,
        **(extra_annotations or {}),
    }
    resources: dict[str, Any] = {}
    if quota is not None:
        resources["cpu"] = {"quota": quota, "period": period, "shares": 1024}
    if memory is not None:
        resources["memory"] = {"limit": memory}
    return {
        "ociVersion": "1.0.2",
        "process": {"args": ["/pause"], "env": env or ["PATH=/usr/bin"], "cwd": "/"},
        "root": {"path": "rootfs"},
        "annotations": annotations,
        "linux": {"resources": resources},
    }


def add_task(root: Path, ns: str, cid: str, spec: dict[str, Any] | str, runtime: str = "io.containerd.kata.v2") -> Path:
    bundle = root / TASKS / ns / cid
    bundle.mkdir(parents=True)
    (bundle / "config.json").write_text(spec if isinstance(spec, str) else json.dumps(spec))
    (bundle / "runtime").write_text(runtime)
    (bundle / "address").write_text("unix:///run/containerd/s/0123")
    return bundle


def kata_node(root: Path, sandbox_id: str = "sb0123456789") -> Path:
    """A node with one Kata pod: sandbox + one container, Go runtime state, Kata config."""
    add_task(
        root,
        "k8s.io",
        sandbox_id,
        oci_spec(
            ctype="sandbox",
            sandbox_id=sandbox_id,
            quota=50000,
            memory=800 * 2**20,
            extra_annotations={
                "io.kubernetes.cri.sandbox-cpu-quota": "50000",
                "io.kubernetes.cri.sandbox-cpu-period": "100000",
                "io.kubernetes.cri.sandbox-memory": str(800 * 2**20),
            },
        ),
    )
    add_task(
        root,
        "k8s.io",
        "ctr0123456789",
        oci_spec(
            ctype="container",
            sandbox_id=sandbox_id,
            quota=50000,
            memory=800 * 2**20,
            env=["PATH=/usr/bin", "DB_PASSWORD=hunter2"],
            extra_annotations={"io.kubernetes.cri.container-name": "app", "example.com/api-token": "tok-abc123"},
        ),
    )
    sbs = root / "run/vc/sbs" / sandbox_id
    sbs.mkdir(parents=True)
    (sbs / "persist.json").write_text(json.dumps({"SandboxContainer": sandbox_id, "HypervisorState": {"Pid": 4242}}))
    (root / "run/vc/vm" / sandbox_id).mkdir(parents=True)
    (root / "run/kata-containers/shared/sandboxes" / sandbox_id).mkdir(parents=True)
    cfg = root / "etc/kata-containers"
    cfg.mkdir(parents=True)
    (cfg / "configuration.toml").write_text(KATA_CONFIG)
    (root / "etc/hostname").write_text("kata-node-1\n")
    return root
