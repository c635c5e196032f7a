"""containerd's merged configuration (imports, conf.d drop-ins, k3s templates) and Docker's
daemon.json runtimes, as host facts the cri-config and rootfs analyzers decide with.

Each test builds a synthetic host root, runs `kata-debug collect --host-root` on it and
diagnoses the bundle, as a user's node would be.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kata_debug.node.containerd_config import (
    MAX_CONFIG_FILES,
    containerd_configs,
    merge_config,
    runtime_handlers,
)
from kata_debug.node.hostroot import HostRoot
from tests.diagnose_nodes import CONTAINERD_LOG, add_log, collect_and_diagnose, healthy_node, write

RUNC_ONLY_IMPORTING = """\
version = 2
imports = ["/etc/containerd/conf.d/*.toml"]
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
"""
KATA_DROP_IN = """\
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata-qemu]
  runtime_type = "io.containerd.kata-qemu.v2"
  pod_annotations = ["io.katacontainers.*"]
"""
#: kata-containers#10809: the RuntimeClass handler containerd does not know.
NO_RUNTIME = (
    'time="2025-01-27T10:00:01Z" level=error msg="RunPodSandbox for &PodSandboxMetadata{Name:web,Uid:1,'
    'Namespace:default,Attempt:0,} failed, error" error="rpc error: code = Unknown desc = failed to get sandbox '
    'runtime: no runtime for \\"kata-qemu\\" is configured"'
)
ENOENT = (
    "failed to create containerd task: failed to create shim task: failed to mount "
    '"/run/kata-containers/shared/containers/{sid}/rootfs" to "/run/kata-containers/{sid}/rootfs", with error: '
    "ENOENT: No such file or directory: unknown"
)


# -- merge rules -----------------------------------------------------------------------


def test_containerd_1x_import_replaces_the_whole_plugin_section() -> None:
    """containerd#5837: in 1.x an imported plugins."<id>" replaces the main file's."""
    main: dict[str, Any] = {"plugins": {"io.containerd.grpc.v1.cri": {"containerd": {"runtimes": {"runc": {}}}}}}
    drop: dict[str, Any] = {"plugins": {"io.containerd.grpc.v1.cri": {"containerd": {"runtimes": {"kata": {}}}}}}
    merged = merge_config(main, drop, v2=False)
    assert list(merged["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]) == ["kata"]


def test_containerd_2x_import_merges_plugin_sections_key_by_key() -> None:
    """containerd#9982: 2.x merges sections, a later file wins per key."""
    main = {"plugins": {"io.containerd.cri.v1.runtime": {"containerd": {"runtimes": {"runc": {"a": 1}}}}}}
    drop = {"plugins": {"io.containerd.cri.v1.runtime": {"containerd": {"runtimes": {"kata": {}, "runc": {"a": 2}}}}}}
    merged = merge_config(main, drop, v2=True)
    assert merged["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"] == {"runc": {"a": 2}, "kata": {}}


def test_version_3_config_with_drop_ins_in_order_later_wins(tmp_path: Path) -> None:
    write(
        tmp_path,
        "etc/containerd/config.toml",
        'version = 3\nimports = ["conf.d/*.toml"]\n'
        '[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]\nruntime_type = "io.containerd.runc.v2"\n',
    )
    write(
        tmp_path,
        "etc/containerd/conf.d/10-kata.toml",
        '[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.kata]\n'
        'runtime_type = "io.containerd.kata.v2"\nsnapshotter = "overlayfs"\n',
    )
    write(
        tmp_path,
        "etc/containerd/conf.d/20-kata-snap.toml",
        '[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.kata]\nsnapshotter = "nydus"\n',
    )
    (cfg,) = containerd_configs(HostRoot.at(tmp_path))
    assert cfg.files == [
        "/etc/containerd/config.toml",
        "/etc/containerd/conf.d/10-kata.toml",
        "/etc/containerd/conf.d/20-kata-snap.toml",
    ]
    by_name = {h.name: h for h in cfg.handlers}
    assert set(by_name) == {"runc", "kata"}
    assert by_name["kata"].snapshotter == "nydus" and by_name["kata"].runtime_type == "io.containerd.kata.v2"
    assert by_name["kata"].source == "/etc/containerd/conf.d/20-kata-snap.toml"


def test_imports_are_bounded_and_never_leave_the_host_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside.toml"
    outside.write_text('[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.evil]\nruntime_type = "x.y.v2"\n')
    root = tmp_path / "root"
    write(
        root, "etc/containerd/config.toml", 'version = 2\nimports = ["/etc/containerd/conf.d/*.toml", "/nope.toml"]\n'
    )
    for i in range(MAX_CONFIG_FILES + 5):
        write(root, f"etc/containerd/conf.d/{i:03}.toml", f'[plugins."x{i}"]\na = 1\n')
    os.symlink(outside, root / "etc/containerd/conf.d/000-link.toml")
    (cfg,) = containerd_configs(HostRoot.at(root))
    assert len(cfg.files) == MAX_CONFIG_FILES
    assert "evil" not in {h.name for h in cfg.handlers}
    assert any("past 32 config files" in p for p in cfg.problems)
    assert any("/nope.toml does not exist" in p for p in cfg.problems)


def test_k3s_template_is_read_but_not_taken_for_the_running_config(tmp_path: Path) -> None:
    base = "var/lib/rancher/k3s/agent/etc/containerd"
    write(tmp_path, f"{base}/config.toml", 'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd]\n')
    write(
        tmp_path,
        f"{base}/config.toml.tmpl",
        '{{ template "base" . }}\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata]\n'
        '  runtime_type = "io.containerd.kata.v2"\n',
    )
    configs = containerd_configs(HostRoot.at(tmp_path))
    assert [(c.main.rsplit("/", 1)[1], c.template, [h.name for h in c.handlers]) for c in configs] == [
        ("config.toml", False, []),
        ("config.toml.tmpl", True, ["kata"]),
    ]
    assert runtime_handlers(HostRoot.at(tmp_path)) == []


# -- diagnose ------------------------------------------------------------------------


async def test_handler_declared_only_in_a_conf_d_drop_in_is_not_missing(tmp_path: Path) -> None:
    """A kata-deploy style drop-in: the main file only imports it (kata-containers#10809's setup,
    fixed); the old error line is explained by a containerd that was not restarted."""
    root = healthy_node(tmp_path / "host")
    write(root, "etc/containerd/config.toml", RUNC_ONLY_IMPORTING)
    write(root, "etc/containerd/conf.d/kata-deploy.toml", KATA_DROP_IN)
    add_log(root, CONTAINERD_LOG, NO_RUNTIME)
    d, _ = await collect_and_diagnose(root, tmp_path)
    f = next(f for f in d.findings if f.id == "runtime-handler-missing")
    assert f.severity == "warning" and "declares them now" in f.title
    assert any(
        e.path == "host/files/etc/containerd/conf.d/kata-deploy.toml" and "kata-qemu" in e.text for e in f.evidence
    )
    assert d.exit_code == 0


async def test_handler_missing_when_the_drop_in_is_not_imported(tmp_path: Path) -> None:
    root = healthy_node(tmp_path / "host")
    write(root, "etc/containerd/config.toml", RUNC_ONLY_IMPORTING.replace("imports", "#imports"))
    write(root, "etc/containerd/conf.d/kata-deploy.toml", KATA_DROP_IN)
    add_log(root, CONTAINERD_LOG, NO_RUNTIME)
    d, _ = await collect_and_diagnose(root, tmp_path)
    assert d.findings[0].id == "runtime-handler-missing" and d.findings[0].severity == "error"
    assert d.findings[0].confirmed


async def test_containerd_1x_drop_in_replacing_the_cri_section_drops_the_main_files_handler(tmp_path: Path) -> None:
    """containerd#5837: the handler is in config.toml, but a drop-in's CRI section replaced it."""
    root = healthy_node(tmp_path / "host")
    write(
        root,
        "etc/containerd/config.toml",
        'version = 2\nimports = ["/etc/containerd/conf.d/*.toml"]\n'
        '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata-qemu]\nruntime_type = "io.containerd.kata-qemu.v2"\n',
    )
    write(
        root,
        "etc/containerd/conf.d/registry.toml",
        '[plugins."io.containerd.grpc.v1.cri"]\nsandbox_image = "registry.k8s.io/pause:3.9"\n',
    )
    add_log(root, CONTAINERD_LOG, NO_RUNTIME)
    d, _ = await collect_and_diagnose(root, tmp_path)
    assert (d.findings[0].id, d.findings[0].severity, d.findings[0].confirmed) == (
        "runtime-handler-missing",
        "error",
        True,
    )


async def test_kata_fc_with_a_devmapper_runtime_snapshotter_is_not_firecracker_needs_devmapper(tmp_path: Path) -> None:
    root = healthy_node(tmp_path / "host")
    sid = "e451326df87ad20cbe9f2c6827d34ea0571690810f676d4df81be6445a7a25f8"
    write(
        root,
        "etc/containerd/config.toml",
        'version = 2\nimports = ["/etc/containerd/conf.d/*.toml"]\n'
        '[plugins."io.containerd.snapshotter.v1.devmapper"]\npool_name = "devpool"\nroot_path = "/var/lib/dm"\n',
    )
    write(
        root,
        "etc/containerd/conf.d/kata-fc.toml",
        '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata-fc]\n'
        'runtime_type = "io.containerd.kata-fc.v2"\nsnapshotter = "devmapper"\n',
    )
    add_log(root, CONTAINERD_LOG, ENOENT.format(sid=sid))
    d, _ = await collect_and_diagnose(root, tmp_path)
    assert "firecracker-needs-devmapper" not in [f.id for f in d.findings]


async def test_kata_fc_on_the_default_overlayfs_snapshotter_is_named_with_the_runtime(tmp_path: Path) -> None:
    """kata-containers#8764: kata-fc on overlayfs."""
    root = healthy_node(tmp_path / "host")
    sid = "e451326df87ad20cbe9f2c6827d34ea0571690810f676d4df81be6445a7a25f8"
    write(
        root,
        "etc/containerd/config.toml",
        'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd]\nsnapshotter = "overlayfs"\n'
        '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata-fc]\nruntime_type = "io.containerd.kata-fc.v2"\n',
    )
    add_log(root, CONTAINERD_LOG, ENOENT.format(sid=sid))
    d, _ = await collect_and_diagnose(root, tmp_path)
    top = d.findings[0]
    assert (top.id, top.confirmed) == ("firecracker-needs-devmapper", True)
    assert any("runtimes.kata-fc snapshotter = overlayfs (the CRI default" in e.text for e in top.evidence)


async def test_pod_annotations_not_passing_kata_annotations(tmp_path: Path) -> None:
    """kata-containers#6345: containerd's pod_annotations filters io.katacontainers.* out."""
    root = healthy_node(tmp_path / "host")
    write(
        root,
        "etc/containerd/config.toml",
        'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata]\n'
        'runtime_type = "io.containerd.kata.v2"\npod_annotations = ["io.kubernetes.cri.*"]\n',
    )
    d, _ = await collect_and_diagnose(root, tmp_path)
    f = next(f for f in d.findings if f.id == "annotation-not-enabled")
    assert f.severity == "warning"
    assert any(
        e.path == "host/files/etc/containerd/config.toml" and "pod_annotations = ['io.kubernetes.cri.*']" in e.text
        for e in f.evidence
    )


async def test_pod_annotations_passing_kata_annotations_is_healthy(tmp_path: Path) -> None:
    root = healthy_node(tmp_path / "host")
    write(root, "etc/containerd/config.toml", "version = 2\n" + KATA_DROP_IN)
    d, _ = await collect_and_diagnose(root, tmp_path)
    assert "annotation-not-enabled" not in [f.id for f in d.findings]


async def test_docker_daemon_json_with_the_legacy_kata_runtime_cli(tmp_path: Path) -> None:
    """kata-containers#1775 / #12076: `"path": "/usr/bin/kata-runtime"` in daemon.json."""
    root = healthy_node(tmp_path / "host")
    write(root, "etc/docker/daemon.json", json.dumps({"runtimes": {"kata": {"path": "/usr/bin/kata-runtime"}}}))
    d, _ = await collect_and_diagnose(root, tmp_path)
    f = next(f for f in d.findings if f.id == "legacy-runtime-cli")
    assert f.confirmed
    assert any(e.path == "host/files/etc/docker/daemon.json" and "kata-runtime OCI CLI" in e.text for e in f.evidence)


async def test_docker_runtime_type_whose_shim_is_missing(tmp_path: Path) -> None:
    root = healthy_node(tmp_path / "host")
    write(root, "etc/docker/daemon.json", json.dumps({"runtimes": {"kata": {"runtimeType": "io.containerd.kata.v2"}}}))
    d, _ = await collect_and_diagnose(root, tmp_path)
    f = next(f for f in d.findings if f.id == "shim-not-found")
    assert any("containerd-shim-kata-v2 not found on the node" in e.text for e in f.evidence)
    assert "legacy-runtime-cli" not in [x.id for x in d.findings]


async def test_docker_runtime_type_with_its_shim_installed_is_healthy(tmp_path: Path) -> None:
    root = healthy_node(tmp_path / "host")
    write(root, "etc/docker/daemon.json", json.dumps({"runtimes": {"kata": {"runtimeType": "io.containerd.kata.v2"}}}))
    write(root, "usr/local/bin/containerd-shim-kata-v2", "")
    d, _ = await collect_and_diagnose(root, tmp_path)
    assert not {"shim-not-found", "legacy-runtime-cli"} & {f.id for f in d.findings}


async def test_guest_pull_handler_without_nydus_is_named_with_its_snapshotter(tmp_path: Path) -> None:
    """kata-containers#8407: a CoCo handler whose layers the CRI default (overlayfs) unpacks."""
    root = healthy_node(tmp_path / "host")
    sid = "e451326df87ad20cbe9f2c6827d34ea0571690810f676d4df81be6445a7a25f8"
    write(
        root,
        "etc/containerd/config.toml",
        'version = 2\nimports = ["/etc/containerd/conf.d/*.toml"]\n',
    )
    write(
        root,
        "etc/containerd/conf.d/coco.toml",
        '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata-qemu-snp]\n'
        'runtime_type = "io.containerd.kata-qemu-snp.v2"\n',
    )
    add_log(root, CONTAINERD_LOG, ENOENT.format(sid=sid))
    d, _ = await collect_and_diagnose(root, tmp_path)
    top = d.findings[0]
    assert (top.id, top.confirmed) == ("guest-pull-misconfigured", True)
    assert any("kata-qemu-snp (guest-pull): snapshotter = the CRI default, not nydus" in e.text for e in top.evidence)
