"""The node image: built offline by deploy/build-image, loaded by real tools, run as the DaemonSet runs it.

The build takes minutes the first time; deploy/build-image caches it by input hash
(~/.cache/kata-debug-image/<hash>), so later runs reuse it until the sources, the build script,
the Debian mirror's release files or the pip configuration change.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.bundles import read_bundle
from tests.conftest import kata_debug
from tests.daemonset_ctr import CAP_BITS, ContainerRun, translate
from tests.hostroots import kata_node
from tests.test_node_agent import JSON_SPANS, JSON_STREAM, SID, guest_sends, spooled_spans, start_vmm, until

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "deploy" / "build-image"
DAEMONSET = REPO / "deploy" / "daemonset.yaml"
NS = "kata-debug-image-test"
NODE = "kata-node-img"


def version() -> str:
    import tomllib

    return str(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"])


REF = f"localhost/kata-debug:{version()}"


def build_image(output: Path, *extra: str) -> dict[str, Any]:
    proc = subprocess.run([str(BUILD), "--json", *extra, str(output)], capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return dict(json.loads(proc.stdout))


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """(the OCI archive, the build record); cached by input hash across test runs."""
    out = tmp_path_factory.mktemp("image") / "kata-debug.oci.tar"
    return out, build_image(out)


class Archive:
    """An OCI image layout tar, read the way an importer does: index -> manifest -> blobs."""

    def __init__(self, path: Path) -> None:
        self.tar = tarfile.open(path)
        self.index = json.loads(self.read("index.json"))
        (self.desc,) = self.index["manifests"]
        self.manifest = json.loads(self.blob(self.desc["digest"]))
        self.config = json.loads(self.blob(self.manifest["config"]["digest"]))

    def read(self, name: str) -> bytes:
        f = self.tar.extractfile(name)
        assert f is not None, name
        return f.read()

    def blob(self, digest: str) -> bytes:
        data = self.read("blobs/sha256/" + digest.removeprefix("sha256:"))
        assert "sha256:" + hashlib.sha256(data).hexdigest() == digest, f"blob {digest} does not match its digest"
        return data

    def layer(self) -> tarfile.TarFile:
        (layer,) = self.manifest["layers"]
        assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
        data = self.blob(layer["digest"])
        assert len(data) == layer["size"]
        return tarfile.open(fileobj=io.BytesIO(data), mode="r:gz")


# ---------------------------------------------------------------------------------------------
# The archive


def test_archive_is_an_oci_layout_named_localhost_kata_debug(image: tuple[Path, dict[str, Any]]) -> None:
    path, build = image
    a = Archive(path)
    assert json.loads(a.read("oci-layout")) == {"imageLayoutVersion": "1.0.0"}
    assert a.desc["annotations"]["org.opencontainers.image.ref.name"] == REF
    assert a.desc["annotations"]["io.containerd.image.name"] == REF
    assert a.desc["digest"] == build["digest"]
    cfg = a.config["config"]
    assert cfg["Entrypoint"] == ["kata-debug"] and cfg["User"] == "0:0"
    assert a.config["rootfs"]["diff_ids"][0].startswith("sha256:")
    labels = cfg["Labels"]
    assert labels["org.opencontainers.image.version"] == version()
    debian = dict(p.split("=", 1) for p in labels["io.kata-debug.image.debian-packages"].split())
    python = dict(p.split("==", 1) for p in labels["io.kata-debug.image.python-packages"].split())
    assert debian == build["debian"] and python == build["python"]
    assert debian["python3"].startswith("3.11") and "systemd" in debian
    assert python["kata-debug"] == version()


def test_image_records_its_packages_holds_no_compiler_and_is_normalised(image: tuple[Path, dict[str, Any]]) -> None:
    path, build = image
    a = Archive(path)
    epoch = int(a.config["created"] != "" and build_epoch(a.config["created"]))
    with a.layer() as layer:
        members = {m.name: m for m in layer.getmembers()}
        recorded = json.loads(layer.extractfile("opt/kata-debug/image-packages.json").read())  # type: ignore[union-attr]
    assert recorded["debian"] == build["debian"] and recorded["python"] == build["python"]
    assert recorded["source_date_epoch"] == epoch
    for tool in ("gcc", "cc", "cpp", "c++", "ld", "as", "make", "clang"):
        assert f"usr/bin/{tool}" not in members, f"{tool} in the image"
    assert not [p for p in build["debian"] if re.fullmatch(r"(gcc|cpp|g\+\+)(-\d+)?|binutils.*|.*-dev", p)]
    assert "usr/bin/journalctl" in members and "opt/kata-debug/bin/kata-debug" in members
    assert max(m.mtime for m in members.values()) <= epoch, "every mtime clamped to SOURCE_DATE_EPOCH"
    assert {m.uname for m in members.values()} == {""}, "owners are numeric only"
    assert not [n for n in members if n.endswith(".pyc") and "__pycache__" not in n]
    print(
        f"\nimage {build['digest']}: {build['size'] / 2**20:.1f} MiB compressed, {build['unpacked_size'] / 2**20:.1f} MiB unpacked"
    )


def build_epoch(created: str) -> int:
    from datetime import datetime

    return int(datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=__import__("datetime").UTC).timestamp())


def test_two_builds_in_a_row_give_the_same_digest(image: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    """--verify-reproducible builds once more from scratch (once per input hash) and compares."""
    again = build_image(tmp_path / "again.oci.tar", "--verify-reproducible")
    assert again["verified_reproducible"] is True
    assert again["digest"] == image[1]["digest"]
    assert (tmp_path / "again.oci.tar").read_bytes() == image[0].read_bytes()


def test_containerfile_is_generated_from_the_build_and_agrees_with_the_image(
    image: tuple[Path, dict[str, Any]],
) -> None:
    generated = subprocess.run([str(BUILD), "--containerfile"], capture_output=True, text=True, check=True).stdout
    text = (REPO / "deploy" / "Containerfile").read_text()
    assert text == generated, "deploy/Containerfile is stale: deploy/build-image --containerfile > deploy/Containerfile"
    cfg = Archive(image[0]).config["config"]
    final = text.rsplit("\nFROM ", 1)[1]
    assert json.loads(re.search(r"^ENTRYPOINT (.*)$", final, re.M).group(1)) == cfg["Entrypoint"]  # type: ignore[union-attr]
    assert json.loads(re.search(r"^CMD (.*)$", final, re.M).group(1)) == cfg["Cmd"]  # type: ignore[union-attr]
    env_block = re.search(r"^ENV (.*?)\n(?=\S)", final, re.M | re.S).group(1)  # type: ignore[union-attr]
    assert [e.strip(" \\\n") for e in env_block.split("\\\n")] == cfg["Env"]
    installs = re.search(r"apt-get install -y --no-install-recommends ([^\\\n]+)", final).group(1).split()  # type: ignore[union-attr]
    assert set(installs) <= set(image[1]["debian"]), "the Containerfile installs what the image has"


# ---------------------------------------------------------------------------------------------
# Loaders


def test_skopeo_and_podman_accept_the_archive(image: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    path, build = image
    for tool in ("skopeo", "podman"):
        assert shutil.which(tool), f"{tool} not installed; run scripts/test"
    out = subprocess.run(
        ["skopeo", "inspect", "--raw", f"oci-archive:{path}:{REF}"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert "sha256:" + hashlib.sha256(out.stdout.encode()).hexdigest() == build["digest"]
    # Private storage, not the machine's: podman's runroot must be a short path.
    storage = Path(tempfile.mkdtemp(prefix="kdp-", dir="/tmp"))
    podman = ["podman", "--root", str(storage / "root"), "--runroot", str(storage / "run"), "--storage-driver", "vfs"]
    loaded = subprocess.run([*podman, "load", "-i", str(path)], capture_output=True, text=True, timeout=600)
    try:
        assert loaded.returncode == 0, loaded.stderr
        assert REF in loaded.stdout
        inspect = subprocess.run([*podman, "image", "inspect", REF], capture_output=True, text=True, timeout=120)
        assert inspect.returncode == 0, inspect.stderr
        assert json.loads(inspect.stdout)[0]["Digest"] == build["digest"]
    finally:
        subprocess.run([*podman, "system", "reset", "--force"], capture_output=True, timeout=300)
        shutil.rmtree(storage, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# kustomize


def kustomize(directory: Path) -> list[dict[str, Any]]:
    out = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def agent_image(docs: list[dict[str, Any]]) -> str:
    (ds,) = [d for d in docs if d["kind"] == "DaemonSet"]
    return str(ds["spec"]["template"]["spec"]["containers"][0]["image"])


def test_kustomization_applies_the_daemonset_with_the_built_image() -> None:
    docs = kustomize(REPO / "deploy")
    plain = [d for d in yaml.safe_load_all(DAEMONSET.read_text()) if d]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in docs) == sorted(
        (d["kind"], d["metadata"]["name"]) for d in plain
    ), "kustomize renders every object of daemonset.yaml"
    assert agent_image(docs) == REF, "the image deploy/build-image makes"
    for d in docs:
        if d["kind"] not in ("Namespace", "ClusterRole"):
            assert d["metadata"]["namespace"] == "kata-debug"


def test_an_overlay_sets_registry_image_and_namespace_with_standard_fields(tmp_path: Path) -> None:
    digest = "sha256:" + "ab" * 32
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": "observability",
                "resources": [os.path.relpath(REPO / "deploy", tmp_path)],
                "images": [{"name": "localhost/kata-debug", "newName": "registry.example.com/kd", "digest": digest}],
            }
        )
    )
    docs = kustomize(tmp_path)
    assert agent_image(docs) == f"registry.example.com/kd@{digest}"
    for d in docs:
        if d["kind"] == "ClusterRole":
            continue
        if d["kind"] == "Namespace":
            assert d["metadata"]["name"] == "observability"
        else:
            assert d["metadata"]["namespace"] == "observability", d["kind"]


# ---------------------------------------------------------------------------------------------
# On the real containerd, with the DaemonSet's security context


def ctr(containerd: str, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run([containerd, "-n", NS, *args], capture_output=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"ctr {' '.join(args[:3])}: {proc.stderr.decode()}"
    return proc


def synthetic_node(root: Path) -> Path:
    """A Kata node (tests/hostroots.py) with the paths the DaemonSet's Directory/File volumes require."""
    kata_node(root)
    for d in ("usr/bin", "lib/modules/6.1.0/kernel", "opt/kata/bin", "var/log/journal", "proc", "sys", "dev"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (root / "etc/os-release").write_text('PRETTY_NAME="Synthetic Kata node"\nID=debian\n')
    # A regular file, as the DaemonSet's File volume bind-mounts it (a node's symlink is resolved
    # by the kubelet): the collector inside and outside the container reads the same zone.
    shutil.copyfile("/usr/share/zoneinfo/UTC", root / "etc/localtime")
    (root / "proc/cmdline").write_text("BOOT_IMAGE=/vmlinuz root=/dev/vda1 ro\n")
    (root / "proc/meminfo").write_text("MemTotal:       16384000 kB\nMemAvailable:   12000000 kB\n")
    (root / "lib/modules/6.1.0/modules.builtin").write_text("kernel/arch/x86/kvm/kvm.ko\n")
    return root


class Pod:
    """The agent container, running; `exec` is what `kubectl exec` and exec probes do."""

    def __init__(self, containerd: str, cid: str, run: ContainerRun, root: Path, scratch: Path, log: Path) -> None:
        self.containerd, self.cid, self.run, self.root, self.scratch, self.log = (
            containerd,
            cid,
            run,
            root,
            scratch,
            log,
        )

    def exec(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
        eid = f"x{uuid.uuid4().hex[:8]}"
        return ctr(self.containerd, "task", "exec", "--exec-id", eid, self.cid, *argv, timeout=timeout, check=False)

    def state(self) -> dict[str, Any]:
        state = self.scratch / "tmp/node-agent/state.json"  # /tmp is the `tmp` emptyDir
        return dict(json.loads(state.read_text())) if state.exists() else {}


@pytest.fixture(scope="module")
def pod(containerd: str, image: tuple[Path, dict[str, Any]]) -> Iterator[Pod]:
    base = Path(tempfile.mkdtemp(prefix="kdi-", dir="/tmp"))  # short: hybrid vsock socket paths
    root, scratch = synthetic_node(base / "h"), base / "s"
    run = translate(DAEMONSET, host_root=root, scratch=scratch, node_name=NODE)
    ctr(containerd, "images", "import", str(image[0]), timeout=900)
    entrypoint = Archive(image[0]).config["config"]["Entrypoint"]
    cid = f"kdi-{uuid.uuid4().hex[:8]}"
    log = base / "agent.log"
    ctr(containerd, "run", "-d", f"--log-uri=file://{log}", *run.flags, REF, cid, *run.argv(entrypoint))
    p = Pod(containerd, cid, run, root, scratch, log)
    try:
        deadline = time.monotonic() + 60
        while not p.state().get("ready"):
            assert time.monotonic() < deadline, f"agent not ready: {log.read_text() if log.exists() else ''}"
            time.sleep(0.2)
        yield p
    finally:
        ctr(containerd, "task", "kill", "-s", "KILL", cid, check=False)
        for _ in range(100):
            if ctr(containerd, "task", "rm", cid, check=False).returncode == 0:
                break
            time.sleep(0.1)
        ctr(containerd, "container", "rm", cid, check=False)
        ctr(containerd, "images", "rm", REF, check=False)
        shutil.rmtree(base, ignore_errors=True)


def test_the_container_has_exactly_the_daemonsets_privileges(pod: Pod) -> None:
    status = pod.exec("python3", "-c", "print(open('/proc/self/status').read())")
    assert status.returncode == 0, status.stderr
    fields = dict(line.split(":\t", 1) for line in status.stdout.decode().splitlines() if ":\t" in line)
    want = sum(1 << CAP_BITS[c] for c in pod.run.cap_effective)
    assert pod.run.cap_effective == {"DAC_READ_SEARCH"}
    assert int(fields["CapEff"], 16) == want and int(fields["CapBnd"], 16) == want
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Uid"].split()[0] == "0"
    # Read-only root; each mount read-only or writable as the YAML says.
    mountinfo = pod.exec("python3", "-c", "print(open('/proc/self/mountinfo').read())").stdout.decode()
    opts = {line.split()[4]: line.split()[5].split(",") for line in mountinfo.splitlines() if line}
    assert "ro" in opts["/"]
    for m in pod.run.mounts:
        assert ("ro" if m.read_only else "rw") in opts[m.destination], (m.destination, opts[m.destination])
    wrote = pod.exec("python3", "-c", "open('/etc/kata-debug-probe', 'w')")
    assert wrote.returncode != 0 and b"Read-only file system" in wrote.stderr
    wrote = pod.exec("python3", "-c", "open('/host/usr/probe', 'w')")
    assert wrote.returncode != 0 and b"Read-only file system" in wrote.stderr
    assert not (pod.root / "usr/probe").exists()


def test_the_yamls_probe_commands_pass(pod: Pod) -> None:
    assert set(pod.run.probes) == {"startupProbe", "livenessProbe", "readinessProbe"}
    for kind, command in pod.run.probes.items():
        res = pod.exec(*command)
        assert res.returncode == 0, f"{kind} {command}: {res.stdout.decode()}{res.stderr.decode()}"
    stale = pod.exec("python3", "-m", "kata_debug.agent.health", "/tmp/no-such-state.json")
    assert stale.returncode != 0, "the probe can fail"


def test_collect_inside_the_container_matches_a_run_outside(pod: Pod, tmp_path: Path) -> None:
    inside = pod.exec("kata-debug", "collect", "--host-root", "/host", "--output", "-", timeout=300)
    assert inside.returncode in (0, 3), inside.stderr.decode()
    bundle_in = read_bundle(inside.stdout)
    outside = kata_debug("collect", "--host-root", str(pod.root), "--output", str(tmp_path / "b.tar.gz"), timeout=300)
    assert outside.returncode == inside.returncode, outside.stderr
    bundle_out = read_bundle(tmp_path / "b.tar.gz")
    statuses_in = {c["name"]: c["status"] for c in bundle_in.manifest["collectors"]}
    statuses_out = {c["name"]: c["status"] for c in bundle_out.manifest["collectors"]}
    assert statuses_in == statuses_out
    assert statuses_in["oci-specs"] == "ok" and statuses_in["kata-config"] == "ok"
    assert NODE in bundle_in.top, "named after NODE_NAME from the YAML's fieldRef"


async def test_node_agent_attaches_hybrid_vsock_and_spools_spans(pod: Pod) -> None:
    assert pod.state()["vsock"] == "listening", "Unconfined seccomp lets AF_VSOCK through"
    clh = pod.root / f"run/vc/vm/{SID}/clh.sock"
    vmm = start_vmm(clh)  # on the host, under the synthetic root; the agent sees it at /host/run/vc
    try:
        await asyncio.wait_for(guest_sends(Path(f"{clh}_10240"), JSON_STREAM), 60)
        spool = pod.root / "var/lib/kata-debug/traces"
        try:
            await until(lambda: len(spooled_spans(spool)) >= JSON_SPANS, timeout=60)
        except AssertionError:
            raise AssertionError(f"spans not spooled; agent log:\n{pod.log.read_text()[-4000:]}") from None
    finally:
        vmm.close()
    spans = spooled_spans(spool)
    assert len(spans) == JSON_SPANS
    assert {(r["kata.sandbox.id"], r["k8s.pod.name"], r["k8s.node.name"]) for r, _ in spans} == {(SID, "web-0", NODE)}
