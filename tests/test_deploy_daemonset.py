"""deploy/daemonset.yaml: one file that applies as is, least privilege, evidence mounts read-only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy" / "daemonset.yaml"
WRITABLE_HOST_PATHS = {"/run/vc", "/run/kata"}  # hybrid vsock: the agent creates <uds>_10240 there
SPOOL = "/var/lib/kata-debug/traces"  # the agent's own span spool (size-capped by the agent)


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(DEPLOY.read_text()) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


@pytest.fixture(scope="module")
def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (ds,) = by_kind(docs, "DaemonSet")
    return ds["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def agent(pod_spec: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod_spec["containers"]
    return container


def test_file_holds_namespace_serviceaccount_rbac_and_daemonset(docs: list[dict[str, Any]]) -> None:
    kinds = [d["kind"] for d in docs]
    assert kinds[0] == "Namespace", "the namespace must be created before what lives in it"
    for kind in ("ServiceAccount", "DaemonSet", "ClusterRole", "Role"):
        assert kind in kinds
    for d in docs:
        if d["kind"] not in ("Namespace", "ClusterRole"):
            assert d["metadata"]["namespace"] == "kata-debug", d["kind"]


def test_namespace_allows_privileged_pod_security(docs: list[dict[str, Any]]) -> None:
    (ns,) = by_kind(docs, "Namespace")
    assert ns["metadata"]["name"] == "kata-debug"
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


def test_agent_account_has_no_api_access(docs: list[dict[str, Any]], pod_spec: dict[str, Any]) -> None:
    (sa,) = by_kind(docs, "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False
    assert pod_spec["serviceAccountName"] == sa["metadata"]["name"]
    assert pod_spec["automountServiceAccountToken"] is False
    assert not by_kind(docs, "RoleBinding") and not by_kind(docs, "ClusterRoleBinding"), "nothing is bound by default"


def test_collect_role_grants_exec_get_and_create_only_in_kata_debug(docs: list[dict[str, Any]]) -> None:
    (role,) = by_kind(docs, "Role")
    exec_rules = [r for r in role["rules"] if "pods/exec" in r["resources"]]
    assert exec_rules and set(exec_rules[0]["verbs"]) == {"get", "create"}
    assert role["metadata"]["namespace"] == "kata-debug"
    (reader,) = by_kind(docs, "ClusterRole")
    for rule in reader["rules"]:
        assert set(rule["verbs"]) <= {"get", "list"}, f"reader role must be read-only: {rule}"
        assert "pods/exec" not in rule["resources"] and "secrets" not in rule["resources"]


def test_schedules_on_every_kata_node_including_pending_installs(pod_spec: dict[str, Any]) -> None:
    terms = pod_spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": "katacontainers.io/kata-runtime", "operator": "Exists"}]}]
    effects = {t.get("effect") for t in pod_spec["tolerations"] if t.get("operator") == "Exists" and "key" not in t}
    assert effects == {"NoSchedule", "NoExecute"}
    assert pod_spec["priorityClassName"] == "system-node-critical"


def test_security_context_is_root_without_privileges(agent: dict[str, Any], pod_spec: dict[str, Any]) -> None:
    sc = agent["securityContext"]
    assert sc.get("privileged") is not True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["runAsUser"] == 0
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) <= {"DAC_READ_SEARCH"}, "every added capability needs a reason in a comment"
    assert sc["seccompProfile"]["type"] in ("Unconfined", "Localhost"), "AF_VSOCK is blocked by RuntimeDefault"
    for key in ("hostPID", "hostNetwork", "hostIPC"):
        assert not pod_spec.get(key)


def test_every_added_capability_is_explained_in_a_comment() -> None:
    text = DEPLOY.read_text()
    block = text[text.index("add:"): text.index("seccompProfile:")]
    assert "# " in block.split("- DAC_READ_SEARCH")[0], "a comment must say why DAC_READ_SEARCH is added"


def _host_mounts(agent: dict[str, Any], pod_spec: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """host path -> (mount path, volumeMount) for every hostPath volume mounted."""
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    out = {}
    for m in agent["volumeMounts"]:
        v = volumes[m["name"]]
        if "hostPath" in v:
            out[v["hostPath"]["path"]] = (m["mountPath"], m)
    return out


def test_host_mounts_live_under_host_and_are_read_only_except_hybrid_vsock_and_spool(
    agent: dict[str, Any], pod_spec: dict[str, Any]
) -> None:
    mounts = _host_mounts(agent, pod_spec)
    for required in (
        "/etc/kata-containers", "/usr/share/defaults/kata-containers", "/opt/kata", "/etc/containerd", "/etc/crio",
        "/var/log/journal", "/run/log/journal", "/run/containerd/io.containerd.runtime.v2.task", "/etc/machine-id",
        "/proc", "/run/vc", "/run/kata",
    ):
        assert required in mounts, required
    for host_path, (mount_path, mount) in mounts.items():
        assert mount_path == "/host" + host_path, f"{host_path} must appear at /host{host_path} for --host-root /host"
        if host_path in WRITABLE_HOST_PATHS or host_path == SPOOL:
            assert not mount.get("readOnly"), host_path
        else:
            assert mount.get("readOnly") is True, f"{host_path} must be mounted read-only"


def test_resources_are_limits_with_equal_requests(agent: dict[str, Any]) -> None:
    res = agent["resources"]
    assert {"cpu", "memory"} <= set(res["limits"])
    assert res["requests"] == res["limits"]


def test_probes_run_commands_and_no_port_is_exposed(agent: dict[str, Any]) -> None:
    assert "ports" not in agent
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert set(agent[probe]) & {"httpGet", "tcpSocket", "grpc"} == set(), probe
        assert agent[probe]["exec"]["command"][:3] == ["python3", "-m", "kata_debug.node_agent_health"]


def test_node_name_comes_from_the_downward_api(agent: dict[str, Any]) -> None:
    env = {e["name"]: e for e in agent["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"


def test_otlp_exporter_is_configured_by_standard_env_vars(agent: dict[str, Any]) -> None:
    (source,) = agent["envFrom"]
    assert source["configMapRef"]["optional"] is True, "the file must apply without an OpenTelemetry Collector"
    text = DEPLOY.read_text()
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in text and ".svc.cluster.local:4317" in text


def test_agent_runs_node_agent_with_host_root(agent: dict[str, Any]) -> None:
    args = agent["args"]
    assert args[0] == "node-agent"
    assert args[args.index("--host-root") + 1] == "/host"


def test_containerfile_builds_from_this_package() -> None:
    text = (REPO / "deploy" / "Containerfile").read_text()
    for source in ("pyproject.toml", "kata_debug", "collectors", "forwarder"):
        assert f"COPY {source}" in text or f" {source} " in text
        assert (REPO / source).exists()
    assert 'ENTRYPOINT ["kata-debug"]' in text


def test_probes_read_the_state_file_the_agent_writes(agent: dict[str, Any]) -> None:
    args = agent["args"]
    state = args[args.index("--state-file") + 1]
    assert state.startswith("/tmp/"), "the state file must be on the writable emptyDir"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert agent[probe]["exec"]["command"][3] == state
    assert "--ready" in agent["readinessProbe"]["exec"]["command"]


def test_agent_spool_is_where_collect_reads_it(agent: dict[str, Any], pod_spec: dict[str, Any]) -> None:
    from collectors.agent_traces import DEFAULT_SPOOL_DIR
    from kata_debug.node_agent import SPOOL_NODE_PATH

    assert SPOOL_NODE_PATH == DEFAULT_SPOOL_DIR
    mounts = _host_mounts(agent, pod_spec)
    assert mounts[SPOOL_NODE_PATH][0] == "/host" + SPOOL_NODE_PATH, "node-agent --host-root /host spools here by default"


def test_every_object_is_valid_for_the_kubernetes_api_schema(docs: list[dict[str, Any]]) -> None:
    """Round trip through the official client's models: a misspelt field is dropped (so the
    round trip differs) and a wrongly typed one is rejected, as the API server would."""
    from kubernetes.aio.client import ApiClient, models

    api = ApiClient()
    for doc in docs:
        model = getattr(models, f"V1{doc['kind']}")
        assert api.sanitize_for_serialization(model.from_dict(doc)) == doc, doc["kind"]
