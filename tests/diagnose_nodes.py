"""Synthetic nodes for `diagnose`: a healthy Kata node, plus what a failing one adds.

Log files stand in for journald (tests cannot write the kernel transport): containerd's log
file carries the shim's lines as containerd copies them, `/var/log/kern.log` the kernel's,
`/var/log/audit/audit.log` the AVC records.
"""

from __future__ import annotations

import shutil
import tarfile
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path

from kata_debug.analyze.diagnose import Diagnosis, diagnose
from kata_debug.collect.runner import CollectOptions, run_collection
from tests.hostroots import kata_node

CPUINFO = "processor\t: 0\nflags\t\t: fpu vme de pse msr vmx sse sse2\n\nprocessor\t: 1\nflags\t\t: fpu vme vmx\n"
MODULES = "".join(
    f"{m} 16384 0 - Live 0x0000000000000000\n"
    for m in ("kvm", "kvm_intel", "vhost", "vhost_net", "vhost_vsock", "vsock")
)
CONTAINERD_KATA = """\
version = 2
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata]
  runtime_type = "io.containerd.kata.v2"
"""


def healthy_node(root: Path, sandbox_id: str = "sb0123456789") -> Path:
    """A Kata node where nothing is wrong: devices, modules, CPU flags, assets, a handler."""
    kata_node(root, sandbox_id)
    write(root, "dev/kvm", "")
    write(root, "dev/vhost-vsock", "")
    write(root, "dev/vhost-net", "")
    write(root, "proc/cpuinfo", CPUINFO)
    write(root, "proc/modules", MODULES)
    write(root, "proc/sys/kernel/osrelease", "6.8.0-kata-test\n")
    write(root, "sys/fs/cgroup/cgroup.controllers", "cpuset cpu io memory pids\n")
    write(root, "opt/kata/bin/qemu-system-x86_64", "#!/bin/sh\n")
    write(root, "etc/containerd/config.toml", CONTAINERD_KATA)
    return root


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def add_log(root: Path, rel: str, *lines: str) -> None:
    """Append log lines to a node file (`var/log/containerd.log`, `var/log/kern.log`, ...)."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        for line in lines:
            f.write(line + "\n")


#: Log files the shim-logs collector copies as raw text today.
CONTAINERD_LOG = "var/log/containerd.log"
CRIO_LOG = "var/log/crio.log"


#: The upstream lines keep their original timestamps (years old): collect all of them.
SINCE_EVERYTHING = timedelta(days=365 * 30)


async def collect(root: Path, out: Path) -> Path:
    await run_collection(CollectOptions(host_root=root, output=str(out), since=SINCE_EVERYTHING))
    return out


async def collect_and_diagnose(
    root: Path, tmp: Path, *, logs_in_bundle: Mapping[str, str] | None = None
) -> tuple[Diagnosis, Path]:
    """`kata-debug collect --host-root` then diagnose the bundle.

    `logs_in_bundle` adds raw log members the log collector does not gather yet on this
    branch (kernel log, audit log: another change adds those sources) to the extracted
    bundle, under `shim-logs/files/<node path>` like every raw log it copies.
    """
    bundle = await collect(root, tmp / "bundle.tar.gz")
    if not logs_in_bundle:
        return diagnose(str(bundle)), bundle
    extracted = tmp / "extracted"
    with tarfile.open(bundle) as tar:
        tar.extractall(extracted, filter="data")
    top = next(extracted.iterdir())
    for node_path in logs_in_bundle:
        src = root / node_path
        dest = top / "shim-logs" / "files" / node_path
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dest)
    return diagnose(str(extracted)), extracted


def ids(d: Diagnosis, severity: str | None = None) -> list[str]:
    return [f.id for f in d.findings if severity is None or f.severity == severity]
