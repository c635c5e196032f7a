"""The pure parts of cluster collection: exec status, node commands, owners, redaction of objects."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from kata_debug.cluster.node_exec import node_command, node_deadline
from kata_debug.cluster.objects import is_kata_handler, node_summary, redact_object, resource_path
from kata_debug.cluster.options import ClusterOptions
from kata_debug.cluster.planning import pick_agent_pods
from kata_debug.errors import UsageError
from kata_debug.kube.client import KubeSession, check_kubeconfig_files
from kata_debug.kube.exec_stream import parse_status
from kata_debug.redact.redactor import MASK, Redactor


def test_success_status_is_exit_zero() -> None:
    assert parse_status(b'{"metadata":{},"status":"Success"}') == (0, None)


def test_non_zero_exit_code_comes_from_the_exit_code_cause() -> None:
    status = {
        "metadata": {},
        "status": "Failure",
        "message": "command terminated with non-zero exit code: error executing command [x], exit code 3",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": "3"}]},
    }
    code, message = parse_status(json.dumps(status).encode())
    assert code == 3 and "exit code 3" in (message or "")


def test_failure_without_exit_code_is_an_exec_failure() -> None:
    status = {
        "metadata": {},
        "status": "Failure",
        "reason": "InternalError",
        "message": 'OCI runtime exec failed: exec: "kata-debug": executable file not found in $PATH',
    }
    code, message = parse_status(json.dumps(status).encode())
    assert code is None and "executable file not found" in (message or "")


def test_plain_text_status_of_old_protocols_is_an_error_message() -> None:
    assert parse_status(b"error executing command: boom") == (None, "error executing command: boom")


def test_node_gets_a_deadline_it_can_finish_before_we_cut_it() -> None:
    assert node_deadline(600) == 540
    assert node_deadline(30) == 24
    for t in (10, 60, 600, 3600):
        assert node_deadline(t) < t


def test_node_command_collects_to_stdout_under_host_with_the_node_name() -> None:
    opts = ClusterOptions(
        since=timedelta(hours=2), node_timeout=100, redact=False, compression="zstd", node_args=["--collector", "host"]
    )
    argv = node_command(opts, "node-a")
    assert argv[:2] == ["kata-debug", "collect"]

    def opt(name: str) -> str:
        return argv[argv.index(name) + 1]

    assert opt("--host-root") == "/host" and opt("--output") == "-"
    assert opt("--node-name") == "node-a" and opt("--since") == "7200s"
    assert opt("--compression") == "zstd" and opt("--deadline") == "80"
    assert "--no-redact" in argv and argv[-2:] == ["--collector", "host"]
    # The agent pod runs the node's own containerd / kata-runtime from /host: it must say so.
    assert "--run-host-tools" in argv


def _agent(name: str, node: str, phase: str = "Running", ready: bool = True, deleting: bool = False) -> dict:
    meta: dict = {"name": name}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {
        "metadata": meta,
        "spec": {"nodeName": node},
        "status": {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def test_agent_pod_choice_prefers_running_ready_and_not_terminating() -> None:
    pods = [
        _agent("old", "n1", deleting=True),
        _agent("new", "n1"),
        _agent("pending", "n2", phase="Pending", ready=False),
        _agent("unready", "n3", ready=False),
        _agent("ready", "n3"),
    ]
    chosen = {node: pod["metadata"]["name"] for node, pod in pick_agent_pods(pods).items()}
    assert chosen == {"n1": "new", "n2": "pending", "n3": "ready"}


def test_owner_paths_follow_api_groups_and_plurals() -> None:
    assert resource_path("apps/v1", "ReplicaSet", "ns", "web-7d") == "/apis/apps/v1/namespaces/ns/replicasets/web-7d"
    assert resource_path("batch/v1", "CronJob", "ns", "nightly") == "/apis/batch/v1/namespaces/ns/cronjobs/nightly"
    assert resource_path("v1", "ReplicationController", "ns", "rc") == "/api/v1/namespaces/ns/replicationcontrollers/rc"
    assert resource_path("example.com/v1", "Policy", "ns", "p") == "/apis/example.com/v1/namespaces/ns/policies/p"


def test_kata_handlers_are_recognised_by_name() -> None:
    for handler in ("kata", "kata-qemu", "kata-clh", "kata-fc", "kata-qemu-snp"):
        assert is_kata_handler(handler)
    for handler in ("runc", "gvisor", "", None):
        assert not is_kata_handler(handler)


def test_objects_lose_env_values_and_secrets_in_annotations() -> None:
    last_applied = json.dumps(
        {"spec": {"containers": [{"name": "app", "env": [{"name": "DB_PASSWORD", "value": "hunter2"}]}]}}
    )
    pod = {
        "metadata": {
            "name": "web",
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": last_applied,
                "example.com/api-token": "tok-abc123",
                "example.com/owner": "team-a",
            },
        },
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "env": [
                        {"name": "DB_PASSWORD", "value": "hunter2"},
                        {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                    ],
                }
            ]
        },
    }
    redactor = Redactor()
    out = redact_object(redactor, pod)
    text = json.dumps(out)
    assert "hunter2" not in text and "tok-abc123" not in text
    assert out["metadata"]["annotations"]["example.com/owner"] == "team-a"
    assert out["spec"]["containers"][0]["env"][0] == {"name": "DB_PASSWORD", "value": MASK}
    assert out["spec"]["containers"][0]["env"][1]["valueFrom"]["secretKeyRef"]["name"] == "s"
    assert json.loads(out["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"])
    assert sum(redactor.counts.values()) >= 3


def test_redaction_off_keeps_objects_verbatim() -> None:
    pod = {"spec": {"containers": [{"env": [{"name": "A", "value": "secret"}]}]}}
    assert redact_object(Redactor(enabled=False), pod) == pod


def test_node_summary_keeps_what_matters_for_kata() -> None:
    node = {
        "metadata": {"name": "n1", "labels": {"katacontainers.io/kata-runtime": "false"}},
        "spec": {"taints": [{"key": "dedicated", "effect": "NoSchedule"}]},
        "status": {
            "allocatable": {"cpu": "3800m", "memory": "15Gi"},
            "capacity": {"cpu": "4"},
            "conditions": [{"type": "Ready", "status": "True"}],
            "nodeInfo": {
                "kernelVersion": "6.8.0",
                "containerRuntimeVersion": "containerd://1.7.24",
                "osImage": "Ubuntu 24.04",
                "kubeletVersion": "v1.32.4",
                "architecture": "amd64",
            },
        },
    }
    pods = [{"metadata": {"name": "p", "namespace": "ns"}, "spec": {"nodeName": "n1"}}]
    s = node_summary(node, pods)
    assert s["kata_runtime_label"] == "false" and s["ready"] == "True"
    assert s["kernel_version"] == "6.8.0" and s["container_runtime_version"] == "containerd://1.7.24"
    assert s["allocatable"] == {"cpu": "3800m", "memory": "15Gi"} and s["kata_pods"] == ["ns/p"]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("garbage: [\n", "not valid YAML (line 2): expected the node content, but found '<stream end>'"),
        ("a: 1\n  b: 2\n", "not valid YAML (line 2): mapping values are not allowed here"),
        ("", "empty"),
        ("# nothing but a comment\n", "empty"),
        ("- a list\n", "not a kubeconfig (a YAML mapping with clusters, contexts and users expected)"),
        ("clusters: oops\n", "clusters: a list of entries with a name expected"),
        ("users: [{user: {}}]\n", "users: a list of entries with a name expected"),
    ],
)
async def test_a_kubeconfig_that_cannot_be_loaded_is_one_usage_error_naming_it(
    tmp_path: Path, content: str, problem: str
) -> None:
    kc = tmp_path / "kc"
    kc.write_text(content)
    with pytest.raises(UsageError) as info:
        await KubeSession.connect(str(kc))
    assert str(info.value) == f"--kubeconfig {kc}: {problem}"


async def test_a_kubeconfig_that_is_a_directory_or_missing_says_which(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=f"^--kubeconfig {tmp_path}: is a directory$"):
        await KubeSession.connect(str(tmp_path))
    with pytest.raises(UsageError, match="^--kubeconfig .*/missing: no such file$"):
        await KubeSession.connect(str(tmp_path / "missing"))


async def test_bytes_that_are_not_text_are_not_yaml(tmp_path: Path) -> None:
    kc = tmp_path / "kc"
    kc.write_bytes(b"\x80\x81 binary")
    with pytest.raises(UsageError, match=r"not valid YAML \(byte 0\): not UTF-8 text$"):
        await KubeSession.connect(str(kc))


def test_kubeconfig_env_entries_are_checked_and_missing_ones_skipped_like_kubectl(tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.write_text("clusters: []\ncontexts: []\nusers: []\n")
    bad = tmp_path / "bad"
    bad.write_text("garbage: [\n")
    assert check_kubeconfig_files([str(tmp_path / "missing"), str(good)], False, "KUBECONFIG") == [str(good)]
    with pytest.raises(UsageError, match=f"^KUBECONFIG {bad}: not valid YAML \\(line 2\\)"):
        check_kubeconfig_files([str(good), str(bad)], False, "KUBECONFIG")
    with pytest.raises(UsageError, match=f"^KUBECONFIG {tmp_path}: is a directory$"):
        check_kubeconfig_files([str(tmp_path)], False, "KUBECONFIG")
