"""Sizing fidelity against Kata 4.1.0 and Kubernetes 1.34, and `limits` refusing what the API server refuses.

Each test names the upstream source it follows; the numbers were re-derived from that source.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml

from kata_debug.collect.runner import CollectOptions, run_collection
from kata_debug.collectors.resource_limits import Observed, compare
from kata_debug.errors import UsageError
from kata_debug.node.oci import Resources
from kata_debug.sizing.check import LimitsRequest, check_limits
from kata_debug.sizing.config import for_handler
from kata_debug.sizing.limits import Options, vm_text
from kata_debug.sizing.model import ContainerInput, SandboxInput, SizingConfig, guest_memory, size_vm
from tests.bundles import read_bundle
from tests.hostroots import add_task, oci_spec
from tests.limits_helpers import analyse_objs, analyse_text, container, limit_range, only, pod, rules
from tests.test_resource_limits_collector import GO_CONFIG, persist, write

MIB = 2**20
POD_LEVEL = {"limits": {"cpu": "1", "memory": "1Gi"}}


def found(entry: object, rule: str) -> list[tuple[str | None, str | None]]:
    return [(f.container, f.resource) for f in entry.findings if f.rule == rule]  # type: ignore[attr-defined]


# ---- 1. pod-level resources ---------------------------------------------------------------


def test_pod_level_limit_is_given_to_every_container_without_its_own_and_kata_adds_them_up() -> None:
    """kubelet getCPULimit/getMemoryLimit (pkg/kubelet/kuberuntime/kuberuntime_container_linux.go,
    Kubernetes 1.34, PodLevelResources beta): a container with no limit gets the pod's limit in
    its CRI resources; Go sandbox.go updateResources sums quota/period and memory limits.
    1 + ceil(1 + 0.25) vCPU -> 3; 2048 + 1024 + 256 MiB -> 3328 (not 2 / 2304)."""
    obj = pod(container("a"), container("b", limits={"cpu": "250m", "memory": "256Mi"}), resources=POD_LEVEL)
    e = only(analyse_objs(obj, opts=Options(runtime="go")))
    assert e.vm is not None and (e.vm.vcpus, e.vm.memory_mib) == (3, 3328)
    assert any("pod-level limit 1Gi" in s for s in e.vm.steps)


def test_pod_level_limits_in_runtime_rs_dynamic_and_the_static_sandbox_annotations() -> None:
    """runtime-rs cpu_mem/cpu.rs calc_cpu_resources and mem.rs add the same per-container limits;
    static sizing (Go pkg/oci/utils.go CalculateSandboxSizing) reads the sandbox annotations,
    which the kubelet sets from the pod-level limit itself (1 CPU, 1 GiB)."""
    obj = pod(container("a"), container("b", limits={"cpu": "250m", "memory": "256Mi"}), resources=POD_LEVEL)
    rs = SizingConfig(runtime="rs", default_vcpus=1, default_memory=2048)
    e = only(analyse_objs(obj, opts=Options(config=rs)))
    assert e.vm is not None and (e.vm.vcpus, e.vm.memory_mib) == (3, 3328)
    static = SizingConfig(static_sandbox_resource_mgmt=True)
    e = only(analyse_objs(obj, opts=Options(config=static)))
    assert e.vm is not None and (e.vm.vcpus, e.vm.memory_mib) == (2, 3072)


def test_pod_level_limit_of_one_resource_leaves_the_other_unlimited() -> None:
    """getMemoryLimit returns the pod's memory limit, which is zero when only cpu is set."""
    obj = pod(container("a"), resources={"limits": {"cpu": "2"}})
    e = only(analyse_objs(obj, opts=Options(runtime="go")))
    assert e.vm is not None and (e.vm.vcpus, e.vm.memory_mib) == (3, 2048)


# ---- 2. guest memory ----------------------------------------------------------------------


def test_hot_plugged_memory_comes_in_whole_guest_memory_blocks() -> None:
    """Go qemu.go ResizeMemory -> calcHotplugMemMiBSize rounds the hot-plug up to the block
    size; runtime-rs qemu/inner.rs resize_memory aligns it the same way. 800 MiB -> 896."""
    e = only(analyse_objs(pod(container(limits={"cpu": "500m", "memory": "800Mi"})), opts=Options(runtime="go")))
    vm = e.vm
    assert vm is not None and (vm.memory_mib, vm.guest_memory_mib, vm.guest_memory_estimate) == (2848, 2944, True)
    assert vm.to_json()["guest_memory_mib"] == 2944
    assert vm_text(e) == "1->2 vCPU, 2048->2848 MiB (guest ~2944)"
    assert guest_memory(2048, 2048 + 256, 128) == 2048 + 256  # already whole blocks


def test_known_block_size_makes_guest_memory_exact_and_static_vms_are_not_rounded() -> None:
    inp = SandboxInput([ContainerInput("a", Resources(memory_limit=800 * MIB))], memory_block_mib=256)
    vm = size_vm(inp, SizingConfig())
    assert (vm.guest_memory_mib, vm.guest_memory_estimate) == (2048 + 1024, False)
    static = size_vm(
        SandboxInput([], sandbox_annotations={"io.kubernetes.cri.sandbox-memory": str(800 * MIB)}),
        SizingConfig(static_sandbox_resource_mgmt=True),
    )
    assert (static.memory_mib, static.guest_memory_mib) == (2848, 2848)  # sized at boot, no hot-plug


# ---- 3./4. init containers ----------------------------------------------------------------


def test_large_init_container_keeps_the_vm_big_and_is_a_finding() -> None:
    """Go sandbox.go updateResources: memory is never hot-unplugged, so the 4 GiB an init
    container made the VM hot-plug stays (2048 + 4096); its vCPUs are unplugged."""
    obj = pod(
        container("app", limits={"cpu": "500m", "memory": "256Mi"}),
        initContainers=[container("migrate", limits={"cpu": "2", "memory": "4Gi"})],
    )
    e = only(analyse_objs(obj, opts=Options(runtime="go")))
    assert e.vm is not None and (e.vm.vcpus, e.vm.memory_mib) == (2, 6144)
    assert found(e, "init-container-peak") == [("migrate", "memory")]
    assert e.findings[[f.rule for f in e.findings].index("init-container-peak")].severity == "info"


def test_static_sizing_names_the_init_container_that_sets_the_pod_total() -> None:
    """resourcehelper.PodLimits: max(steady containers, largest init container) per resource,
    which is what the sandbox annotations (and so a static VM) carry."""
    obj = pod(
        container("app", limits={"cpu": "500m", "memory": "256Mi"}),
        initContainers=[container("migrate", limits={"cpu": "2", "memory": "4Gi"})],
    )
    e = only(analyse_objs(obj, opts=Options(config=SizingConfig(static_sandbox_resource_mgmt=True))))
    assert e.vm is not None and e.vm.memory_mib == 2048 + 4096
    assert found(e, "init-container-peak") == [("migrate", "memory")]
    small = pod(container("app", limits={"memory": "1Gi"}), initContainers=[container("i", limits={"memory": "1Mi"})])
    assert not found(only(analyse_objs(small, opts=Options(runtime="go"))), "init-container-peak")


def sandbox_with_exited_init(root: Path, hotplugged_mib: int) -> None:
    """web-0 ran init container 'migrate' (4 GiB; bundle deleted) before app (256 MiB)."""
    write(root, "etc/kata-containers/configuration.toml", GO_CONFIG)
    write(root, "sys/devices/system/cpu/online", "0-3\n")
    sizing = {
        "io.kubernetes.cri.sandbox-cpu-quota": "200000",
        "io.kubernetes.cri.sandbox-cpu-period": "100000",
        "io.kubernetes.cri.sandbox-memory": str(4096 * MIB),
        "io.kubernetes.cri.runtime-handler": "kata-qemu",
    }
    add_task(root, "k8s.io", "sbi", oci_spec(ctype="sandbox", sandbox_id="sbi", pod="web-0", extra_annotations=sizing))
    app = oci_spec(
        ctype="container",
        sandbox_id="sbi",
        pod="web-0",
        quota=50000,
        memory=256 * MIB,
        extra_annotations={"io.kubernetes.cri.container-name": "app"},
    )
    add_task(root, "k8s.io", "sbi-app", app)
    write(root, "run/vc/sbs/sbi/persist.json", persist(1, 2048, plugged_vcpus=1, plugged_mem=hotplugged_mib))


async def test_node_vm_still_sized_by_an_exited_init_container_is_not_a_mismatch(tmp_path: Path) -> None:
    """containerd deletes an exited init container's task bundle; the sandbox annotations
    (4 GiB > the app's 256 MiB) say an init container had 4 GiB, which stays hot-plugged."""
    root = tmp_path / "host"
    sandbox_with_exited_init(root, 4096)
    await run_collection(CollectOptions(host_root=root, output=str(tmp_path / "b.tgz"), collectors=["resource-limits"]))
    sb = read_bundle(tmp_path / "b.tgz").json("resource-limits/sizing.json")["sandboxes"][0]
    assert sb["computed"]["memory_mib"] == 2048 + 4096 and sb["computed"]["vcpus"] == 2
    assert [(f["rule"], f["severity"]) for f in sb["findings"]] == [("init-container-peak", "info")]


async def test_node_vm_bigger_than_even_the_init_container_explains_is_still_a_mismatch(tmp_path: Path) -> None:
    root = tmp_path / "host"
    sandbox_with_exited_init(root, 8192)
    await run_collection(CollectOptions(host_root=root, output=str(tmp_path / "b.tgz"), collectors=["resource-limits"]))
    sb = read_bundle(tmp_path / "b.tgz").json("resource-limits/sizing.json")["sandboxes"][0]
    assert ("vm-size-mismatch", "memory") in {(f["rule"], f["resource"]) for f in sb["findings"]}


def test_observed_memory_is_compared_with_the_guest_size_for_the_reported_block() -> None:
    vm = size_vm(SandboxInput([ContainerInput("a", Resources(memory_limit=800 * MIB))]), SizingConfig())
    assert compare(vm, Observed(sources=["x"], current_memory_mib=2048 + 896, block_mib=128)) == []
    assert compare(vm, Observed(sources=["x"], current_memory_mib=2048 + 1024, block_mib=256)) == []
    assert compare(vm, Observed(sources=["x"], current_memory_mib=2848, block_mib=128))  # not whole blocks


# ---- the lint refuses what the API server refuses -----------------------------------------


def test_request_above_limit_is_an_error_that_fails_the_lint() -> None:
    """pkg/apis/core/validation ValidateResourceRequirements: request <= limit."""
    report = analyse_objs(pod(container(limits={"cpu": "1"}, requests={"cpu": "2"})))
    e = only(report)
    assert found(e, "request-exceeds-limit") == [("app", "cpu")]
    assert e.errors == 1 and report.exit_code() == 1 and report.summary()["errors"] == 1


def test_limitrange_default_limit_below_the_request_is_refused() -> None:
    """LimitRanger admission fills limits.cpu = default 500m, then validation refuses 1 > 500m."""
    report = analyse_objs(limit_range(default={"cpu": "500m"}), pod(container(requests={"cpu": "1"})))
    e = only(report, "Pod")
    msg = next(f.message for f in e.findings if f.rule == "request-exceeds-limit")
    assert "LimitRange limits default" in msg and report.exit_code() == 1


@pytest.mark.parametrize(
    ("item", "res", "why"),
    [
        ({"min": {"memory": "512Mi"}}, {"limits": {"memory": "256Mi"}}, "but request is 256Mi"),
        ({"max": {"cpu": "2"}}, {"limits": {"cpu": "4"}}, "but limit is 4"),
        ({"maxLimitRequestRatio": {"cpu": "2"}}, {"limits": {"cpu": "4"}, "requests": {"cpu": "1"}}, "is 4"),
    ],
)
def test_limitrange_min_max_and_ratio_are_enforced(item: dict, res: dict, why: str) -> None:
    """plugin/pkg/admission/limitranger/admission.go minConstraint, maxConstraint,
    limitRequestRatioConstraint (type Container)."""
    report = analyse_objs(limit_range(**item), pod(container(**res)))
    msgs = [f.message for f in only(report, "Pod").findings if f.rule == "limitrange-violation"]
    assert msgs and why in msgs[0] and report.exit_code() == 1


def test_invalid_quantity_is_an_error() -> None:
    e = only(analyse_objs(pod(container(limits={"cpu": "lots"}))))
    assert rules(e) == [("unevaluable", "app", "cpu")] and e.errors == 1


def test_duplicate_keys_in_yaml_and_json_are_errors() -> None:
    text = yaml.safe_dump(pod(container(limits={"memory": "1Gi"}))).replace(
        "memory: 1Gi", "memory: 1Gi\n        memory: 2Gi"
    )
    e = only(analyse_text(text))
    assert [f.message.split(" is ")[0] for f in e.findings if f.rule == "duplicate-key"] == ["key 'memory' (line 12)"]
    from kata_debug.sizing.inputs import parse_text

    body = json.dumps(pod(container(limits={"cpu": "1"})))
    docs, err = parse_text(body.replace('"cpu": "1"', '"cpu": "1", "cpu": "2"'), "p.json", "p.json")
    assert err is None and docs[0].duplicates == ["key 'cpu'"]


async def test_input_without_kubernetes_objects_is_one_input_error(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/:/usr/sbin/nologin\n")
    with pytest.raises(UsageError, match="passwd: holds no Kubernetes objects"):
        await check_limits(LimitsRequest(paths=(str(passwd),)))
    with pytest.raises(UsageError, match="stdin: empty"):
        await check_limits(LimitsRequest(paths=("-",)), stdin=io.BytesIO(b""))
    good = tmp_path / "ok.yaml"
    good.write_text(yaml.safe_dump(pod(container(limits={"cpu": "1"}))))
    both = await check_limits(LimitsRequest(paths=(str(good), str(passwd))))
    assert both.report.exit_code() == 2 and [x.source for x in both.report.errors] == [str(passwd)]


def test_handler_defaults_are_unchanged_for_pods_without_pod_level_resources() -> None:
    e = only(analyse_objs(pod(container(limits={"cpu": "500m", "memory": "800Mi"}))))
    assert e.config == for_handler("kata") and e.vm is not None and (e.vm.vcpus, e.vm.memory_mib) == (2, 2848)
