"""The `resource-limits` collector on a synthetic node: computed VM size vs what the VM got."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kata_debug.collect.runner import CollectOptions, run_collection
from kata_debug.collectors.resource_limits import Observed, compare, parse_mem, parse_smp
from kata_debug.node.oci import Resources
from kata_debug.sizing.model import ContainerInput, SandboxInput, SizingConfig, size_vm
from tests.bundles import read_bundle
from tests.hostroots import add_task, oci_spec

MIB = 2**20
GO_CONFIG = """\
[hypervisor.qemu]
path = "/opt/kata/bin/qemu-system-x86_64"
default_vcpus = 1
default_maxvcpus = 0
default_memory = 2048
enable_annotations = ["enable_iommu"]

[runtime]
static_sandbox_resource_mgmt = false
"""
FC_CONFIG = """\
[hypervisor.firecracker]
path = "/opt/kata/bin/firecracker"
default_vcpus = 1
default_memory = 2048
enable_annotations = []

[runtime]
static_sandbox_resource_mgmt = true
"""
CONTAINERD = """\
version = 2
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata-fc]
  runtime_type = "io.containerd.kata-fc.v2"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata-fc.options]
  ConfigPath = "/opt/kata/share/defaults/kata-containers/configuration-fc.toml"
"""


def sandbox_pod(root: Path, sid: str, pod: str, handler: str, quota: int, memory: int) -> None:
    sizing = {
        "io.kubernetes.cri.sandbox-cpu-quota": str(quota),
        "io.kubernetes.cri.sandbox-cpu-period": "100000",
        "io.kubernetes.cri.sandbox-memory": str(memory),
        "io.kubernetes.cri.runtime-handler": handler,
    }
    add_task(root, "k8s.io", sid, oci_spec(ctype="sandbox", sandbox_id=sid, pod=pod, extra_annotations=sizing))
    add_task(
        root,
        "k8s.io",
        f"{sid}-app",
        oci_spec(
            ctype="container",
            sandbox_id=sid,
            pod=pod,
            quota=quota,
            memory=memory,
            extra_annotations={"io.kubernetes.cri.container-name": "app"},
        ),
    )


def write(root: Path, rel: str, content: str | bytes) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(content if isinstance(content, bytes) else content.encode())


def persist(vcpus: float, memory: int, plugged_vcpus: int = 0, plugged_mem: int = 0) -> str:
    return json.dumps(
        {
            "Config": {"HypervisorConfig": {"NumVCPUsF": vcpus, "MemorySize": memory, "DefaultMaxVCPUs": 4}},
            "HypervisorState": {
                "Pid": 4242,
                "Type": "qemu",
                "HotpluggedVCPUs": [{"ID": f"cpu-{i}"} for i in range(plugged_vcpus)],
                "HotpluggedMemory": plugged_mem,
            },
            "GuestMemoryBlockSizeMB": 128,
        }
    )


def node(root: Path) -> Path:
    """Two Kata pods (one sized as computed, one not) and a runc pod."""
    write(root, "etc/kata-containers/configuration.toml", GO_CONFIG)
    write(root, "opt/kata/share/defaults/kata-containers/configuration-fc.toml", FC_CONFIG)
    write(root, "etc/containerd/config.toml", CONTAINERD)
    write(root, "sys/devices/system/cpu/online", "0-3\n")
    write(root, "etc/hostname", "kata-node-1\n")
    # web-0: Go/qemu, dynamic: boots 1 vCPU / 2048 MiB, hot-plugs 0.5 vCPU / 800 MiB.
    sandbox_pod(root, "sbweb", "web-0", "kata-qemu", 50000, 800 * MIB)
    write(
        root,
        "proc/4242/cmdline",
        b"\0".join(
            [
                b"/opt/kata/bin/qemu-system-x86_64",
                b"-name",
                b"sandbox-sbweb",
                b"-smp",
                b"1,cores=1,threads=1,sockets=4,maxcpus=4",
                b"-m",
                b"2048M,slots=10,maxmem=12799M",
                b"",
            ]
        ),
    )
    write(root, "proc/99/cmdline", b"/usr/bin/containerd\0")
    # 896 MiB were hot-plugged for 800: whole 128 MiB guest memory blocks.
    write(root, "run/vc/sbs/sbweb/persist.json", persist(1, 2048, plugged_vcpus=1, plugged_mem=896))
    # db-0: firecracker with a static configuration, but the VM got only the defaults.
    sandbox_pod(root, "sbdb", "db-0", "kata-fc", 150000, 1024 * MIB)
    write(root, "run/vc/sbs/sbdb/persist.json", persist(1, 2048))
    add_task(root, "k8s.io", "runc1", oci_spec(ctype="sandbox", sandbox_id="runc1"), runtime="io.containerd.runc.v2")
    return root


async def test_node_sandboxes_computed_and_observed(tmp_path: Path) -> None:
    root = node(tmp_path / "host")
    result = await run_collection(
        CollectOptions(host_root=root, output=str(tmp_path / "b.tgz"), collectors=["resource-limits"])
    )
    assert result.exit_code == 0, result.collectors
    bundle = read_bundle(tmp_path / "b.tgz")
    doc = bundle.json("resource-limits/sizing.json")
    assert (doc["host_cpus"], doc["count"], doc["mismatches"]) == (4, 2, 1)
    assert doc["node_config"] == "/etc/kata-containers/configuration.toml"
    by_id = {s["sandbox_id"]: s for s in doc["sandboxes"]}
    assert set(by_id) == {"sbweb", "sbdb"}  # the runc pod is not Kata

    web = by_id["sbweb"]
    assert web["pod"] == {"namespace": "default", "name": "web-0", "uid": "6f1c2c1e-0000-4000-8000-000000000001"}
    assert web["containers"][0]["cpu_quota"] == 50000 and web["containers"][0]["memory_limit"] == 800 * MIB
    c = web["computed"]
    assert (c["mode"], c["boot_vcpus"], c["boot_memory_mib"], c["vcpus"], c["memory_mib"]) == (
        "dynamic",
        1,
        2048,
        2,
        2848,
    )
    assert c["max_vcpus"] == 4  # default_maxvcpus 0 = the node's 4 CPUs
    o = web["observed"]
    assert o["sources"] == ["/proc/4242/cmdline", "/run/vc/sbs/sbweb/persist.json"]
    assert (o["boot_vcpus"], o["max_vcpus"], o["boot_memory_mib"]) == (1, 4, 2048)
    assert (o["current_vcpus"], o["current_memory_mib"]) == (2, 2944)
    assert web["findings"] == []
    assert web["config"].startswith("/etc/kata-containers/configuration.toml (Go runtime")

    db = by_id["sbdb"]
    assert db["runtime_handler"] == "kata-fc"
    assert db["config"].startswith("/opt/kata/share/defaults/kata-containers/configuration-fc.toml")
    assert (db["computed"]["mode"], db["computed"]["boot_vcpus"], db["computed"]["boot_memory_mib"]) == (
        "static",
        3,
        3072,
    )
    assert {(f["rule"], f["resource"]) for f in db["findings"]} == {
        ("vm-size-mismatch", "cpu"),
        ("vm-size-mismatch", "memory"),
    }
    assert all(f["severity"] == "warning" for f in db["findings"])

    text = bundle.members["resource-limits/sizing.txt"].decode()
    assert "sbweb  default/web-0  (go / dynamic)" in text
    assert "computed: boot 3 vCPU / 3072 MiB" in text and "vm-size-mismatch" in text


async def test_node_without_kata_config_or_sandboxes(tmp_path: Path) -> None:
    root = tmp_path / "host"
    write(root, "etc/hostname", "bare\n")
    result = await run_collection(
        CollectOptions(host_root=root, output=str(tmp_path / "b.tgz"), collectors=["resource-limits"])
    )
    assert result.exit_code == 0
    doc = read_bundle(tmp_path / "b.tgz").json("resource-limits/sizing.json")
    assert doc["count"] == 0 and doc["missing"] == ["no Kata sandboxes on this node"]
    assert "kata-deploy defaults" in doc["node_config"]


async def test_unparseable_state_is_an_item_failure_not_a_crash(tmp_path: Path) -> None:
    root = node(tmp_path / "host")
    write(root, "run/vc/sbs/sbweb/persist.json", "{not json")
    result = await run_collection(
        CollectOptions(host_root=root, output=str(tmp_path / "b.tgz"), collectors=["resource-limits"])
    )
    rl = next(c for c in result.collectors if c.name == "resource-limits")
    assert rl.status == "partial"
    assert rl.items_failed[0].item == "/run/vc/sbs/sbweb/persist.json"
    web = next(
        s
        for s in read_bundle(tmp_path / "b.tgz").json("resource-limits/sizing.json")["sandboxes"]
        if s["sandbox_id"] == "sbweb"
    )
    assert web["observed"]["sources"] == ["/proc/4242/cmdline"]  # the command line still counts


def test_qemu_argument_parsing() -> None:
    assert parse_smp("1,cores=1,threads=1,sockets=4,maxcpus=4") == (1, 4)
    assert parse_smp("cpus=2,maxcpus=8") == (2, 8)
    assert parse_smp("4") == (4, None)
    assert parse_mem("2048M,slots=10,maxmem=12799M") == 2048
    assert parse_mem("size=2G,slots=2") == 2048
    assert parse_mem("4096") == 4096
    assert parse_mem("lots") is None


def _vm(**kw: Any):  # noqa: ANN202
    return size_vm(
        SandboxInput([], sandbox_annotations={"io.kubernetes.cri.sandbox-memory": str(800 * MIB)}), SizingConfig(**kw)
    )


def test_comparison_allows_memory_block_rounding_only_in_dynamic_mode() -> None:
    static = _vm(static_sandbox_resource_mgmt=True)  # 2848 MiB at boot
    assert compare(static, Observed(sources=["x"], boot_memory_mib=2848, current_memory_mib=2848)) == []
    assert compare(static, Observed(sources=["x"], current_memory_mib=2900))[0]["rule"] == "vm-size-mismatch"

    dynamic = size_vm(SandboxInput([ContainerInput("app", Resources(memory_limit=800 * MIB))]), SizingConfig())
    assert dynamic.memory_mib == 2848
    assert compare(dynamic, Observed(sources=["x"], current_memory_mib=2944)) == []  # 896 MiB = 7 blocks
    assert compare(dynamic, Observed(sources=["x"], current_memory_mib=2976))[0]["resource"] == "memory"
