"""Analyzers: one module per root cause or small family of look-alikes, all behind
`kata_debug.analyze.base.Analyzer`. `REGISTRY` is the order they run and are listed in.
"""

from __future__ import annotations

from importlib import import_module

from kata_debug.analyze.analyzer import Analyzer
from kata_debug.analyze.base import Evidence, Finding, Signature

# name -> "module:Class"; imported lazily so one broken analyzer cannot break the others.
REGISTRY: dict[str, str] = {
    "kata-install": "install:KataInstallAnalyzer",
    "cri-config": "cri:CriConfigAnalyzer",
    "kata-config": "config:KataConfigAnalyzer",
    "host-capability": "host:HostCapabilityAnalyzer",
    "vm-start": "vm_start:VmStartAnalyzer",
    "rootfs-sharing": "rootfs:RootfsAnalyzer",
    "sizing": "sizing:SizingAnalyzer",
}


def load(name: str) -> type[Analyzer]:
    module, _, cls = REGISTRY[name].partition(":")
    loaded: type[Analyzer] = getattr(import_module(f"kata_debug.analyze.{module}"), cls)
    return loaded


__all__ = ["REGISTRY", "load", "Analyzer", "Evidence", "Finding", "Signature"]
