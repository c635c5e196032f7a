"""`kata-debug limits` analysis: workloads, admission, rules, and upstream Kata's own manifests."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest

from kata_debug.sizing.config import load_config_file
from kata_debug.sizing.inputs import load
from kata_debug.sizing.limits import Options, analyse
from tests.limits_helpers import (
    AFTER,
    BEFORE,
    COPY,
    SHARED,
    analyse_objs,
    analyse_text,
    container,
    limit_range,
    only,
    pod,
    rules,
    runtime_class,
)

ANN = "io.katacontainers.config.hypervisor."


def analyse_file(path: Path):  # noqa: ANN201 - a Report
    docs, errors = load([str(path)])
    assert not errors
    return analyse(docs)


# ---- acceptance on upstream Kata's manifests before/after their requests->limits commit ----


@pytest.mark.parametrize("name", sorted(p.name for p in BEFORE.iterdir()))
def test_every_manifest_before_the_conversion_gets_a_finding(name: str) -> None:
    report = analyse_file(BEFORE / name)
    assert sum(len(e.findings) for e in report.entries) >= 1, name


@pytest.mark.parametrize("name", sorted(p.name for p in AFTER.iterdir()))
def test_no_manifest_after_the_conversion_gets_a_warning(name: str) -> None:
    report = analyse_file(AFTER / name)
    assert report.warnings == 0, [(f.rule, f.message) for e in report.entries for f in e.findings]
    assert report.exit_code() == 0


def test_after_directory_as_one_input_has_no_warning() -> None:
    docs, errors = load([str(AFTER)])
    report = analyse(docs)
    assert not errors and report.warnings == 0 and report.exit_code() == 0
    assert report.summary()["kata_workloads"] == 19


def test_memory_limit_pod_keeps_only_its_intentional_request_ignored_info() -> None:
    report = analyse_file(AFTER / "tests__integration__kubernetes__runtimeclass_workloads__pod-memory-limit.yaml")
    entry = only(report)
    assert rules(entry) == [("request-ignored", "memory-test-ctr", "memory")]
    assert entry.findings[0].severity == "info"
    # The ${memory_size} limit is a template placeholder: reported, not counted, never a crash.
    assert entry.unresolved and "${memory_size}" in entry.unresolved[0]
    assert entry.to_json()["vm"]["complete"] is False


def test_before_requests_only_deployment_warns_for_cpu_and_memory() -> None:
    report = analyse_file(
        BEFORE / "tests__integration__kubernetes__runtimeclass_workloads__redis-master-deployment.yaml"
    )
    entry = only(report)
    assert rules(entry) == [("request-without-limit", "master", "cpu"), ("request-without-limit", "master", "memory")]
    assert (entry.vm.vcpus, entry.vm.memory_mib) == (1, 2048)  # the requests bought nothing
    assert report.exit_code() == 1


def test_after_deployment_vm_matches_the_reference_numbers() -> None:
    entry = only(
        analyse_file(AFTER / "tests__integration__kubernetes__runtimeclass_workloads__k8s-pod-sc-deployment.yaml")
    )
    assert (entry.vm.boot_vcpus, entry.vm.boot_memory_mib, entry.vm.vcpus, entry.vm.memory_mib) == (1, 2048, 2, 2848)


def test_repository_copy_of_the_fixtures_matches_shared() -> None:
    if not SHARED.is_dir():
        pytest.skip("shared/ is not beside this checkout")
    for sub in ("before", "after"):
        cmp = filecmp.dircmp(COPY / sub, SHARED / sub)
        assert not (cmp.left_only or cmp.right_only or cmp.diff_files), sub


# ---- workload kinds -----------------------------------------------------------------------

TEMPLATE = {
    "metadata": {"labels": {"app": "x"}},
    "spec": {"runtimeClassName": "kata", "containers": [container(limits={"cpu": "1", "memory": "1Gi"})]},
}


@pytest.mark.parametrize(
    ("kind", "api", "body"),
    [
        ("Pod", "v1", {"spec": TEMPLATE["spec"]}),
        ("Deployment", "apps/v1", {"spec": {"template": TEMPLATE}}),
        ("StatefulSet", "apps/v1", {"spec": {"template": TEMPLATE}}),
        ("DaemonSet", "apps/v1", {"spec": {"template": TEMPLATE}}),
        ("ReplicaSet", "apps/v1", {"spec": {"template": TEMPLATE}}),
        ("ReplicationController", "v1", {"spec": {"template": TEMPLATE}}),
        ("Job", "batch/v1", {"spec": {"template": TEMPLATE}}),
        ("CronJob", "batch/v1", {"spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": TEMPLATE}}}}),
        ("PodTemplate", "v1", {"template": TEMPLATE}),
    ],
)
def test_every_workload_kind_is_sized(kind: str, api: str, body: dict) -> None:
    entry = only(analyse_objs({"apiVersion": api, "kind": kind, "metadata": {"name": "w", "namespace": "ns"}, **body}))
    assert (entry.kind, entry.namespace, entry.name, entry.kata) == (kind, "ns", "w", True)
    assert (entry.vm.vcpus, entry.vm.memory_mib) == (2, 3072)


def test_list_items_are_analysed() -> None:
    report = analyse_objs({"apiVersion": "v1", "kind": "List", "items": [pod(name="a"), pod(name="b")]})
    assert [e.name for e in report.entries] == ["a", "b"]


def test_multi_document_sources_name_the_document() -> None:
    report = analyse_text(
        "kind: Service\nmetadata: {name: s}\n---\n"
        + "---\n".join(__import__("yaml").safe_dump(p) for p in (pod(name="a"), pod(name="b")))
    )
    assert [e.doc.source for e in report.entries] == ["-#1", "-#2"]
    assert report.ignored == 1


def test_non_kata_workloads_are_listed_without_a_vm_or_findings() -> None:
    entry = only(analyse_objs(pod(container(requests={"cpu": "1"}), runtime_class=None)))
    assert entry.to_json()["kata"] is False
    assert entry.to_json()["vm"] is None and entry.findings == []
    assert only(analyse_objs(pod(runtime_class="gvisor"))).kata is False


def test_kata_is_recognised_by_handler_and_by_option() -> None:
    report = analyse_objs(runtime_class("secure", "kata-qemu"), pod(runtime_class="secure"))
    assert only(report, "Pod").kata and only(report, "Pod").handler == "kata-qemu"
    assert only(analyse_objs(pod(runtime_class="vm"), opts=Options(runtime_classes=("vm",)))).kata


# ---- rules ------------------------------------------------------------------------------


def test_request_beside_a_limit_is_info_and_defaulted_requests_are_not_flagged() -> None:
    entry = only(analyse_objs(pod(container(requests={"memory": "600Mi"}, limits={"memory": "800Mi", "cpu": "1"}))))
    assert rules(entry) == [("request-ignored", "app", "memory")]  # cpu request is defaulted, not written
    assert entry.findings[0].severity == "info"


def test_limitrange_defaults_are_applied_like_admission() -> None:
    lr = limit_range(default={"cpu": "1", "memory": "512Mi"}, defaultRequest={"cpu": "500m"})
    entry = only(analyse_objs(lr, pod(container())), "Pod")
    assert (entry.vm.vcpus, entry.vm.memory_mib) == (2, 2048 + 512)
    assert entry.findings == []  # nothing written by the user
    c = entry.to_json()["containers"][0]
    assert c["limits"] == {"cpu": "1", "memory": "512Mi"}
    assert c["defaults"]["limits.cpu"] == "LimitRange limits default"


def test_limitrange_max_becomes_the_default_limit() -> None:
    entry = only(analyse_objs(limit_range(max={"cpu": "2"}), pod(container())), "Pod")
    assert entry.vm.vcpus == 3


def test_limitrange_in_another_namespace_does_not_apply() -> None:
    report = analyse_objs(limit_range(namespace="other", default={"cpu": "4"}), pod(namespace="apps"))
    assert only(report, "Pod").vm.vcpus == 1


def test_limitrange_default_request_without_default_warns() -> None:
    entry = only(
        analyse_objs(limit_range(defaultRequest={"cpu": "500m", "memory": "256Mi"}, default={"memory": "1Gi"}))
    )
    assert rules(entry) == [("limitrange-default-request", None, "cpu"), ("request-ignored", None, "memory")]
    assert entry.findings[0].severity == "warning" and entry.findings[0].fix is not None


def test_pod_under_a_default_request_only_limitrange_gets_no_vm_share() -> None:
    report = analyse_objs(limit_range(defaultRequest={"cpu": "2"}), pod(container()))
    assert only(report, "Pod").vm.vcpus == 1
    assert report.warnings == 1  # reported once, on the LimitRange


def test_runtime_class_overhead_is_not_vm_size() -> None:
    report = analyse_objs(
        runtime_class("kata-qemu", "kata-qemu", {"cpu": "250m", "memory": "160Mi"}),
        pod(container(limits={"memory": "1Gi"}), runtime_class="kata-qemu"),
    )
    rc, p = only(report, "RuntimeClass"), only(report, "Pod")
    assert rules(rc) == [("overhead-not-vm-size", None, None)]
    assert rules(p) == [("overhead-not-vm-size", None, None)]
    assert p.vm.memory_mib == 3072  # 160Mi of overhead is not in the VM
    assert all(f.severity == "info" for f in rc.findings + p.findings)


def test_hypervisor_annotation_not_enabled_warns_and_enabled_one_sizes() -> None:
    p = pod(container(limits={"cpu": "1"}), annotations={ANN + "default_vcpus": "4"})
    entry = only(analyse_objs(p))
    assert rules(entry) == [("annotation-not-enabled", None, ANN + "default_vcpus")]
    assert "refuses" in entry.findings[0].message and entry.findings[0].severity == "warning"


def test_config_file_enables_annotations_and_static_mode(tmp_path: Path) -> None:
    cfg = tmp_path / "configuration.toml"
    cfg.write_text(
        "[hypervisor.qemu]\ndefault_vcpus = 1\ndefault_memory = 2048\n"
        'enable_annotations = ["default_vcpus"]\n[runtime]\nstatic_sandbox_resource_mgmt = true\n'
    )
    p = pod(container(limits={"cpu": "1"}), annotations={ANN + "default_vcpus": "4"})
    entry = only(analyse_objs(p, opts=Options(config=load_config_file(cfg))))
    assert entry.findings == []
    assert (entry.vm.mode, entry.vm.boot_vcpus, entry.vm.vcpus) == ("static", 5, 5)
    assert str(cfg) in entry.vm.steps[0]


def test_invalid_quantities_are_reported_not_counted() -> None:
    entry = only(analyse_objs(pod(container(limits={"cpu": "1", "memory": "1GB"}))))
    assert rules(entry) == [("unevaluable", "app", "memory")]
    assert "'1GB': quantities must match the regular expression" in entry.findings[0].message
    assert entry.vm.memory_mib == 2048


def test_malformed_workload_is_unevaluable_not_a_crash() -> None:
    report = analyse_text("kind: Pod\nmetadata: {name: x}\nspec:\n  runtimeClassName: kata\n  containers: nope\n")
    assert rules(only(report)) == [("unevaluable", None, None)]


def test_runtime_rs_cpu_only_limit_leaves_only_overhead_memory() -> None:
    entry = only(analyse_objs(pod(container(limits={"cpu": "1"}), runtime_class="kata-dragonball")))
    assert (entry.vm.runtime, entry.vm.mode, entry.vm.memory_mib) == ("rs", "static", 32)
    assert rules(entry) == [("memory-limit-missing", None, "memory")]


def test_kata_deploy_handlers_choose_runtime_and_mode() -> None:
    p = container(limits={"cpu": "500m", "memory": "800Mi"})
    sizes = {rc: only(analyse_objs(pod(p, runtime_class=rc))).vm for rc in ("kata-qemu", "kata-fc", "kata-dragonball")}
    assert (sizes["kata-qemu"].mode, sizes["kata-qemu"].boot_vcpus, sizes["kata-qemu"].vcpus) == ("dynamic", 1, 2)
    assert (sizes["kata-fc"].mode, sizes["kata-fc"].boot_vcpus, sizes["kata-fc"].boot_memory_mib) == ("static", 2, 2848)
    assert (sizes["kata-dragonball"].runtime, sizes["kata-dragonball"].memory_mib) == ("rs", 832)
    forced = only(analyse_objs(pod(p, runtime_class="kata-qemu"), opts=Options(runtime="rs"))).vm
    assert (forced.runtime, forced.vcpus, forced.memory_mib) == ("rs", 1, 832)


def test_json_object_shape() -> None:
    out = analyse_objs(pod(container(requests={"cpu": "100m"}))).to_json()
    assert set(out) == {"workloads", "summary"}
    w = out["workloads"][0]
    assert {"source", "kind", "namespace", "name", "runtime_class", "kata", "vm", "containers", "findings"} <= set(w)
    assert {"vcpus", "memory_mib", "mode", "boot_vcpus", "boot_memory_mib"} <= set(w["vm"])
    assert set(w["findings"][0]) >= {"rule", "severity", "container", "resource", "message"}
    assert out["summary"]["warnings"] == 1 and out["summary"]["exit_code"] == 1
