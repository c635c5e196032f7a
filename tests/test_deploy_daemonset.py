"""deploy/daemonset.yaml: one file that applies as is, least privilege, evidence mounts read-only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
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
    for kind in ("ResourceQuota", "ServiceAccount", "DaemonSet", "ClusterRole", "Role"):
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
    block = text[text.index("add:") : text.index("seccompProfile:")]
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
    assert WRITABLE_HOST_PATHS | {SPOOL} <= set(mounts)
    for host_path, (mount_path, mount) in mounts.items():
        assert mount_path == "/host" + host_path, f"{host_path} must appear at /host{host_path} for --host-root /host"
        if host_path in WRITABLE_HOST_PATHS or host_path == SPOOL:
            assert not mount.get("readOnly"), host_path
        else:
            assert mount.get("readOnly") is True, f"{host_path} must be mounted read-only"


def _host_volumes(pod_spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """host path -> hostPath volume source."""
    return {v["hostPath"]["path"]: v["hostPath"] for v in pod_spec["volumes"] if "hostPath" in v}


# Created on the node if missing, and why: everything else must already exist (type Directory).
CREATED_BY_DESIGN = {
    SPOOL: "the agent's own span spool",
    "/run/vc": "hybrid vsock: sandboxes started after the agent must appear in the mount",
    "/run/kata": "hybrid vsock (runtime-rs): same",
    "/run/log/journal": "volatile journal; /run is a tmpfs and cannot be mounted whole (runtime sockets)",
    "/run/containerd/io.containerd.runtime.v2.task": "containerd only; tmpfs",
    "/run/containers/storage/overlay-containers": "CRI-O only; tmpfs",
    "/run/kata-containers": "Kata's shared dirs, made by its first sandbox; tmpfs",
    "/etc/kata-containers": "/etc is not mounted whole (kubelet credentials); an empty dir is inert",
    "/etc/containerd": "same",
}


def test_no_host_directory_is_created_outside_run_and_the_spool(pod_spec: dict[str, Any]) -> None:
    """DirectoryOrCreate invents directories on the node (/etc/crio on a containerd node) and
    cannot even start the pod where /usr is read-only (Flatcar, Talos): only where listed why."""
    for path, source in _host_volumes(pod_spec).items():
        if source["type"] == "DirectoryOrCreate":
            assert path in CREATED_BY_DESIGN, f"{path} would be created on every node that lacks it"
        else:
            assert source["type"] in ("Directory", "File"), f"{path}: {source['type']}"
    text = DEPLOY.read_text()
    assert "`DirectoryOrCreate` only where creating the directory is part of the design" in text


def test_evidence_comes_from_parents_every_node_has(pod_spec: dict[str, Any]) -> None:
    volumes = _host_volumes(pod_spec)
    for parent in ("/usr", "/lib", "/opt", "/var/log", "/proc", "/sys", "/dev"):
        assert volumes[parent]["type"] == "Directory", parent
    assert "/run" not in volumes, "/run holds containerd.sock and crio.sock; a read-only mount does not stop connect()"
    assert "/etc" not in volumes, "/etc holds the kubelet's credentials and /etc/shadow"
    assert {p for p in volumes if p.startswith("/etc/")} == {
        "/etc/kata-containers",
        "/etc/containerd",
        "/etc/machine-id",
        "/etc/os-release",
        "/etc/localtime",  # syslog and klog stamps are the node's wall clock
    }


def _static_prefix(read: str) -> str | None:
    """`/run/vc/sbs/<sid>/persist.json` -> `/run/vc/sbs/`; commands and placeholders -> None."""
    if not read.startswith("/"):
        return None
    cut = min((i for i in (read.find(c) for c in "<*{[ ") if i >= 0), default=len(read))
    return read[:cut]


def _node_paths_read() -> set[str]:
    """Every node path a collector reads: its declared `reads`, plus what a collector derives."""
    from kata_debug.collectors import REGISTRY
    from kata_debug.collectors.kata_config import _TOOLS

    paths = {p for name in REGISTRY for r in REGISTRY.load(name).reads if (p := _static_prefix(r))}
    paths |= {path for _, _, candidates in _TOOLS for path in candidates}  # kata-runtime kata-env, kata-ctl env
    paths |= {
        "/usr/bin/containerd",
        "/usr/local/bin/containerd",  # containerd --version
        "/lib/modules/",  # modules.builtin
        "/etc/machine-id",  # journalctl --root
        "/usr/lib/os-release",  # where /etc/os-release usually points
        "/opt/kata/share/defaults/kata-containers/configuration-qemu.toml",  # kata-deploy's handler ConfigPath
    }
    return paths


OPTIONAL_MOUNTS = {
    "/var/lib/rancher": "k3s / RKE2 only: a commented-out mount in the file",
    "/etc/crio": "CRI-O nodes only: a mount would invent /etc/crio on containerd nodes",
    "/etc/containers/storage.conf": "CRI-O nodes only, like /etc/crio",
    "/etc/docker/daemon.json": "Docker nodes only: /etc/docker holds keys, and an empty daemon.json stops dockerd",
}


def test_every_node_path_a_collector_reads_is_inside_a_mount(agent: dict[str, Any], pod_spec: dict[str, Any]) -> None:
    mounted = set(_host_mounts(agent, pod_spec))
    missing = []
    for path in sorted(_node_paths_read()):
        if any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounted):
            continue
        if any(path == o or path.startswith(o + "/") for o in OPTIONAL_MOUNTS):
            continue
        missing.append(path)
    assert not missing, f"not visible under /host: {missing}"
    text = DEPLOY.read_text()
    for optional in OPTIONAL_MOUNTS:
        assert f"#   mountPath: /host{optional}" in text and f"#     path: {optional}" in text, optional


def test_a_resource_quota_admits_the_node_critical_priority_outside_kube_system(
    docs: list[dict[str, Any]], pod_spec: dict[str, Any]
) -> None:
    """GKE (limitedResources) refuses system-node-critical pods outside kube-system unless the
    namespace has a quota scoped to that priority class."""
    (quota,) = by_kind(docs, "ResourceQuota")
    assert quota["metadata"]["namespace"] == "kata-debug"
    assert quota["spec"]["scopeSelector"]["matchExpressions"] == [
        {"scopeName": "PriorityClass", "operator": "In", "values": [pod_spec["priorityClassName"]]}
    ]
    assert int(quota["spec"]["hard"]["pods"]) >= 15000, "one agent per Kata node, in the largest clusters too"
    assert set(quota["spec"]["hard"]) == {"pods"}, "it limits nothing else"
    kinds = [d["kind"] for d in docs]
    assert kinds.index("ResourceQuota") < kinds.index("DaemonSet"), "in place before the first agent pod is admitted"


def test_resources_are_limits_with_equal_requests(agent: dict[str, Any]) -> None:
    res = agent["resources"]
    assert {"cpu", "memory"} <= set(res["limits"])
    assert res["requests"] == res["limits"]


def test_probes_run_commands_and_no_port_is_exposed(agent: dict[str, Any]) -> None:
    assert "ports" not in agent
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert set(agent[probe]) & {"httpGet", "tcpSocket", "grpc"} == set(), probe
        assert agent[probe]["exec"]["command"][:3] == ["python3", "-m", "kata_debug.agent.health"]


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
    from kata_debug.agent.service import AgentConfig
    from kata_debug.collectors.base import CollectorOptions

    spool = CollectorOptions().trace_spool_dir  # where `collect` reads by default
    assert AgentConfig(host_root=Path("/host")).spool == Path("/host" + spool), "the agent's default spool"
    mounts = _host_mounts(agent, pod_spec)
    assert mounts[spool][0] == "/host" + spool, "node-agent --host-root /host spools here by default"


def test_every_object_is_valid_for_the_kubernetes_api_schema(docs: list[dict[str, Any]]) -> None:
    """Round trip through the official client's models: a misspelt field is dropped (so the
    round trip differs) and a wrongly typed one is rejected, as the API server would."""
    from kubernetes.aio.client import ApiClient, models

    api = ApiClient()
    for doc in docs:
        model = getattr(models, f"V1{doc['kind']}")
        assert api.sanitize_for_serialization(model.from_dict(doc)) == doc, doc["kind"]


def _kata_deploy_node(root: Path) -> Path:
    """A node as kata-deploy leaves it, with the usual distro symlinks, plus things no collector needs."""
    from tests.hostroots import KATA_CONFIG, kata_node

    kata_node(root)
    defaults = root / "opt/kata/share/defaults/kata-containers"
    defaults.mkdir(parents=True)
    (defaults / "configuration-qemu.toml").write_text(KATA_CONFIG)
    (root / "etc/containerd").mkdir(parents=True)
    (root / "etc/containerd/config.toml").write_text(
        'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata-qemu]\n'
        'runtime_type = "io.containerd.kata-qemu.v2"\n'
        '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata-qemu.options]\n'
        'ConfigPath = "/opt/kata/share/defaults/kata-containers/configuration-qemu.toml"\n'
    )
    (root / "usr/share/defaults/kata-containers").mkdir(parents=True)
    (root / "usr/share/defaults/kata-containers/configuration.toml").write_text(KATA_CONFIG)
    (root / "usr/lib/modules/6.8.0-51-generic").mkdir(parents=True)
    (root / "usr/lib/modules/6.8.0-51-generic/modules.builtin").write_text("kernel/arch/x86/kvm/kvm.ko\n")
    (root / "lib").symlink_to("usr/lib")  # merged /usr
    (root / "usr/lib/os-release").write_text('NAME="Ubuntu"\nPRETTY_NAME="Ubuntu 24.04.1 LTS"\n')
    (root / "etc/os-release").symlink_to("../usr/lib/os-release")
    (root / "etc/machine-id").write_text("0f1e2d3c4b5a69788796a5b4c3d2e1f0\n")
    (root / "proc/sys/kernel").mkdir(parents=True)
    (root / "proc/sys/kernel/osrelease").write_text("6.8.0-51-generic\n")
    (root / "proc/cmdline").write_text("BOOT_IMAGE=/vmlinuz root=/dev/sda1\n")
    (root / "proc/modules").write_text("vhost_vsock 24576 0 - Live 0x0\n")
    (root / "var/log/containerd").mkdir(parents=True)
    (root / "var/log/containerd/containerd.log").write_text(
        'time="2026-01-01T00:00:00Z" level=info msg="shim started" sandbox=sb0123456789\n'
    )
    (root / "usr/share/zoneinfo/Europe").mkdir(parents=True)
    shutil.copy("/usr/share/zoneinfo/Europe/Berlin", root / "usr/share/zoneinfo/Europe/Berlin")
    (root / "etc/localtime").symlink_to("../usr/share/zoneinfo/Europe/Berlin")
    (root / "var/log/kern.log").write_text("Jan  1 00:00:01 node1 kernel: [ 1.0] kvm: vcpu0 unhandled rdmsr\n")
    (root / "var/log/syslog").write_text("Jan  1 00:00:02 node1 kata[7]: level=error sandbox=sb0123456789\n")
    (root / "var/log/kubelet.log").write_text("E0101 00:00:03.000000    42 kubelet.go:1] sandbox failed\n")
    (root / "var/log/audit").mkdir(parents=True)
    (root / "var/log/audit/audit.log").write_text("type=AVC msg=audit(1767225600.000:1): avc:  denied  { open }\n")
    for d in ("sys", "dev", "var/lib/kubelet/pki"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "var/lib/kubelet/pki/kubelet-client.key").write_text("not for the agent\n")
    return root


def _pod_view(node: Path, view: Path, pod_spec: dict[str, Any], agent: dict[str, Any]) -> None:
    """What the agent container sees at /host: each hostPath volume bound at its mountPath.

    The kubelet resolves the hostPath on the node (so a `/lib -> usr/lib` symlink mounts
    /usr/lib); a copy stands in for the bind mount.
    """
    from kata_debug.node.hostroot import HostRoot

    host = HostRoot.at(node)
    for host_path, source in _host_volumes(pod_spec).items():
        real = host.resolve(host_path)
        target = view / host_path.lstrip("/")
        if real.is_dir():
            shutil.copytree(real, target, symlinks=True)
        elif real.is_file() and source["type"] == "File":
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(real, target)
        else:
            assert source["type"] == "DirectoryOrCreate", f"{host_path}: the pod would not start on this node"
            target.mkdir(parents=True)
    mounted = {m["mountPath"] for m in agent["volumeMounts"]}
    assert {"/host" + p for p in _host_volumes(pod_spec)} <= mounted


def _collect(root: Path, out: Path) -> dict[str, bytes]:
    from tests.bundles import read_bundle

    argv = [
        sys.executable,
        "-m",
        "kata_debug",
        "collect",
        "--host-root",
        str(root),
        "--output",
        str(out),
        "--node-name",
        "kata-node-1",
        "--since",
        "36500d",
    ]  # the fixture log's fixed date stays in the window
    for name in ("host", "kata-config", "oci-specs", "sandboxes", "resource-limits", "shim-logs"):
        argv += ["--collector", name]
    proc = subprocess.run(argv, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, timeout=120)
    assert proc.returncode in (0, 3), proc.stderr.decode()
    return read_bundle(out).members


def test_the_collectors_find_in_the_pod_what_the_node_has(
    tmp_path: Path, pod_spec: dict[str, Any], agent: dict[str, Any]
) -> None:
    node = _kata_deploy_node(tmp_path / "node")
    view = tmp_path / "view"
    _pod_view(node, view, pod_spec, agent)
    assert not (view / "var/lib/kubelet").exists(), "only the mounted directories are visible"
    on_node = _collect(node, tmp_path / "node.tar.gz")
    in_pod = _collect(view, tmp_path / "pod.tar.gz")
    evidence = {n for n in on_node if n != "manifest.json"}
    assert {n for n in in_pod if n != "manifest.json"} == evidence
    assert {
        "host/files/etc/os-release",  # /etc/os-release -> ../usr/lib/os-release
        "host/files/etc/containerd/config.toml",
        "kata-config/files/etc/kata-containers/configuration.toml",
        "kata-config/files/usr/share/defaults/kata-containers/configuration.toml",
        "kata-config/files/opt/kata/share/defaults/kata-containers/configuration-qemu.toml",
        "oci-specs/containerd/k8s.io/sb0123456789/config.json",
        "sandboxes/sb0123456789/run-vc-sbs-persist.json",
        "shim-logs/files/var/log/containerd/containerd.log",
        "shim-logs/files/var/log/kern.log",
        "shim-logs/files/var/log/syslog",
        "shim-logs/files/var/log/kubelet.log",
        "shim-logs/files/var/log/audit/audit.log",
    } <= evidence
    for log in ("kern.log", "syslog", "kubelet.log"):  # stamps read in the node's zone from the mounted /etc/localtime
        assert in_pod[f"shim-logs/files/var/log/{log}"] == on_node[f"shim-logs/files/var/log/{log}"], log
    zone = json.loads(in_pod["shim-logs/summary.json"])["node_time_zone"]
    assert zone == "/etc/localtime", "the mounted file, its TZif data read (the symlink stays on the node)"
    for summary in ("host/facts.json", "kata-config/summary.json", "oci-specs/index.json", "sandboxes/sandboxes.json"):
        assert in_pod[summary] == on_node[summary], summary
    facts = json.loads(in_pod["host/facts.json"])
    assert facts["os"] == "Ubuntu 24.04.1 LTS" and facts["modules"]["kvm"] == "builtin", "through /lib -> usr/lib"
    (handler,) = json.loads(in_pod["kata-config/summary.json"])["handlers"]
    assert handler["sizing"]["default_memory"] == 2048, "the handler's ConfigPath under /opt/kata was read"
