"""`kata-debug collect --cluster` against a loopback API server whose exec runs the real node collect.

Every node bundle in these tests was produced by `kata-debug collect --host-root /host
--output -` running against that node's synthetic host root, streamed through the exec
websocket exactly as a real API server frames it.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from kata_debug.cluster.options import ClusterOptions
from kata_debug.cluster.run import run_cluster_collection
from kata_debug.errors import KataDebugError, UsageError
from tests.bundles import Bundle, read_bundle
from tests.fake_kube_exec import ClusterFake, ExecBehaviour
from tests.hostroots import add_task
from tests.kata_cluster import SECRET, build
from tests.upload_server import UploadServer

REPO = Path(__file__).resolve().parents[1]
FAST = ["--collector", "oci-specs", "--collector", "kata-config"]


@pytest.fixture
async def fake() -> Any:
    async with ClusterFake() as server:
        yield server


async def cli(*args: str, timeout: float = 120, cwd: Path = REPO) -> tuple[int, bytes, bytes]:
    """The real CLI in its own process (the fake server keeps running on this loop)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kata_debug",
        *args,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out, err


def options(fake: ClusterFake, tmp: Path, **kw: Any) -> ClusterOptions:
    kw.setdefault("node_args", list(FAST))
    return ClusterOptions(kubeconfig=str(fake.kubeconfig(tmp / "kubeconfig")), output=str(tmp / "cluster.tar.gz"), **kw)


def node_bundle(bundle: Bundle, member: str) -> Bundle:
    return read_bundle(bundle.members[member])


def entries(bundle: Bundle) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in bundle.manifest["nodes"]}


async def test_cluster_bundle_holds_cluster_objects_and_every_kata_node_bundle(
    fake: ClusterFake, tmp_path: Path
) -> None:
    cluster = build(fake, tmp_path, ["kata-a", "kata-b"])
    code, out, err = await cli(
        "collect",
        "--cluster",
        "--kubeconfig",
        str(fake.kubeconfig(tmp_path / "kc")),
        "--output",
        str(tmp_path / "c.tar.gz"),
        "--format",
        "json",
        *FAST,
    )
    assert code == 0, err.decode()
    summary = json.loads(out)
    assert summary["exit_code"] == 0 and summary["context"] == "fake"
    bundle = read_bundle(tmp_path / "c.tar.gz")
    m = bundle.manifest
    assert m["kind"] == "cluster" and m["schema_version"] == 1 and m["tool_version"]
    assert m["started_at"] <= m["finished_at"]
    assert m["kata_runtime_classes"] == ["kata-qemu"] and m["kata_pods"] == 1
    nodes = entries(bundle)
    assert set(nodes) == {"kata-a", "kata-b"}, "only Kata nodes; plain-1 has neither the label nor Kata pods"
    for name in ("kata-a", "kata-b"):
        n = nodes[name]
        assert (n["status"], n["error"], n["exit_code"]) == ("ok", None, 0)
        assert n["member"] == f"nodes/{name}/bundle.tar.gz"
        assert n["bytes"] == len(bundle.members[n["member"]]) > 0 and n["duration_s"] > 0
        inner = node_bundle(bundle, n["member"])
        assert inner.manifest["node"] == name, "the node bundle is named after the Kubernetes node"
        assert inner.manifest["host_root"] == str(cluster.roots[name]), "/host was the node's root"
        assert inner.json("oci-specs/index.json")["kata_sandboxes"] == [f"sb-{name}"]
    # The cluster-level part.
    assert [p["name"] for p in bundle.json("cluster/pods.json")] == ["web-7d9f8-x2x4q"]
    web = bundle.json("cluster/pods/shop/web-7d9f8-x2x4q.json")
    assert [o["kind"] for o in web["owners"]] == ["ReplicaSet", "Deployment"]
    assert [e["reason"] for e in web["events"]] == ["FailedCreatePodSandBox"], "only the Kata pod's events"
    assert bundle.json("cluster/owners/shop/Deployment/web.json")["spec"]["replicas"] == 1
    rcs = {rc["metadata"]["name"]: rc for rc in bundle.json("cluster/runtimeclasses.json")}
    assert rcs["kata-qemu"]["overhead"]["podFixed"] == {"cpu": "250m", "memory": "160Mi"}
    assert rcs["kata-qemu"]["kataDebug"]["kata"] is True and rcs["runc"]["kataDebug"]["kata"] is False
    summaries = {n["name"]: n for n in bundle.json("cluster/nodes.json")}
    assert summaries["kata-a"]["container_runtime_version"] == "containerd://1.7.24"
    assert summaries["kata-a"]["kata_pods"] == ["shop/web-7d9f8-x2x4q"]
    assert summaries["plain-1"]["kata_runtime_label"] is None
    assert "cluster/nodes/kata-a.json" in bundle.members and "cluster/nodes/plain-1.json" not in bundle.members
    assert bundle.json("cluster/limitranges/shop.json")[0]["spec"]["limits"][0]["default"]["memory"] == "1Gi"
    assert bundle.json("cluster/kata-deploy/kube-system/kata-deploy.json")["status"]["numberReady"] == 2
    limits = bundle.json("cluster/limits.json")
    (web_vm,) = [w for w in limits["workloads"] if w["kind"] == "Pod"]
    assert (web_vm["name"], web_vm["vm"]["vcpus"], web_vm["vm"]["memory_mib"]) == ("web-7d9f8-x2x4q", 3, 3072)
    assert "request-ignored" in limits["summary"]["by_rule"], "the limits analysis of every Kata pod"
    log = bundle.members["cluster/kata-deploy/kube-system/logs/kata-deploy-kata-a/kube-kata.log"].decode()
    assert "Installing Kata Containers artifacts" in log and "ghp_leakyTokenValue123" not in log
    # No secret anywhere: cluster objects, logs, and inside every node bundle.
    everything = b"".join(bundle.members.values()) + b"".join(
        b"".join(node_bundle(bundle, n["member"]).members.values()) for n in nodes.values()
    )
    assert SECRET.encode() not in everything and b"hunter2" not in everything
    assert m["redactions"]["k8s-env"] >= 1


async def test_node_failures_are_recorded_while_the_other_nodes_finish(fake: ClusterFake, tmp_path: Path) -> None:
    names = ["ok-1", "forbidden-1", "no-agent-1", "cut-1", "exit-2", "partial-1"]
    cluster = build(fake, tmp_path, names)
    fake.behave(cluster.agent("forbidden-1"), ExecBehaviour("forbidden"))
    del fake.objects[f"/api/v1/namespaces/kata-debug/pods/{cluster.agent('no-agent-1')}"]
    fake.behave(cluster.agent("cut-1"), ExecBehaviour("cut", host_root=cluster.roots["cut-1"], cut_after=700))
    fake.behave(cluster.agent("exit-2"), ExecBehaviour("run", host_root=tmp_path / "no-such-root"))
    add_task(cluster.roots["partial-1"], "k8s.io", "broken", '{"ociVersion": "1.0.2", "process": ')

    result = await run_cluster_collection(options(fake, tmp_path, parallel=4))
    assert result.exit_code == 3
    bundle = read_bundle(tmp_path / "cluster.tar.gz")
    n = entries(bundle)
    assert set(n) == set(names), "every node has an entry"
    assert n["ok-1"]["status"] == "ok"
    assert n["forbidden-1"]["status"] == "failed"
    assert "forbidden" in n["forbidden-1"]["error"] and "pods/exec" in n["forbidden-1"]["error"]
    assert (n["no-agent-1"]["status"], n["no-agent-1"]["via"]) == ("ok", "ephemeral"), "a collector pod stood in"
    assert n["no-agent-1"]["pod"].startswith("kata-debug-no-agent-1-") and not fake.pods_labelled(
        "kata-debug", "app.kubernetes.io/name", "kata-debug-collector"
    ), "and was deleted"
    assert {e["via"] for name, e in n.items() if name != "no-agent-1"} == {"agent"}
    assert n["cut-1"]["status"] == "failed" and "without an exit status" in n["cut-1"]["error"]
    assert n["cut-1"]["bytes"] == 700 and n["cut-1"]["member"] == "nodes/cut-1/bundle.tar.gz.partial"
    assert len(bundle.members["nodes/cut-1/bundle.tar.gz.partial"]) == 700, "what arrived is kept for salvage"
    assert n["exit-2"]["status"] == "failed" and n["exit-2"]["exit_code"] == 2
    assert "not a directory" in n["exit-2"]["error"], "the node's own one-line error is in the entry"
    assert n["partial-1"]["status"] == "partial" and n["partial-1"]["exit_code"] == 3
    inner = node_bundle(bundle, "nodes/partial-1/bundle.tar.gz")
    assert inner.collector("oci-specs")["status"] == "partial", "exit 3: a complete bundle with failed collectors"
    for entry in n.values():
        assert set(entry) >= {"name", "status", "error", "duration_s", "bytes"}


async def test_a_node_that_never_answers_times_out_and_the_others_finish(fake: ClusterFake, tmp_path: Path) -> None:
    cluster = build(fake, tmp_path, ["hang-1", "quick-1"])
    fake.behave(cluster.agent("hang-1"), ExecBehaviour("hang"))
    node_bundle_file = tmp_path / "prepared.tar.gz"
    node_bundle_file.write_bytes(b"\x1f\x8b" + b"\0" * 5000)
    fake.behave(cluster.agent("quick-1"), ExecBehaviour("file", file=node_bundle_file))
    result = await run_cluster_collection(options(fake, tmp_path, node_timeout=2))
    n = {r.name: r for r in result.nodes}
    assert n["hang-1"].status == "timeout" and "--node-timeout 2" in (n["hang-1"].error or "")
    assert 2 <= n["hang-1"].duration_s < 6
    assert n["hang-1"].bytes == 2 and n["hang-1"].member == "nodes/hang-1/bundle.tar.gz.partial"
    assert (n["quick-1"].status, n["quick-1"].bytes) == ("ok", 5002)
    assert result.exit_code == 3
    assert fake.exec.sessions[0]["command"][fake.exec.sessions[0]["command"].index("--deadline") + 1] == "1.6"


async def test_exit_code_and_summary_say_partial_on_the_command_line(fake: ClusterFake, tmp_path: Path) -> None:
    cluster = build(fake, tmp_path, ["good", "refused"])
    fake.behave(cluster.agent("refused"), ExecBehaviour("forbidden"))
    code, out, err = await cli(
        "collect",
        "--cluster",
        "--kubeconfig",
        str(fake.kubeconfig(tmp_path / "kc")),
        "--output",
        str(tmp_path / "c.tar.gz"),
        *FAST,
    )
    assert code == 3
    text = out.decode()
    assert "good" in text and "refused" in text and "forbidden" in text
    assert "refused: failed" in err.decode(), "a plain progress line per node when stderr is not a terminal"


async def test_bundle_to_stdout_keeps_the_summary_on_stderr(fake: ClusterFake, tmp_path: Path) -> None:
    build(fake, tmp_path, ["kata-a"])
    code, out, err = await cli(
        "collect",
        "--cluster",
        "--kubeconfig",
        str(fake.kubeconfig(tmp_path / "kc")),
        "--output",
        "-",
        "--format",
        "json",
        *FAST,
    )
    assert code == 0, err.decode()
    bundle = read_bundle(out)
    assert entries(bundle)["kata-a"]["status"] == "ok"
    assert json.loads(err[err.index(b"{") :])["nodes"][0]["name"] == "kata-a"


async def test_node_selection_by_name_selector_and_kata_pods(fake: ClusterFake, tmp_path: Path) -> None:
    build(fake, tmp_path, ["kata-a", "kata-b"])
    fake.add(
        {
            **fake.find("/api/v1/nodes/kata-b"),
            "metadata": {
                **fake.find("/api/v1/nodes/kata-b")["metadata"],
                "labels": {"katacontainers.io/kata-runtime": "false", "pool": "gpu"},
            },
        }
    )
    r = await run_cluster_collection(options(fake, tmp_path, nodes=["kata-b", "ghost"]))
    assert {n.name: n.status for n in r.nodes} == {"kata-b": "ok", "ghost": "failed"}
    assert next(n for n in r.nodes if n.name == "ghost").error == "no such node in the cluster"
    r = await run_cluster_collection(options(fake, tmp_path, selector="pool=gpu"))
    assert [n.name for n in r.nodes] == ["kata-b"]
    # A node running Kata pods is collected even without kata-deploy's label (manual install).
    node_a = fake.find("/api/v1/nodes/kata-a")
    fake.add({**node_a, "metadata": {**node_a["metadata"], "labels": {}}})
    r = await run_cluster_collection(options(fake, tmp_path))
    assert sorted(n.name for n in r.nodes) == ["kata-a", "kata-b"]


async def test_cluster_reads_that_are_forbidden_are_recorded_not_fatal(fake: ClusterFake, tmp_path: Path) -> None:
    build(fake, tmp_path, ["kata-a"])
    fake.forbidden.add("/api/v1/namespaces/shop/events")
    fake.forbidden.add("/api/v1/namespaces/kube-system/pods/kata-deploy-kata-a/log")
    r = await run_cluster_collection(options(fake, tmp_path))
    assert r.exit_code == 3 and [n.status for n in r.nodes] == ["ok"]
    items = {f.item: f.reason for f in r.items_failed}
    assert items["events in namespace shop"].startswith("HTTP 403")
    assert any(i.startswith("log kube-system/kata-deploy-kata-a") for i in items)
    bundle = read_bundle(tmp_path / "cluster.tar.gz")
    objects = bundle.manifest["collectors"][0]
    assert objects["name"] == "cluster-objects" and objects["status"] == "partial"
    assert bundle.json("cluster/pods/shop/web-7d9f8-x2x4q.json")["events"] == []


async def test_unreachable_api_server_is_one_error_and_no_bundle(tmp_path: Path) -> None:
    fake = ClusterFake()
    await fake.start()
    kubeconfig = fake.kubeconfig(tmp_path / "kc")
    await fake.close()
    with pytest.raises(KataDebugError, match="cannot reach the API server"):
        await run_cluster_collection(ClusterOptions(kubeconfig=str(kubeconfig), output=str(tmp_path / "c.tar.gz")))
    assert not list(tmp_path.glob("c.tar.gz*"))


async def test_wrong_token_is_fatal_before_anything_is_written(tmp_path: Path) -> None:
    async with ClusterFake(token="right") as fake:
        kubeconfig = fake.kubeconfig(tmp_path / "kc", token="wrong")
        with pytest.raises(KataDebugError, match="401"):
            await run_cluster_collection(ClusterOptions(kubeconfig=str(kubeconfig), output=str(tmp_path / "c.tar.gz")))
    assert not list(tmp_path.glob("c.tar.gz*"))


async def test_bad_options_are_one_line_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--parallel 0"):
        await run_cluster_collection(ClusterOptions(parallel=0))
    with pytest.raises(UsageError, match="--node-timeout nan"):
        await run_cluster_collection(ClusterOptions(node_timeout=float("nan")))
    with pytest.raises(UsageError, match="--kubeconfig"):
        await run_cluster_collection(ClusterOptions(kubeconfig=str(tmp_path / "missing")))
    code, _, err = await cli("collect", "--cluster", "--host-root", "/tmp")
    assert (
        code == 2
        and err.decode().strip()
        == "kata-debug: error: --host-root /tmp: not valid with --cluster (nodes always use /host)"
    )
    code, _, err = await cli("collect", "--parallel", "3")
    assert code == 2 and "--parallel: only valid with --cluster" in err.decode()


@pytest.mark.parametrize("command", [["collect", "--cluster", "--output", "c.tar.gz"], ["limits"]])
async def test_unusable_kubeconfigs_are_one_line_exit_2_for_every_command_that_reads_one(
    tmp_path: Path, command: list[str]
) -> None:
    garbage = tmp_path / "kc"
    garbage.write_text("garbage: [\n")
    empty = tmp_path / "empty"
    empty.write_text("")
    for kubeconfig, problem in [(garbage, "not valid YAML (line 2)"), (empty, "empty"), (tmp_path, "is a directory")]:
        code, _, err = await cli(*command, "--kubeconfig", str(kubeconfig), cwd=tmp_path)
        text = err.decode()
        assert code == 2 and text.count("\n") == 1 and "Traceback" not in text, text
        assert text.startswith(f"kata-debug: error: --kubeconfig {kubeconfig}: {problem}"), text
    assert not list(tmp_path.glob("c.tar.gz*"))


async def test_with_only_the_role_kata_debug_collect_every_agent_node_is_collected(
    fake: ClusterFake, tmp_path: Path
) -> None:
    """The README's minimal grant: list pods and exec in namespace kata-debug, nothing else."""
    build(fake, tmp_path, ["kata-a", "kata-b"])
    fake.only_namespace("kata-debug")
    r = await run_cluster_collection(options(fake, tmp_path))
    assert {n.name: n.status for n in r.nodes} == {"kata-a": "ok", "kata-b": "ok"}, "every node with an agent pod"
    assert r.exit_code == 3, "the cluster objects could not be read: partial"
    items = {f.item: f.reason for f in r.items_failed}
    assert items["nodes"].startswith("HTTP 403") and items["pods"].startswith("HTTP 403")
    bundle = read_bundle(tmp_path / "cluster.tar.gz")
    selection = bundle.manifest["node_selection"]
    assert selection["from"] == "agent pods"
    assert selection["note"].startswith("nodes cannot be listed (HTTP 403")
    for name in ("kata-a", "kata-b"):
        assert node_bundle(bundle, f"nodes/{name}/bundle.tar.gz").manifest["node"] == name


async def test_without_the_node_list_node_names_are_kept_and_a_selector_is_ignored_with_a_note(
    fake: ClusterFake, tmp_path: Path
) -> None:
    build(fake, tmp_path, ["kata-a", "kata-b"])
    fake.only_namespace("kata-debug")
    r = await run_cluster_collection(options(fake, tmp_path, nodes=["kata-b"]))
    assert [(n.name, n.status) for n in r.nodes] == [("kata-b", "ok")], "--node is respected"
    r = await run_cluster_collection(options(fake, tmp_path, selector="pool=gpu"))
    assert sorted(n.name for n in r.nodes) == ["kata-a", "kata-b"], "labels are unknown: every agent node"
    (note,) = [f for f in r.items_failed if f.item == "node selection -l pool=gpu"]
    assert note.reason.endswith("; -l pool=gpu ignored (node labels unknown)")
    assert read_bundle(tmp_path / "cluster.tar.gz").manifest["node_selection"]["note"] == note.reason


async def test_when_only_the_agent_pods_are_hidden_each_node_says_so(fake: ClusterFake, tmp_path: Path) -> None:
    build(fake, tmp_path, ["kata-a"])
    fake.forbidden.add("/api/v1/namespaces/kata-debug/pods")
    r = await run_cluster_collection(options(fake, tmp_path))
    (node,) = r.nodes
    assert node.status == "failed"
    assert node.error is not None and node.error.startswith(
        "cannot list the kata-debug agent pods in namespace kata-debug: HTTP 403"
    ), node.error
    assert "cluster/pods/shop/web-7d9f8-x2x4q.json" in read_bundle(tmp_path / "cluster.tar.gz").members


async def test_an_identity_that_can_list_neither_nodes_nor_agent_pods_stops_before_writing(
    fake: ClusterFake, tmp_path: Path
) -> None:
    build(fake, tmp_path, ["kata-a"])
    fake.only_namespace("somewhere-else", user="system:anonymous")
    with pytest.raises(KataDebugError) as info:
        await run_cluster_collection(options(fake, tmp_path))
    message = str(info.value)
    assert "forbidden: cannot list nodes or pods in namespace kata-debug" in message
    assert 'User "system:anonymous"' in message, "names the identity the server saw"
    assert "check the credentials and RBAC (Role kata-debug-collect" in message
    assert not list(tmp_path.glob("cluster.tar.gz*")) and not fake.exec.sessions
    code, out, err = await cli(
        "collect",
        "--cluster",
        "--kubeconfig",
        str(fake.kubeconfig(tmp_path / "kc")),
        "--output",
        str(tmp_path / "c.tar.gz"),
    )
    assert code == 1 and err.decode().count("\n") == 1, err.decode()
    assert err.decode().startswith(f"kata-debug: error: server {fake.url} (context fake): forbidden: ")
    assert not list(tmp_path.glob("c.tar.gz*"))


async def test_version_being_private_does_not_stop_the_run(fake: ClusterFake, tmp_path: Path) -> None:
    build(fake, tmp_path, ["kata-a"])
    fake.forbidden.add("/version")
    r = await run_cluster_collection(options(fake, tmp_path))
    assert [n.status for n in r.nodes] == ["ok"] and r.exit_code == 0


class NotKube:
    """A loopback web server that is not an API server: a proxy's 404 page, or a JSON health check."""

    def __init__(self, version: web.Response | None) -> None:
        self.version = version

    async def handle(self, request: web.Request) -> web.Response:
        if request.path == "/version" and self.version is not None:
            return self.version
        return web.Response(
            status=404, text="<html><body><h1>404 Not Found</h1></body></html>", content_type="text/html"
        )

    async def __aenter__(self) -> str:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


def kubeconfig_for(url: str, path: Path) -> Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "web",
                "clusters": [{"name": "web", "cluster": {"server": url}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "web", "context": {"cluster": "web", "user": "u"}}],
            }
        )
    )
    return path


@pytest.mark.parametrize(
    ("version", "why"),
    [
        (None, "GET /version: HTTP 404"),
        (web.Response(text="<html>welcome</html>", content_type="text/html"), "GET /version: response is not JSON"),
        (web.json_response({"status": "ok"}), "GET /version: no gitVersion in the answer"),
    ],
)
async def test_a_server_that_is_not_kubernetes_is_one_error_and_no_bundle(
    tmp_path: Path, version: web.Response | None, why: str
) -> None:
    async with NotKube(version) as url:
        kc = kubeconfig_for(url, tmp_path / "kc")
        with pytest.raises(KataDebugError) as info:
            await run_cluster_collection(ClusterOptions(kubeconfig=str(kc), output=str(tmp_path / "c.tar.gz")))
        assert str(info.value) == f"server {url} (context web): not a Kubernetes API server ({why})"
        if version is None:
            code, _, err = await cli(
                "collect", "--cluster", "--kubeconfig", str(kc), "--output", str(tmp_path / "c.tar.gz")
            )
            assert code == 1 and err.decode() == f"kata-debug: error: {info.value}\n"
    assert not list(tmp_path.glob("c.tar.gz*"))


async def test_exec_uses_the_v5_subprotocol_and_the_agent_container(fake: ClusterFake, tmp_path: Path) -> None:
    build(fake, tmp_path, ["kata-a"])
    await run_cluster_collection(options(fake, tmp_path))
    (session,) = fake.exec.sessions
    assert session["protocol"] == "v5.channel.k8s.io"
    assert session["namespace"] == "kata-debug" and session["container"] == "agent"
    assert session["command"][:6] == ["kata-debug", "collect", "--host-root", "/host", "--output", "-"]


def tar_names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as t:
        return t.getnames()


async def test_without_runtimeclass_access_kata_pods_are_found_by_kata_deploy_names(
    fake: ClusterFake, tmp_path: Path
) -> None:
    build(fake, tmp_path, ["kata-a"])
    fake.forbidden.add("/apis/node.k8s.io/v1/runtimeclasses")
    r = await run_cluster_collection(options(fake, tmp_path))
    assert [f.item for f in r.items_failed] == ["runtimeclasses"]
    bundle = read_bundle(tmp_path / "cluster.tar.gz")
    assert [p["name"] for p in bundle.json("cluster/pods.json")] == ["web-7d9f8-x2x4q"]


async def test_kubeconfig_context_selects_the_cluster_and_a_wrong_one_is_named(
    fake: ClusterFake, tmp_path: Path
) -> None:
    build(fake, tmp_path, ["kata-a"])
    kc = fake.kubeconfig(tmp_path / "kc", context="prod")
    r = await run_cluster_collection(
        ClusterOptions(kubeconfig=str(kc), context="prod", output=str(tmp_path / "c.tar.gz"), node_args=list(FAST))
    )
    assert r.context == "prod" and [n.status for n in r.nodes] == ["ok"]
    assert read_bundle(tmp_path / "c.tar.gz").top.startswith("kata-debug-cluster-prod-")
    with pytest.raises(UsageError, match="--context staging"):
        await run_cluster_collection(ClusterOptions(kubeconfig=str(kc), context="staging"))


async def test_the_cluster_bundle_is_uploaded_once_written(fake: ClusterFake, tmp_path: Path) -> None:
    build(fake, tmp_path, ["kata-a"])
    srv = await UploadServer().start()
    try:
        code, out, err = await cli(
            "collect",
            "--cluster",
            "--kubeconfig",
            str(fake.kubeconfig(tmp_path / "kc")),
            "--output",
            str(tmp_path / "c.tar.gz"),
            "--format",
            "json",
            *FAST,
            "--upload",
            srv.url(query="sig=s3cr3t"),
        )
    finally:
        await srv.stop()
    assert code == 0, err.decode()
    summary = json.loads(out)
    sha = hashlib.sha256((tmp_path / "c.tar.gz").read_bytes()).hexdigest()
    assert summary["upload"]["sha256"] == sha == srv.received[0].sha256
    assert b"s3cr3t" not in out + err


async def test_an_output_directory_that_does_not_exist_is_refused_before_any_request(
    fake: ClusterFake, tmp_path: Path
) -> None:
    build(fake, tmp_path, ["kata-a"])
    before = len(fake.requests)
    code, _, err = await cli(
        "collect",
        "--cluster",
        "--kubeconfig",
        str(fake.kubeconfig(tmp_path / "kc")),
        "--output",
        str(tmp_path / "nope/c.tar.gz"),
        *FAST,
    )
    assert code == 1 and "does not exist" in err.decode() and len(err.decode().strip().splitlines()) == 1
    assert len(fake.requests) == before, "not one request to the API server"
