"""Same error text, different cause: the host facts decide. And a healthy node with the
known noise gives no error at all."""

from __future__ import annotations

from pathlib import Path

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

SID = "e451326df87ad20cbe9f2c6827d34ea0571690810f676d4df81be6445a7a25f8"
ENOENT = (
    f"failed to mount /run/kata-containers/shared/containers/{SID}/rootfs to /run/kata-containers/{SID}/rootfs, "
    "with error: ENOENT: No such file or directory: unknown"
)


async def test_rootfs_enoent_is_devmapper_on_firecracker_and_skip_mount_home_on_crio(tmp_path: Path) -> None:
    """kata-containers#6785 (fc + containerd) vs #9878 (CRI-O): the same agent error."""
    fc = healthy_node(tmp_path / "fc")
    write(
        fc, "etc/kata-containers/configuration.toml", '[hypervisor.firecracker]\npath = "/opt/kata/bin/firecracker"\n'
    )
    add_log(fc, CONTAINERD_LOG, f"ctr: failed to create shim task: {ENOENT}")
    crio = healthy_node(tmp_path / "crio")
    write(crio, "etc/crio/crio.conf.d/99-kata.conf", '[crio.runtime.runtimes.kata]\nruntime_type = "vm"\n')
    write(crio, "etc/containers/storage.conf", '[storage]\ndriver = "overlay"\n')
    add_log(crio, CRIO_LOG, f"CreateContainer failed: {ENOENT}")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    d_fc, _ = await collect_and_diagnose(fc, tmp_path / "a")
    d_crio, _ = await collect_and_diagnose(crio, tmp_path / "b")
    assert ids(d_fc, "error") == ["firecracker-needs-devmapper"]
    assert ids(d_crio, "error") == ["crio-skip-mount-home"]


async def test_vhost_vsock_enodev_is_a_conflict_only_with_the_vmware_transport_loaded(tmp_path: Path) -> None:
    """kata-containers#1327 vs #3459: `open /dev/vhost-vsock: no such device` on two hosts."""
    line = "failed to create containerd task: failed to create shim: open /dev/vhost-vsock: no such device: unknown"
    without_module = MODULES.replace("vhost_vsock 16384 0 - Live 0x0000000000000000\n", "")
    vmware = healthy_node(tmp_path / "vmware")
    write(vmware, "proc/modules", without_module + "vmw_vsock_vmci_transport 32768 1 - Live 0x0\n")
    add_log(vmware, CONTAINERD_LOG, line)
    metal = healthy_node(tmp_path / "metal")
    write(metal, "proc/modules", without_module)
    add_log(metal, CONTAINERD_LOG, line)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    d_vmware, _ = await collect_and_diagnose(vmware, tmp_path / "a")
    d_metal, _ = await collect_and_diagnose(metal, tmp_path / "b")
    assert ids(d_vmware, "error") == ["vsock-transport-conflict"]
    assert ids(d_metal, "error") == ["vhost-vsock-unavailable"]


async def test_ttrpc_closed_is_an_oom_kill_only_with_the_kernel_record(tmp_path: Path) -> None:
    """kata-containers#7470: the runtime's "ttrpc: closed" is vm-oom-killed when the kernel log says so."""
    line = "Failed to create pod sandbox: rpc error: code = Unknown desc = failed to create containerd task: failed to create shim task: Failed to Check if grpc server is working: ttrpc: closed: unknown"
    oom = healthy_node(tmp_path / "oom")
    add_log(oom, CONTAINERD_LOG, line)
    add_log(
        oom,
        "var/log/kern.log",
        "Memory cgroup out of memory: Killed process 1162211 (qemu-system-x86) total-vm:2804836kB, anon-rss:20456kB",
    )
    plain = healthy_node(tmp_path / "plain")
    add_log(plain, CONTAINERD_LOG, line)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    d_oom, _ = await collect_and_diagnose(oom, tmp_path / "a", logs_in_bundle={"var/log/kern.log": "kernel"})
    d_plain, _ = await collect_and_diagnose(plain, tmp_path / "b")
    assert ids(d_oom, "error") == ["vm-oom-killed"]
    assert ids(d_oom, "info") == ["agent-unreachable"]
    assert ids(d_plain, "error") == ["agent-unreachable"]


async def test_a_guest_oom_in_the_console_is_not_a_vm_oom_kill(tmp_path: Path) -> None:
    """The workload OOM inside the VM shows in the console, never as a host memcg record."""
    root = healthy_node(tmp_path / "host")
    add_log(
        root,
        CONTAINERD_LOG,
        'level=debug msg="reading guest console" sandbox=sb0123456789 vmconsole="[  12.1] Out of memory: Killed process 311 (java) total-vm:900000kB"',
    )
    d, _ = await collect_and_diagnose(root, tmp_path)
    assert "vm-oom-killed" not in ids(d)


async def test_kvm_permission_denied_with_an_avc_for_qemu_is_selinux(tmp_path: Path) -> None:
    """runtime#2503 (Fedora, qemu as container_t): the KVM error is SELinux's doing."""
    root = healthy_node(tmp_path / "host")
    write(root, "sys/fs/selinux/enforce", "1")
    add_log(
        root,
        CONTAINERD_LOG,
        'level=error msg="qemu-system-x86_64: Could not access KVM kernel module: Permission denied" sandbox=sb0123456789 subsystem=qemu',
    )
    add_log(
        root,
        "var/log/audit/audit.log",
        'type=AVC msg=audit(1587045416.1:9): avc:  denied  { read write } for  pid=23788 comm="qemu-system-x86" path="/dev/kvm" dev="devtmpfs" ino=24766 scontext=system_u:system_r:container_t:s0:c99,c363 tcontext=system_u:object_r:kvm_device_t:s0 tclass=chr_file permissive=0',
    )
    d, _ = await collect_and_diagnose(root, tmp_path, logs_in_bundle={"var/log/audit/audit.log": "audit"})
    assert ids(d, "error") == ["selinux-denied"]
    assert ids(d, "info") == ["kvm-unavailable"]


async def test_permissive_avcs_are_not_denials(tmp_path: Path) -> None:
    root = healthy_node(tmp_path / "host")
    add_log(
        root,
        "var/log/audit/audit.log",
        'type=AVC msg=audit(1.1:2): avc:  denied  { write } for  pid=1 comm="virtiofsd" name="/" scontext=a tcontext=b tclass=dir permissive=1',
    )
    d, _ = await collect_and_diagnose(root, tmp_path, logs_in_bundle={"var/log/audit/audit.log": "audit"})
    assert "selinux-denied" not in ids(d)


async def test_healthy_node_with_known_noise_has_no_findings_and_exit_0(tmp_path: Path) -> None:
    """kata-containers#9540's mshv warning, kata-check's nested warning, a normal teardown."""
    root = healthy_node(tmp_path / "host")
    add_log(
        root,
        CONTAINERD_LOG,
        'time="2024-04-22T15:20:27.128683656-07:00" level=warning msg="Could not add /dev/mshv to the devices cgroup" name=containerd-shim-v2 pid=442154 sandbox=f8a0e2753c016c04363a21d623bad3b14addee608fef3e4ae47fb204908feb3d source=cgroups',
        'time="2024-04-22T15:20:27Z" level=warning msg="Could not add /dev/vfio/vfio to the devices cgroup" sandbox=f8a0e2753c016c04363a21d623bad3b14addee608fef3e4ae47fb204908feb3d source=cgroups',
        'WARN[0000] kernel module parameter has unexpected value  arch=amd64 description="Intel KVM" expected=Y name=kvm_intel parameter=nested pid=1 source=runtime type=module value=N',
        'time="2024-04-22T16:00:00Z" level=info msg="virtiofsd quits" sandbox=f8a0e2753c016c04363a21d623bad3b14addee608fef3e4ae47fb204908feb3d source=virtcontainers/hypervisor subsystem=virtiofsd',
        'time="2024-04-22T16:00:00Z" level=error msg="trace called before context set" sandbox=f8a0e2753c016c04363a21d623bad3b14addee608fef3e4ae47fb204908feb3d type=bug',
    )
    d, _ = await collect_and_diagnose(root, tmp_path)
    assert d.findings == [] and d.exit_code == 0
    assert all(a.status == "ok" for a in d.analyzers)


async def test_missing_dev_kvm_without_a_failure_is_a_warning_not_an_error(tmp_path: Path) -> None:
    root = healthy_node(tmp_path / "host")
    (root / "dev/kvm").unlink()
    d, _ = await collect_and_diagnose(root, tmp_path)
    assert ids(d) == ["kvm-unavailable"] and d.findings[0].severity == "warning" and d.exit_code == 0


async def test_one_cause_many_lines_is_one_finding(tmp_path: Path) -> None:
    root = healthy_node(tmp_path / "host")
    line = 'error="failed to get sandbox runtime: no runtime for \\"kata\\" is configured"'
    add_log(root, CONTAINERD_LOG, *([line] * 40))
    d, _ = await collect_and_diagnose(root, tmp_path)
    assert ids(d) == ["runtime-handler-missing"]
    f = d.findings[0]
    assert f.occurrences == 40 and len([e for e in f.evidence if e.line]) == 8
    assert [e.line for e in f.evidence if e.line] == list(range(1, 9))
