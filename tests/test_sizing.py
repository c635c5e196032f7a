"""The VM Kata sizes for a sandbox: Go runtime (both modes) and runtime-rs 4.x, step by step."""

from __future__ import annotations

from typing import Any

import pytest

from kata_debug.node.oci import Resources
from kata_debug.sizing.model import (
    GO,
    RS,
    ContainerInput,
    SandboxInput,
    SizingConfig,
    annotation_enabled,
    rs_memory_mib,
    size_vm,
)
from kata_debug.sizing.workloads import read_workload, sandbox_input

MIB = 2**20
GO_DYNAMIC = SizingConfig()
GO_STATIC = SizingConfig(static_sandbox_resource_mgmt=True)
RS_STATIC = SizingConfig(
    runtime=RS,
    static_sandbox_resource_mgmt=True,
    overhead_vcpus=0.2,
    overhead_memory=32,
    source="runtime-rs qemu defaults",
)


def pod(
    *containers: dict[str, Any], init: list[dict[str, Any]] | None = None, annotations: dict[str, str] | None = None
) -> SandboxInput:
    """The shim's input for a pod with these containers (through the kubelet translation)."""
    obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "annotations": annotations or {}},
        "spec": {"runtimeClassName": "kata", "containers": list(containers), "initContainers": init or []},
    }
    w = read_workload(obj)
    assert w is not None
    return sandbox_input(w)


def ctr(
    name: str = "c", *, limits: dict[str, Any] | None = None, requests: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    res: dict[str, Any] = {}
    if limits:
        res["limits"] = limits
    if requests:
        res["requests"] = requests
    return {"name": name, "image": "busybox", "resources": res, **extra}


# ---- the issue's reference numbers (Go defaults: 1 vCPU, 2048 MiB) -------------------------


@pytest.mark.parametrize("cfg", [GO_DYNAMIC, GO_STATIC], ids=["dynamic", "static"])
def test_limits_500m_800Mi_give_2_vcpus_and_2848_mib(cfg: SizingConfig) -> None:
    vm = size_vm(pod(ctr(limits={"cpu": "500m", "memory": "800Mi"})), cfg)
    assert (vm.vcpus, vm.memory_mib) == (2, 2848)


@pytest.mark.parametrize("cfg", [GO_DYNAMIC, GO_STATIC], ids=["dynamic", "static"])
def test_requests_alone_leave_the_defaults(cfg: SizingConfig) -> None:
    vm = size_vm(pod(ctr(requests={"cpu": "2", "memory": "4Gi"})), cfg)
    assert (vm.vcpus, vm.memory_mib) == (1, 2048)


@pytest.mark.parametrize("cfg", [GO_DYNAMIC, GO_STATIC], ids=["dynamic", "static"])
def test_two_containers_add_up(cfg: SizingConfig) -> None:
    vm = size_vm(
        pod(ctr("a", limits={"cpu": "1500m", "memory": "1Gi"}), ctr("b", limits={"cpu": "700m", "memory": "512Mi"})),
        cfg,
    )
    assert (vm.vcpus, vm.memory_mib) == (4, 3584)


def test_decimal_gigabyte_adds_953_mib() -> None:
    vm = size_vm(pod(ctr(limits={"memory": "1G"})), GO_DYNAMIC)
    assert vm.memory_mib == 2048 + 953


def test_dynamic_mode_boots_small_and_hot_plugs() -> None:
    vm = size_vm(pod(ctr(limits={"cpu": "500m", "memory": "800Mi"})), GO_DYNAMIC)
    assert (vm.mode, vm.boot_vcpus, vm.boot_memory_mib) == ("dynamic", 1, 2048)
    assert any("hot-plugs" in s for s in vm.steps)
    assert "vCPUs = ceil(1 + 0.5) = 2" in "\n".join(vm.steps)


def test_static_mode_is_sized_at_boot_and_pins_maxvcpus() -> None:
    vm = size_vm(pod(ctr(limits={"cpu": "500m", "memory": "800Mi"})), GO_STATIC)
    assert (vm.mode, vm.boot_vcpus, vm.boot_memory_mib, vm.max_vcpus) == ("static", 2, 2848, 2)


# ---- Go runtime details ----------------------------------------------------------------------


def test_go_sums_in_float32_so_ten_200m_containers_get_4_vcpus() -> None:
    """1 + 10 * float32(0.2) = 3.0000002 in float32; ceil makes it 4 (exact maths says 3)."""
    many = [ctr(f"c{i}", limits={"cpu": "200m"}) for i in range(10)]
    assert size_vm(pod(*many), GO_DYNAMIC).vcpus == 4
    # runtime-rs normalises quotas in float64 first: 2.0 exactly.
    rs_dynamic = SizingConfig(runtime=RS)
    assert size_vm(pod(*many), rs_dynamic).vcpus == 3


def test_go_caps_hot_plugged_vcpus_at_default_maxvcpus() -> None:
    inp = pod(ctr(limits={"cpu": "8"}))
    inp.host_cpus = 4
    vm = size_vm(inp, GO_DYNAMIC)
    assert (vm.vcpus, vm.max_vcpus) == (4, 4)
    assert "capped at default_maxvcpus 4" in "\n".join(vm.steps)


def test_go_config_adjustments() -> None:
    vm = size_vm(pod(ctr()), SizingConfig(default_memory=128, default_vcpus=0))
    assert (vm.boot_vcpus, vm.boot_memory_mib) == (1, 2048)
    inp = pod(ctr())
    inp.host_cpus = 2
    assert size_vm(inp, SizingConfig(default_vcpus=-1)).boot_vcpus == 2


def test_go_cpuset_only_containers_add_their_cpu_count() -> None:
    inp = SandboxInput([ContainerInput("c", Resources(cpuset_cpus="0-1,4"))])
    assert size_vm(inp, GO_DYNAMIC).vcpus == 1 + 3
    # runtime-rs: the cpuset size replaces default_vcpus instead of adding to it.
    assert size_vm(inp, SizingConfig(runtime=RS)).vcpus == 3


def test_go_static_uses_shares_when_the_quota_is_explicitly_unconstrained() -> None:
    inp = SandboxInput(
        [],
        sandbox_annotations={
            "io.kubernetes.cri.sandbox-cpu-quota": "-1",
            "io.kubernetes.cri.sandbox-cpu-period": "100000",
            "io.kubernetes.cri.sandbox-cpu-shares": "4096",
        },
    )
    assert size_vm(inp, GO_STATIC).vcpus == 1 + 4


def test_go_static_without_sandbox_annotations_gets_only_defaults() -> None:
    inp = SandboxInput([ContainerInput("c", Resources(cpu_quota=200000, cpu_period=100000))])
    vm = size_vm(inp, GO_STATIC)
    assert (vm.vcpus, vm.memory_mib) == (1, 2048)
    assert any("CRI-O" in s for s in vm.steps)


def test_memory_of_a_big_init_container_is_never_unplugged() -> None:
    inp = pod(
        ctr("app", limits={"cpu": "1", "memory": "256Mi"}), init=[ctr("migrate", limits={"cpu": "3", "memory": "2Gi"})]
    )
    vm = size_vm(inp, GO_DYNAMIC)
    assert vm.vcpus == 2  # vCPUs follow the running containers
    assert vm.peak_vcpus == 4
    assert vm.memory_mib == 2048 + 2048  # memory stays at the init container's peak


def test_sidecars_count_with_the_app_containers() -> None:
    inp = pod(
        ctr("app", limits={"cpu": "1", "memory": "256Mi"}),
        init=[ctr("proxy", limits={"cpu": "500m", "memory": "128Mi"}, restartPolicy="Always")],
    )
    vm = size_vm(inp, GO_DYNAMIC)
    assert (vm.vcpus, vm.memory_mib) == (3, 2048 + 384)
    static = size_vm(inp, GO_STATIC)
    assert (static.vcpus, static.memory_mib) == (3, 2048 + 384)


def test_hugepage_limits_add_memory() -> None:
    vm = size_vm(pod(ctr(limits={"memory": "512Mi", "hugepages-2Mi": "512Mi"})), GO_DYNAMIC)
    assert vm.memory_mib == 2048 + 1024


# ---- runtime-rs 4.x static sizing (cases from upstream initial_size.rs tests) --------------


def rs_sandbox(vcpus: float, mem_mib: int) -> SandboxInput:
    ann = {
        "io.kubernetes.cri.sandbox-cpu-period": "100000",
        "io.kubernetes.cri.sandbox-cpu-quota": str(int(vcpus * 100000)),
        "io.kubernetes.cri.sandbox-memory": str(mem_mib * MIB),
    }
    return SandboxInput([], sandbox_annotations=ann)


@pytest.mark.parametrize(
    ("default_vcpus", "overhead_vcpus", "default_memory", "overhead_memory", "vcpus", "mem", "want_vcpus", "want_mem"),
    [
        (3.0, 0.75, 1024, 256, 1.25, 1024, 2, 1280),  # both limits: overhead + workload
        (3.0, 0.5, 1024, 128, 1.5, 0, 2, 128),  # cpu only: memory is overhead alone
        (3.0, 0.5, 1024, 128, 0.0, 512, 1, 640),  # memory only: at least 1 vCPU
        (3.0, 0.0, 1024, 0, 1.25, 1024, 2, 1024),
        (2.0, 0.5, 512, 128, 0.0, 0, 2, 512),  # no limits: configured defaults
    ],
)
def test_runtime_rs_static(
    default_vcpus: float,
    overhead_vcpus: float,
    default_memory: int,
    overhead_memory: int,
    vcpus: float,
    mem: int,
    want_vcpus: int,
    want_mem: int,
) -> None:
    cfg = SizingConfig(
        runtime=RS,
        static_sandbox_resource_mgmt=True,
        default_vcpus=default_vcpus,
        default_memory=default_memory,
        overhead_vcpus=overhead_vcpus,
        overhead_memory=overhead_memory,
    )
    vm = size_vm(rs_sandbox(vcpus, mem), cfg)
    assert (vm.boot_vcpus, vm.boot_memory_mib) == (want_vcpus, want_mem)
    assert (vm.vcpus, vm.memory_mib) == (want_vcpus, want_mem)


def test_runtime_rs_kata_deploy_defaults_for_the_reference_pod() -> None:
    vm = size_vm(pod(ctr(limits={"cpu": "500m", "memory": "800Mi"})), RS_STATIC)
    assert (vm.vcpus, vm.memory_mib) == (1, 832)  # max(0.2 + 0.5, 1) vCPU; 32 + 800 MiB


def test_runtime_rs_rounds_memory_up_to_an_even_mib() -> None:
    assert rs_memory_mib(513 * MIB) == 514
    assert rs_memory_mib(512 * MIB + 5) == 512
    assert rs_memory_mib(-1) == 0


def test_runtime_rs_refuses_a_zero_mib_sandbox() -> None:
    cfg = SizingConfig(runtime=RS, static_sandbox_resource_mgmt=True, overhead_memory=0)
    vm = size_vm(pod(ctr(limits={"cpu": "1"})), cfg)
    assert vm.memory_mib == 0
    assert any("computed sandbox memory is 0 MiB" in e for e in vm.errors)


def test_runtime_rs_default_memory_zero_means_128() -> None:
    vm = size_vm(pod(ctr()), SizingConfig(runtime=RS, default_memory=0))
    assert vm.boot_memory_mib == 128


# ---- Kata annotations --------------------------------------------------------------------------

ANN = "io.katacontainers.config.hypervisor."


def test_annotations_are_unanchored_regular_expressions() -> None:
    assert annotation_enabled(["default_vcpus"], ANN + "default_vcpus")
    assert annotation_enabled(["vcpus"], ANN + "default_max_vcpus")
    assert annotation_enabled([".*"], ANN + "kernel_params")
    assert not annotation_enabled(["default_memory"], ANN + "default_vcpus")
    assert not annotation_enabled(["("], ANN + "default_vcpus")  # a broken pattern matches nothing
    assert annotation_enabled([], "io.katacontainers.config.agent.debug")  # only hypervisor.* is checked


def test_go_rejects_a_pod_with_an_annotation_that_is_not_enabled() -> None:
    vm = size_vm(pod(ctr(), annotations={ANN + "default_vcpus": "4"}), GO_DYNAMIC)
    assert [(i.problem, i.effect) for i in vm.annotation_issues] == [("not-enabled", "rejected")]
    assert any("is not enabled" in e for e in vm.errors)
    assert vm.boot_vcpus == 1


def test_runtime_rs_ignores_an_annotation_that_is_not_enabled() -> None:
    cfg = SizingConfig(runtime=RS, enable_annotations=())
    vm = size_vm(pod(ctr(), annotations={ANN + "default_memory": "4096"}), cfg)
    assert [(i.problem, i.effect) for i in vm.annotation_issues] == [("not-enabled", "ignored")]
    assert vm.errors == [] and vm.boot_memory_mib == 2048


def test_enabled_sizing_annotations_replace_the_defaults() -> None:
    cfg = SizingConfig(enable_annotations=("default_vcpus", "default_memory"))
    vm = size_vm(
        pod(
            ctr(limits={"cpu": "1", "memory": "1Gi"}),
            annotations={ANN + "default_vcpus": "2", ANN + "default_memory": "4096"},
        ),
        cfg,
    )
    assert (vm.boot_vcpus, vm.boot_memory_mib, vm.vcpus, vm.memory_mib) == (2, 4096, 3, 5120)


def test_go_refuses_default_memory_below_256() -> None:
    cfg = SizingConfig(enable_annotations=("default_memory",))
    vm = size_vm(pod(ctr(), annotations={ANN + "default_memory": "128"}), cfg)
    assert [(i.problem, i.effect) for i in vm.annotation_issues] == [("invalid", "rejected")]
    assert any("minimum 256" in e for e in vm.errors)


def test_runtime_and_mode_are_reported() -> None:
    vm = size_vm(pod(ctr()), RS_STATIC)
    assert (vm.runtime, vm.mode) == (RS, "static")
    assert size_vm(pod(ctr()), GO_DYNAMIC).runtime == GO
    assert vm.steps[0] == "configuration: runtime-rs qemu defaults"
