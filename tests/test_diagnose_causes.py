"""One test per root-cause id: a synthetic node built from log lines as users posted them
upstream (the issue is cited on each test), collected with `collect --host-root` and
diagnosed. The finding must be first, an error, and quote the line it rests on.
"""

from __future__ import annotations

from pathlib import Path

from kata_debug.analyze.diagnose import Diagnosis
from tests.diagnose_nodes import (
    CONTAINERD_LOG,
    CRIO_LOG,
    MODULES,
    add_log,
    collect_and_diagnose,
    healthy_node,
    ids,
    write,
)

SID = "36a94057e95846ed8ceebf21cf43e396b58ad2af639f7b9b23aca2ce95791f07"


def assert_top(d: Diagnosis, cause: str, quoted: str, *, confirmed: bool | None = None) -> None:
    top = d.findings[0]
    assert top.id == cause, [(f.id, f.severity) for f in d.findings]
    assert top.severity == "error"
    assert any(quoted in e.text and e.line for e in top.evidence), top.evidence
    assert top.explanation and "https://github.com/" in top.fix
    if confirmed is not None:
        assert top.confirmed is confirmed
    assert d.exit_code == 1


async def test_kvm_unavailable_from_qemu_stderr_and_absent_dev_kvm(tmp_path: Path) -> None:
    """kata-containers/runtime#646 (AWS non-metal): no /dev/kvm, no vmx."""
    root = healthy_node(tmp_path / "host")
    (root / "dev/kvm").unlink()
    write(root, "proc/cpuinfo", "processor\t: 0\nflags\t\t: fpu vme sse sse2 hypervisor\n")
    add_log(
        root,
        CONTAINERD_LOG,
        f'time="2024-04-22T15:16:12Z" level=error msg="qemu-system-x86_64: Could not access KVM kernel module: No such file or directory" name=containerd-shim-v2 pid=41 qemuPid=42 sandbox={SID} source=virtcontainers/hypervisor subsystem=qemu',
        f'time="2024-04-22T15:16:12Z" level=error msg="qemu-system-x86_64: failed to initialize KVM: No such file or directory" name=containerd-shim-v2 pid=41 qemuPid=42 sandbox={SID} source=virtcontainers/hypervisor subsystem=qemu',
    )
    d, _ = await collect_and_diagnose(root, tmp_path)
    assert_top(d, "kvm-unavailable", "Could not access KVM kernel module", confirmed=True)
    top = d.findings[0]
    assert top.sandbox == SID and top.occurrences == 2
    assert any(e.path == "host/facts.json" and "/dev/kvm: not present" in e.text for e in top.evidence)


async def test_kvm_unavailable_from_go_3x_devices_cgroup_error(tmp_path: Path) -> None:
    """Kata 3.x on a node without /dev/kvm (kata-containers#6752 family): the resource controller error."""
    root = healthy_node(tmp_path / "host")
    (root / "dev/kvm").unlink()
    add_log(
        root,
        CONTAINERD_LOG,
        'time="2026-04-26T16:05:26Z" level=fatal msg="failed to create shim task: Could not create the sandbox resource controller failed to add any hypervisor device to devices cgroup: unknown"',
    )
    d, _ = await collect_and_diagnose(root, tmp_path)
    assert_top(d, "kvm-unavailable", "failed to add any hypervisor device", confirmed=True)


async def test_vhost_vsock_unavailable_when_module_missing(tmp_path: Path) -> None:
    """kata-containers#4737 (Debian 4.19 bpo kernel without vhost_vsock)."""
    root = healthy_node(tmp_path / "host")
    (root / "dev/vhost-vsock").unlink()
    write(root, "proc/modules", MODULES.replace("vhost_vsock 16384 0 - Live 0x0000000000000000\n", ""))
    add_log(
        root,
        CONTAINERD_LOG,
        f'time="2022-07-04T16:42:03Z" level=error msg="RunPodSandbox for &PodSandboxMetadata{{Name:web-0,Uid:6f1c,Namespace:default,Attempt:0,}} failed, error" error="failed to create containerd task: failed to create shim task: open /dev/vhost-vsock: no such file or directory: unknown" id={SID}',
    )
    d, _ = await collect_and_diagnose(root, tmp_path)
    assert_top(d, "vhost-vsock-unavailable", "open /dev/vhost-vsock", confirmed=True)
    assert d.findings[0].pod == "default/web-0"


async def test_vhost_net_missing_is_vhost_vsock_unavailable(tmp_path: Path) -> None:
    """kata-containers#6451 (SNP host kernel without vhost_net)."""
    root = healthy_node(tmp_path / "host")
    (root / "dev/vhost-net").unlink()
    add_log(
        root,
        CONTAINERD_LOG,
        'time="2023-03-01T10:00:00Z" level=error msg="CreateContainer failed: Could not setup vhost fds eth0 : open /dev/vhost-net: no such file or directory: unknown"',
    )
    d, _ = await collect_and_diagnose(root, tmp_path)
    assert_top(d, "vhost-vsock-unavailable", "open /dev/vhost-net")
    assert "/dev/vhost-net" in d.findings[0].title


async def test_vsock_transport_conflict_on_a_vmware_guest(tmp_path: Path) -> None:
    """kata-containers#1327: VMware guest, vmw_vsock_vmci_transport loaded, ENODEV."""
    root = healthy_node(tmp_path / "host")
    (root / "dev/vhost-vsock").unlink()
    write(
        root,
        "proc/modules",
        MODULES.replace("vhost_vsock 16384 0 - Live 0x0000000000000000\n", "")
        + "vmw_vsock_vmci_transport 32768 1 - Live 0x0\nvmw_vmci 86016 2 - Live 0x0\n",
    )
    add_log(root, CONTAINERD_LOG, "ctr: open /dev/vhost-vsock: no such device: unknown")
    d, _ = await collect_and_diagnose(root, tmp_path)
    assert_top(d, "vsock-transport-conflict", "no such device", confirmed=True)
    assert "vhost-vsock-unavailable" not in ids(d, "error")


async def test_agent_unreachable_when_nothing_explains_the_timeout(tmp_path: Path) -> None:
    """kata-containers#2499 (AlmaLinux VM, CRI-O): vsock dial timeout, no deeper cause."""
    root = healthy_node(tmp_path / "host")
    add_log(
        root,
        CONTAINERD_LOG,
        "Warning  FailedCreatePodSandBox  14m  kubelet  Failed to create pod sandbox: rpc error: code = Unknown desc = CreateContainer failed: Failed to check if grpc server is working: rpc error: code = DeadlineExceeded desc = timed out connecting to vsock 1217660058:1024: unknown",
        "Warning  FailedCreatePodSandBox  13m  kubelet  Failed to create pod sandbox: rpc error: code = Unknown desc = CreateContainer failed: Failed to check if grpc server is working: rpc error: code = DeadlineExceeded desc = timed out connecting to vsock 2561841279:1024: unknown",
    )
    d, _ = await collect_and_diagnose(root, tmp_path)
    assert_top(d, "agent-unreachable", "timed out connecting to vsock")
    assert d.findings[0].occurrences == 2 and ids(d) == ["agent-unreachable"]


async def test_agent_unreachable_runtime_rs_caused_by_chain(tmp_path: Path) -> None:
    """kata-containers#11709 (runtime-rs): the Caused-by chain arrives as one line with literal \\n."""
    root = healthy_node(tmp_path / "host")
    add_log(
        root,
        CONTAINERD_LOG,
        r'Failed to create pod sandbox: rpc error: code = Unknown desc = failed to create containerd task: failed to create shim task: Others("failed to handle message start sandbox in task handler\n\nCaused by:\n    0: connect to address \"vsock://3746705066\"\n    1: connect agent server\n    2: connect\n    3: vsock: failed to connect to Vsock { vsock_cid: 3746705066, port: 1024 }")',
    )
    d, _ = await collect_and_diagnose(root, tmp_path)
    assert_top(d, "agent-unreachable", "connect agent server")


async def test_virtiofsd_failed_from_vhost_user_fs_protocol_error(tmp_path: Path) -> None:
    """kata-containers#3748 (Kata 2.3.2): virtiofsd closed the vhost-user socket."""
    root = healthy_node(tmp_path / "host")
    add_log(
        root,
        CONTAINERD_LOG,
        "Failed to create pod sandbox: rpc error: code = Unknown desc = failed to create containerd task: failed to create shim: failed to launch qemu: exit status 1, error messages from qemu log: qemu-system-x86_64: -device vhost-user-fs-pci,chardev=char-1a8f0607b51026a5,tag=kataShared: Failed to read msg header. Read 0 instead of 12. Original request 1. qemu-system-x86_64: -device vhost-user-fs-pci,chardev=char-1a8f0607b51026a5,tag=kataShared: vhost_backend_init failed: Protocol error : unknown",
        'time="2022-02-22T20:53:24.897332737+08:00" level=error msg="Unable to launch /opt/kata/bin/qemu-system-x86_64: exit status 1" name=containerd-shim-v2 pid=3585 sandbox=ff604af45db93704d1cb7af4c11f45cd8c092a1c3e17712415bd3deb5b8ea3b7 source=virtcontainers subsystem=qmp',
    )
    d, _ = await collect_and_diagnose(root, tmp_path)
    assert_top(d, "virtiofsd-failed", "vhost_backend_init failed")


async def test_hypervisor_feature_unsupported_dax_cache_size(tmp_path: Path) -> None:
    """kata-containers#3452: virtio_fs_cache_size on a QEMU without DAX."""
    root = healthy_node(tmp_path / "host")
    add_log(
        root,
        CONTAINERD_LOG,
        f'time="2022-01-14T16:41:57.480568876+08:00" level=error msg="Unable to launch /opt/kata/bin/qemu-system-x86_64: exit status 1" name=containerd-shim-v2 pid=3927850 sandbox={SID} source=virtcontainers subsystem=qmp',
        f'time="2022-01-14T16:41:57.481109923+08:00" level=error msg="failed to launch qemu: qemu-system-x86_64: -device vhost-user-fs-pci,chardev=char-f2d38b865531b89b,tag=kataShared,cache-size=2M: Property \'vhost-user-fs-pci.cache-size\' not found\\n" error="exit status 1" name=containerd-shim-v2 pid=3927850 sandbox={SID} source=virtcontainers subsystem=qemu',
    )
    d, _ = await collect_and_diagnose(root, tmp_path)
    assert_top(d, "hypervisor-feature-unsupported", "Property 'vhost-user-fs-pci.cache-size' not found")
    assert "virtiofsd-failed" not in ids(d)


async def test_vm_oom_killed_from_memcg_oom_record(tmp_path: Path) -> None:
    """kata-containers#7470 (pod limit 64Mi): qemu killed in the pod's memory cgroup."""
    root = healthy_node(tmp_path / "host")
    add_log(
        root,
        CONTAINERD_LOG,
        "Warning  FailedCreatePodSandBox  15s   kubelet  Failed to create pod sandbox: rpc error: code = Unknown desc = failed to create containerd task: failed to create shim task: Failed to Check if grpc server is working: ttrpc: closed: unknown",
    )
    add_log(
        root,
        "var/log/kern.log",
        "[40743.903374] oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=cri-containerd-50fa1d953317941d87bf1ee1e0b3a278d8f0c0f882aa80ed57508fbce4956822.scope,mems_allowed=0,oom_memcg=/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pode682fb95_1246_48b1_a8c4_b8e8e5e7fd88.slice,task_memcg=/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pode682fb95_1246_48b1_a8c4_b8e8e5e7fd88.slice/cri-containerd-50fa1d953317941d87bf1ee1e0b3a278d8f0c0f882aa80ed57508fbce4956822.scope,task=qemu-system-x86,pid=1162211,uid=0",
        "[40743.903412] Memory cgroup out of memory: Killed process 1162211 (qemu-system-x86) total-vm:2804836kB, anon-rss:20456kB, file-rss:61968kB, shmem-rss:100848kB, UID:0 pgtables:692kB oom_score_adj:-999",
    )
    d, _ = await collect_and_diagnose(root, tmp_path, logs_in_bundle={"var/log/kern.log": "kernel"})
    assert_top(d, "vm-oom-killed", "Memory cgroup out of memory")
    # The runtime's symptom is kept, demoted, and says what explains it.
    agent = next(f for f in d.findings if f.id == "agent-unreachable")
    assert agent.severity == "info" and "vm-oom-killed" in agent.explanation


async def test_runtime_handler_missing_containerd(tmp_path: Path) -> None:
    """kata-containers#5423 (containerd journal): RuntimeClass handler kata not in containerd's config."""
    root = healthy_node(tmp_path / "host")
    write(root, "etc/containerd/config.toml", 'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd]\n')
    add_log(
        root,
        CONTAINERD_LOG,
        'time="2022-10-21T10:45:22.788791028+08:00" level=error msg="RunPodSandbox for &PodSandboxMetadata{Name:nginx-sandbox,Uid:3adf8809-84d0-41ed-a75b-301f1a7dbaa8,Namespace:default,Attempt:0,} failed, error" error="failed to get sandbox runtime: no runtime for \\"kata\\" is configured"',
    )
    d, _ = await collect_and_diagnose(root, tmp_path)
    assert_top(d, "runtime-handler-missing", "no runtime for", confirmed=True)
    assert d.findings[0].pod == "default/nginx-sandbox" and "'kata'" in d.findings[0].title


async def test_runtime_handler_missing_crio(tmp_path: Path) -> None:
    """CRI-O >= 1.19 form (kata-containers#2011 family)."""
    root = healthy_node(tmp_path / "host")
    add_log(
        root,
        CRIO_LOG,
        'time="2023-01-01T00:00:00Z" level=error msg="failed to find runtime handler kata-qemu from runtime list map[crun:0xc000 runc:0xc000]"',
    )
    d, _ = await collect_and_diagnose(root, tmp_path)
    assert_top(d, "runtime-handler-missing", "failed to find runtime handler kata-qemu")


async def test_runtimeclass_not_found_from_kubelet(tmp_path: Path) -> None:
    """kata-containers#3633 (Kata from packages, no RuntimeClass objects)."""
    root = healthy_node(tmp_path / "host")
    add_log(
        root,
        CONTAINERD_LOG,
        'E0717 10:00:00.000000    1107 kuberuntime_sandbox.go:45] "CreatePodSandbox for pod failed" err="runtimeclass.node.k8s.io \\"kata\\" not found" pod="default/web-0"',
    )
    d, _ = await collect_and_diagnose(root, tmp_path)
    assert_top(d, "runtimeclass-not-found", "runtimeclass.node.k8s.io")
    assert d.findings[0].pod == "default/web-0"


async def test_shim_not_found(tmp_path: Path) -> None:
    """kata-containers#9256: runtime_type io.containerd.kata.v2 without the shim on containerd's PATH."""
    root = healthy_node(tmp_path / "host")
    add_log(
        root,
        CONTAINERD_LOG,
        'ctr: failed to start shim: failed to resolve runtime path: runtime "io.containerd.kata.v2" binary not installed "containerd-shim-kata-v2": file does not exist: unknown',
    )
    d, _ = await collect_and_diagnose(root, tmp_path)
    assert_top(d, "shim-not-found", "binary not installed")
    assert "hypervisor-asset-missing" not in ids(d)


async def test_legacy_runtime_cli(tmp_path: Path) -> None:
    """kata-containers#1775 family: Docker calls kata-runtime 2.x as an OCI runtime."""
    root = healthy_node(tmp_path / "host")
    add_log(
        root,
        CONTAINERD_LOG,
        'docker: Error response from daemon: failed to create task for container: failed to create shim task: OCI runtime create failed: Invalid command "create": unknown.',
    )
    d, _ = await collect_and_diagnose(root, tmp_path)
    assert_top(d, "legacy-runtime-cli", 'Invalid command "create"')


async def test_annotation_not_enabled(tmp_path: Path) -> None:
    """kata-containers#2088 / #6345: an annotation outside enable_annotations."""
    root = healthy_node(tmp_path / "host")
    add_log(
        root,
        CONTAINERD_LOG,
        "Failed to create pod sandbox: rpc error: code = Unknown desc = failed to create containerd task: failed to create shim task: annotation io.katacontainers.config.hypervisor.virtio_fs_extra_args is not enabled: unknown",
    )
    d, _ = await collect_and_diagnose(root, tmp_path)
    assert_top(d, "annotation-not-enabled", "virtio_fs_extra_args is not enabled", confirmed=True)
    assert any("enable_annotations" in e.text for e in d.findings[0].evidence)


async def test_cgroup_v2_unsupported_config(tmp_path: Path) -> None:
    """kata-containers#3038 family (Ubuntu 22.04, cgroup v2, sandbox_cgroup_only=false)."""
    root = healthy_node(tmp_path / "host")
    add_log(
        root,
        CONTAINERD_LOG,
        'time="2022-07-04T16:42:03Z" level=error msg="Create new sandbox failed" error="Could not create the sandbox resource controller cgroups: cgroup mountpoint does not exist" name=containerd-shim-v2 pid=5 sandbox=sb0123456789 source=virtcontainers subsystem=sandbox',
    )
    d, _ = await collect_and_diagnose(root, tmp_path)
    assert_top(d, "cgroup-v2-unsupported-config", "cgroup mountpoint does not exist", confirmed=True)
    assert any("sandbox_cgroup_only = false" in e.text for e in d.findings[0].evidence)


async def test_hugepages_insufficient(tmp_path: Path) -> None:
    """kata-containers#10341: enable_hugepages with fewer free hugepages than the VM needs."""
    root = healthy_node(tmp_path / "host")
    cfg = root / "etc/kata-containers/configuration.toml"
    cfg.write_text(cfg.read_text().replace("[hypervisor.qemu]\n", "[hypervisor.qemu]\nenable_hugepages = true\n"))
    write(
        root,
        "proc/meminfo",
        "MemTotal: 16000000 kB\nHugePages_Total: 512\nHugePages_Free: 512\nHugepagesize: 2048 kB\n",
    )
    add_log(
        root,
        CONTAINERD_LOG,
        "qemu-lite-system-x86_64: -object memory-backend-file,id=dimm1,size=2048M,mem-path=/dev/hugepages,share=on,prealloc=on: unable to map backing store for guest RAM: Cannot allocate memory",
    )
    d, _ = await collect_and_diagnose(root, tmp_path)
    assert_top(d, "hugepages-insufficient", "unable to map backing store", confirmed=True)
    assert "1024 MiB of hugepages free" in d.findings[0].explanation


async def test_hypervisor_asset_missing_from_config_and_runtime_error(tmp_path: Path) -> None:
    """kata-containers#6395 (FCOS): the kernel named by the configuration does not exist."""
    root = healthy_node(tmp_path / "host")
    cfg = root / "etc/kata-containers/configuration.toml"
    cfg.write_text(
        cfg.read_text().replace(
            "[hypervisor.qemu]\n", '[hypervisor.qemu]\nkernel = "/var/cache/kata-containers/vmlinuz.container"\n'
        )
    )
    add_log(
        root,
        CONTAINERD_LOG,
        "/usr/share/kata-containers/defaults/configuration.toml: file /var/cache/kata-containers/vmlinuz.container does not exist",
    )
    d, _ = await collect_and_diagnose(root, tmp_path)
    assert_top(d, "hypervisor-asset-missing", "vmlinuz.container does not exist", confirmed=True)
    assert any("kernel = /var/cache/kata-containers/vmlinuz.container" in e.text for e in d.findings[0].evidence)


async def test_firecracker_needs_devmapper(tmp_path: Path) -> None:
    """kata-containers#8764 (kata-fc via kata-deploy, containerd, overlayfs)."""
    root = healthy_node(tmp_path / "host")
    write(
        root, "etc/kata-containers/configuration.toml", '[hypervisor.firecracker]\npath = "/opt/kata/bin/firecracker"\n'
    )
    write(root, "opt/kata/bin/firecracker", "")
    sid = "e451326df87ad20cbe9f2c6827d34ea0571690810f676d4df81be6445a7a25f8"
    add_log(
        root,
        CONTAINERD_LOG,
        f'Warning  FailedCreatePodSandBox  36s (x102 over 23m)  kubelet  (combined from similar events): Failed to create pod sandbox: rpc error: code = Unknown desc = failed to create containerd task: failed to create shim task: failed to mount "/run/kata-containers/shared/containers/{sid}/rootfs" to "/run/kata-containers/{sid}/rootfs", with error: ENOENT: No such file or directory: unknown',
    )
    d, _ = await collect_and_diagnose(root, tmp_path)
    assert_top(d, "firecracker-needs-devmapper", "with error: ENOENT", confirmed=True)


async def test_crio_skip_mount_home(tmp_path: Path) -> None:
    """kata-containers#10004 (Kata 3.6, CRI-O, storage.conf without skip_mount_home)."""
    root = healthy_node(tmp_path / "host")
    write(
        root,
        "etc/crio/crio.conf",
        '[crio.runtime.runtimes.kata]\nruntime_path = "/opt/kata/bin/containerd-shim-kata-v2"\nruntime_type = "vm"\n',
    )
    write(
        root,
        "etc/containers/storage.conf",
        '[storage]\ndriver = "overlay"\n[storage.options.overlay]\nmountopt = "nodev"\n',
    )
    sid = "8957d4a688aaa99fb71182a536ee95cb186fc3673708164e36175de95f819e99"
    add_log(
        root,
        CRIO_LOG,
        f'Jul 11 15:45:36 worker3-k8s.lan kubelet[1107]: E0711 15:45:36.243423    1107 remote_runtime.go:193] "RunPodSandbox from runtime service failed" err="rpc error: code = Unknown desc = CreateContainer failed: failed to mount /run/kata-containers/shared/containers/{sid}/rootfs to /run/kata-containers/{sid}/rootfs, with error: ENOENT: No such file or directory: unknown"',
    )
    d, _ = await collect_and_diagnose(root, tmp_path)
    assert_top(d, "crio-skip-mount-home", "with error: ENOENT", confirmed=True)
    assert any(e.path == "host/files/etc/containers/storage.conf" for e in d.findings[0].evidence)


async def test_guest_pull_misconfigured(tmp_path: Path) -> None:
    """kata-containers#8407: nydus handler, image layers unpacked by overlayfs before."""
    root = healthy_node(tmp_path / "host")
    write(
        root,
        "etc/containerd/config.toml",
        'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata-qemu-coco-dev]\n  runtime_type = "io.containerd.kata-qemu-coco-dev.v2"\n  snapshotter = "nydus"\n',
    )
    add_log(
        root,
        CONTAINERD_LOG,
        'Warning  FailedCreatePodSandBox  1s    kubelet            Failed to create pod sandbox: rpc error: code = NotFound desc = failed to start sandbox "10e7b3ad6400414b393eb8b7e7dc84cfbdd2875bad6733b0db8081a8b99d61ae": failed to create containerd container: error unpacking image: failed to extract layer sha256:1021ef88c7974bfff89c5a0ec4fd3160daac6c48a075f74cff721f85dd104e68: failed to get reader from content store: content digest sha256:fbe1a72f5dcd08ba4ca3ce3468c742786c1f6578c1f6bb401be1c4620d6ff705: not found',
    )
    d, _ = await collect_and_diagnose(root, tmp_path)
    assert_top(d, "guest-pull-misconfigured", "error unpacking image", confirmed=True)
    assert d.findings[0].sandbox == "10e7b3ad6400414b393eb8b7e7dc84cfbdd2875bad6733b0db8081a8b99d61ae"


async def test_selinux_denied_outranks_virtiofsd_connection_refused(tmp_path: Path) -> None:
    """containers/container-selinux#108 (Fedora, virtiofsd as container_kvm_t) + kata-containers#4434."""
    root = healthy_node(tmp_path / "host")
    write(root, "sys/fs/selinux/enforce", "1")
    add_log(
        root,
        CONTAINERD_LOG,
        f'time="2024-04-22T15:16:12Z" level=error msg="qemu-system-x86_64: -chardev socket,id=char-636e243cbeb801b1,path=/run/vc/vm/{SID}/vhost-fs.sock: Failed to connect to \'/run/vc/vm/{SID}/vhost-fs.sock\': Connection refused" name=containerd-shim-v2 pid=441143 qemuPid=441152 sandbox={SID} source=virtcontainers/hypervisor subsystem=qemu',
    )
    add_log(
        root,
        "var/log/audit/audit.log",
        'type=AVC msg=audit(1601481071.991:128): avc:  denied  { write } for  pid=25901 comm="virtiofsd" name="/" dev="tmpfs" ino=14755 scontext=system_u:system_r:container_kvm_t:s0:c534,c983 tcontext=system_u:object_r:tmp_t:s0 tclass=dir permissive=0',
        'type=AVC msg=audit(1601481071.991:129): avc:  denied  { read } for  pid=99 comm="runc" name="x" scontext=a tcontext=b tclass=file permissive=0',
    )
    d, _ = await collect_and_diagnose(root, tmp_path, logs_in_bundle={"var/log/audit/audit.log": "audit"})
    assert_top(d, "selinux-denied", 'comm="virtiofsd"', confirmed=True)
    assert not any('comm="runc"' in e.text for e in d.findings[0].evidence)
    virtiofsd = next(f for f in d.findings if f.id == "virtiofsd-failed")
    assert virtiofsd.severity == "info" and "selinux-denied" in virtiofsd.explanation


async def test_guest_kernel_panic_from_console_relay(tmp_path: Path) -> None:
    """kata-containers#771 / #24: the console relay ends in a kernel panic."""
    root = healthy_node(tmp_path / "host")
    sid = "fd12f5675c96ff6c0990f3e0da74c9b45c149503a4df4cc2d27fae4e499dd262"
    add_log(
        root,
        CONTAINERD_LOG,
        f'time="2020-09-21T20:40:24.905179470+08:00" level=debug msg="reading guest console" console-protocol=unix console-url=/run/vc/vm/{sid}/console.sock pid=61921 sandbox={sid} source=virtcontainers subsystem=sandbox vmconsole="[    0.412000] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100"',
        f'time="2020-09-21T20:40:54Z" level=error msg="Create new sandbox failed" error="Failed to check if grpc server is working: rpc error: code = DeadlineExceeded desc = timed out connecting to vsock 1:1024" sandbox={sid}',
    )
    d, _ = await collect_and_diagnose(root, tmp_path)
    assert_top(d, "guest-kernel-panic", "Kernel panic - not syncing")
    assert "Attempted to kill init" in d.findings[0].title
    assert "agent-unreachable" not in ids(d, "error")
