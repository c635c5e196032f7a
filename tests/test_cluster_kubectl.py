"""The loopback API server is faithful enough for the real kubectl: get, label selectors, exec.

If kubectl can list the agents and exec the node collection through it (subprotocol,
channel framing, exit status on channel 3), what `collect --cluster` sees from it is what a
real API server would send.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.bundles import read_bundle
from tests.fake_kube_exec import ClusterFake, ExecBehaviour
from tests.hostroots import add_task
from tests.kata_cluster import build

KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"


@pytest.fixture
async def fake() -> Any:
    async with ClusterFake() as server:
        yield server


async def kubectl(kubeconfig: Path, *args: str) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        KUBECTL,
        "--kubeconfig",
        str(kubeconfig),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out, err


async def test_kubectl_lists_agent_pods_and_kata_nodes(fake: ClusterFake, tmp_path: Path) -> None:
    build(fake, tmp_path, ["kata-a", "kata-b"])
    kc = fake.kubeconfig(tmp_path / "kc")
    code, out, err = await kubectl(kc, "get", "pods", "-n", "kata-debug", "-o", "name")
    assert code == 0, err.decode()
    assert out.decode().split() == ["pod/kata-debug-node-agent-kata-a", "pod/kata-debug-node-agent-kata-b"]
    code, out, err = await kubectl(kc, "get", "nodes", "-l", "katacontainers.io/kata-runtime", "-o", "name")
    assert code == 0, err.decode()
    assert out.decode().split() == ["node/kata-a", "node/kata-b"], "existence selector, as collect --cluster uses"


async def test_kubectl_exec_streams_a_node_bundle_and_its_exit_code(fake: ClusterFake, tmp_path: Path) -> None:
    cluster = build(fake, tmp_path, ["kata-a"])
    kc = fake.kubeconfig(tmp_path / "kc")
    pod = cluster.agent("kata-a")
    code, out, err = await kubectl(
        kc,
        "exec",
        "-n",
        "kata-debug",
        pod,
        "-c",
        "agent",
        "--",
        "kata-debug",
        "collect",
        "--host-root",
        "/host",
        "--output",
        "-",
        "-c",
        "oci-specs",
    )
    assert code == 0, err.decode()
    bundle = read_bundle(out)
    assert bundle.json("oci-specs/index.json")["kata_sandboxes"] == ["sb-kata-a"]
    assert fake.exec.sessions[-1]["protocol"] == "v5.channel.k8s.io", "kubectl negotiated the newest protocol"
    # A collector fails: exit 3 travels as a NonZeroExitCode status, kubectl turns it back into 3.
    add_task(cluster.roots["kata-a"], "k8s.io", "broken", "{")
    code, out, err = await kubectl(
        kc,
        "exec",
        "-n",
        "kata-debug",
        pod,
        "--",
        "kata-debug",
        "collect",
        "--host-root",
        "/host",
        "--output",
        "-",
        "-c",
        "oci-specs",
    )
    assert code == 3 and b"command terminated with exit code 3" in err
    assert read_bundle(out).collector("oci-specs")["status"] == "partial"


async def test_kubectl_exec_is_refused_like_a_real_api_server(fake: ClusterFake, tmp_path: Path) -> None:
    cluster = build(fake, tmp_path, ["kata-a"])
    kc = fake.kubeconfig(tmp_path / "kc")
    fake.behave(cluster.agent("kata-a"), ExecBehaviour("forbidden"))
    code, _, err = await kubectl(kc, "exec", "-n", "kata-debug", cluster.agent("kata-a"), "--", "true")
    assert code != 0 and b'cannot create resource "pods/exec"' in err
