"""The Kata configuration names files that do not exist, or a hypervisor section Kata does not know.

The kata-config collector checks every asset path of the configurations in use under the
host root (`summary.json` "assets"); the runtime's own messages confirm it failed on them.
"""

from __future__ import annotations

from typing import Any

from kata_debug.analyze.analyzer import Analyzer
from kata_debug.analyze.base import Evidence, Finding, Signature
from kata_debug.analyze.common import ISSUES, RUNTIME_ISSUES, finding
from kata_debug.analyze.evidence import EvidenceView

ASSET = Signature.of(
    "asset.missing",
    (
        "does not exist",
        "Cannot find usable config file",
        "invalid hypervisor section",
        "VM memory cannot be zero",
        "fork/exec",
        "could not load kernel",
        "could not load initrd",
        "Could not open '",
        "image file",
        "an image and an initrd",
        "either image or initrd",
    ),
    r"file (?P<path>/\S+?) does not exist|Cannot find usable config file|configuration file contains invalid hypervisor section: \\*\"(?P<section>[^\"\\]+)|VM memory cannot be zero|fork/exec (?P<bin>\S*(?:qemu[\w.-]*|cloud-hypervisor|firecracker|jailer|virtiofsd|stratovirt)): no such file or directory|could not load (?:kernel|initrd) '(?P<asset>[^']+)'|Could not open '(?P<img>[^']+)': No such file or directory|guest (?:kernel|boot|initrd) image file (?P<rs>\S+) is invalid|firmware image file (?P<fw>\S+) is invalid|cannot specify an image and an initrd|either image or initrd must be defined",
)

KNOWN_SECTIONS = {"qemu", "clh", "cloud-hypervisor", "firecracker", "dragonball", "stratovirt", "remote", "acrn"}


class KataConfigAnalyzer(Analyzer):
    name = "kata-config"
    causes = ("hypervisor-asset-missing",)
    reads = ("kata-config/files/*",)
    signatures = (ASSET,)

    def analyze(self, view: EvidenceView) -> list[Finding]:
        lines = [m for m in view.matches(ASSET.name) if "/dev/" not in m.groups.get("img", "")]
        facts: list[Evidence] = []
        assets: Any = view.kata_summary.get("assets") or []
        for a in assets:
            if isinstance(a, dict) and a.get("exists") is False:
                facts.append(
                    Evidence(
                        view.shown(f"kata-config/files{a.get('config')}"),
                        None,
                        f"[{a.get('section')}] {a.get('setting')} = {a.get('path')}: does not exist on the node",
                    )
                )
        for path, name, _ in view.hypervisor_sections():
            if name not in KNOWN_SECTIONS:
                facts.append(
                    Evidence(
                        view.shown(f"kata-config/files{path}"),
                        None,
                        f"[hypervisor.{name}]: not a hypervisor Kata knows",
                    )
                )
        if not lines and not facts:
            return []
        return [
            finding(
                view,
                "hypervisor-asset-missing",
                "error" if lines else "warning",
                "The Kata configuration points at a hypervisor, kernel, image or initrd that does not exist"
                if facts or lines
                else "",
                "The runtime loads the configuration and checks (or the hypervisor opens) every asset path"
                + ("; the collector found these paths missing under the host root" if facts else "")
                + ". Not shim-not-found (the shim ran) and not kvm-unavailable (this is a file, not /dev/kvm)."
                + ("" if lines else " No sandbox failure is in the logs yet: the next one using it will fail."),
                "Point path, kernel, image/initrd (and virtio_fs_daemon) at files that exist for the installed Kata "
                "release or reinstall the missing assets; name the hypervisor section after a supported hypervisor "
                "and make sure the runtime loads the intended file. Refs: "
                f"{RUNTIME_ISSUES}2738, {ISSUES}8212, {ISSUES}6395",
                lines,
                facts,
                confirmed=bool(facts),
                occurrences=view.count(ASSET.name) or len(facts),
            )
        ]
