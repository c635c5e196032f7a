"""Is Kata installed and wired up, and was the bundle collected with enough rights: the checks
the end of `collect` used to print as its own list are findings, from bundle evidence only."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

from kata_debug.analyze.diagnose import diagnose
from kata_debug.analyze.install import ROOT_WOULD_ADD
from kata_debug.collectors.host import gather_facts
from kata_debug.node.hostroot import HostRoot
from tests.diagnose_nodes import CONTAINERD_LOG, add_log, collect, collect_and_diagnose, healthy_node, ids, write


def extracted(bundle: Path, into: Path) -> Path:
    with tarfile.open(bundle) as tar:
        tar.extractall(into, filter="data")
    return next(into.iterdir())


async def test_a_bare_node_is_one_warning_that_says_it_is_not_broken(tmp_path: Path) -> None:
    root = tmp_path / "bare"
    write(root, "etc/hostname", "plain\n")
    write(root, "proc/cpuinfo", "processor\t: 0\nflags\t\t: fpu sse\n")
    (tmp_path / "out").mkdir()
    d, _ = await collect_and_diagnose(root, tmp_path / "out")
    assert [(f.id, f.severity) for f in d.findings] == [("kata-not-installed", "warning")]
    (f,) = d.findings
    assert d.exit_code == 0
    assert "A node without Kata that runs no Kata pods is not broken" in f.explanation
    texts = [e.text for e in f.evidence]
    assert texts[0] == (
        "no Kata configuration (configuration*.toml) in /etc/kata-containers, "
        "/usr/share/defaults/kata-containers or /opt/kata/share/defaults/kata-containers"
    )
    for gap in (
        "/dev/kvm not present",
        "/dev/vhost-vsock not present",
        "CPU virtualization flag (vmx/svm) not exposed",
        "no Kata runtime handler in the containerd config",
    ):
        assert gap in texts and gap in f.fix
    # The host-capability findings are about nodes meant to run Kata: not repeated here.
    assert "kvm-unavailable" not in ids(d) and "vhost-vsock-unavailable" not in ids(d)


async def test_a_kata_handler_without_any_kata_configuration_says_sandboxes_will_fail(tmp_path: Path) -> None:
    root = healthy_node(tmp_path / "n")
    (root / "etc/kata-containers/configuration.toml").unlink()
    (tmp_path / "out").mkdir()
    d, _ = await collect_and_diagnose(root, tmp_path / "out")
    assert ids(d) == ["kata-not-installed"]
    assert d.findings[0].title.startswith("containerd has a Kata handler (kata) but Kata has no configuration")


async def test_kata_deploy_on_cri_o_is_installed_without_any_containerd_handler(tmp_path: Path) -> None:
    """kata-deploy on CRI-O: configuration-qemu.toml under /opt/kata, named by crio.conf.d, no containerd."""
    root = tmp_path / "crio"
    write(root, "etc/hostname", "crio-node\n")
    write(root, "opt/kata/share/defaults/kata-containers/configuration-qemu.toml", "[hypervisor.qemu]\n")
    write(
        root,
        "etc/crio/crio.conf.d/99-kata-deploy.conf",
        '[crio.runtime.runtimes.kata-qemu]\nruntime_config_path = "/opt/kata/share/defaults/kata-containers/'
        'configuration-qemu.toml"\nruntime_type = "vm"\n',
    )
    (tmp_path / "out").mkdir()
    d, _ = await collect_and_diagnose(root, tmp_path / "out")
    assert "kata-not-installed" not in ids(d) and "runtime-handler-missing" not in ids(d)


async def test_kata_installed_without_a_containerd_handler_is_runtime_handler_missing(tmp_path: Path) -> None:
    root = healthy_node(tmp_path / "n")
    write(root, "etc/containerd/config.toml", "version = 2\n")
    (tmp_path / "out").mkdir()
    d, _ = await collect_and_diagnose(root, tmp_path / "out")
    assert [(f.id, f.severity) for f in d.findings] == [("runtime-handler-missing", "warning")]
    assert "no Kata runtime handler in the containerd config" in [e.text for e in d.findings[0].evidence]


async def test_a_handler_the_cri_refused_is_one_finding_the_error(tmp_path: Path) -> None:
    root = healthy_node(tmp_path / "n")
    write(root, "etc/containerd/config.toml", "version = 2\n")
    add_log(
        root,
        CONTAINERD_LOG,
        'time="2024-05-02T10:00:00Z" level=error msg="RunPodSandbox failed" error="no runtime for \\"kata\\" is configured"',
    )
    (tmp_path / "out").mkdir()
    d, _ = await collect_and_diagnose(root, tmp_path / "out")
    assert [(f.id, f.severity) for f in d.findings] == [("runtime-handler-missing", "error")]


def test_without_proc_modules_the_module_state_is_unknown_not_absent(tmp_path: Path) -> None:
    root = healthy_node(tmp_path / "n")
    (root / "proc/modules").unlink()
    facts = gather_facts(HostRoot.at(root))
    assert facts["modules_known"] is False
    assert facts["modules"]["vhost_vsock"] == "unknown" and facts["modules"]["kvm_intel"] == "unknown"
    assert not any("module" in m for m in facts["missing"])


async def test_unknown_modules_with_the_device_present_are_no_finding(tmp_path: Path) -> None:
    root = healthy_node(tmp_path / "n")
    (root / "proc/modules").unlink()
    (tmp_path / "out").mkdir()
    d, _ = await collect_and_diagnose(root, tmp_path / "out")
    assert ids(d) == []


async def test_unknown_modules_never_claim_a_module_is_missing(tmp_path: Path) -> None:
    root = healthy_node(tmp_path / "n")
    (root / "proc/modules").unlink()
    (root / "dev/vhost-vsock").unlink()
    (tmp_path / "out").mkdir()
    d, _ = await collect_and_diagnose(root, tmp_path / "out")
    assert [(f.id, f.severity) for f in d.findings] == [("vhost-vsock-unavailable", "warning")]
    f = d.findings[0]
    assert f.title.startswith("/dev/vhost-vsock is not present")
    said = " ".join([f.title, f.explanation, *(e.text for e in f.evidence)])
    assert "not loaded" not in said.replace("whether the module is loaded is not known", "")
    assert "absent" not in said and "module vhost_vsock: unknown" in said


def test_an_arm_cpu_is_not_said_to_lack_vmx(tmp_path: Path) -> None:
    root = tmp_path / "arm"
    write(root, "proc/cpuinfo", "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32\n")
    facts = gather_facts(HostRoot.at(root))
    assert facts["cpu"]["virtualization_flags"] is None
    assert not any("vmx" in m for m in facts["missing"])


async def test_a_non_root_collection_of_the_node_itself_is_an_info_finding(tmp_path: Path) -> None:
    root = healthy_node(tmp_path / "n")
    bundle = await collect(root, tmp_path / "b.tar.gz")
    facts_of = extracted(bundle, tmp_path / "x") / "host/facts.json"
    facts = json.loads(facts_of.read_text())
    assert facts["collection"] == {"euid": os.geteuid(), "host_root_is_slash": False}

    def with_run(euid: int, host_root: str) -> list[str]:
        facts["collection"] = {"euid": euid, "host_root_is_slash": host_root == "/"}
        facts_of.write_text(json.dumps(facts))
        return ids(diagnose(str(facts_of.parent.parent)))

    assert with_run(1000, "/") == ["collected-without-root"]
    assert with_run(0, "/") == []
    assert with_run(1000, str(root)) == []  # a copied root is read as it is: root adds nothing
    with_run(1000, "/")
    (f,) = diagnose(str(facts_of.parent.parent)).findings
    assert f.severity == "info" and f.fix == ROOT_WOULD_ADD
    assert [e.text for e in f.evidence] == ["collected by user id 1000 with --host-root /"]


async def test_the_report_shows_unknown_modules_as_unknown_not_as_a_problem(tmp_path: Path) -> None:
    from kata_debug.report import write_report

    root = healthy_node(tmp_path / "n")
    (root / "proc/modules").unlink()
    bundle = await collect(root, tmp_path / "b.tar.gz")
    page = tmp_path / "r.html"
    write_report(bundle, page)
    html = page.read_text()
    assert 'vhost_vsock <span class="none">unknown</span>' in html
    assert 'class="bad">absent' not in html
