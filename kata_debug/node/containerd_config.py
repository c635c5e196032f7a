"""Runtime handlers declared in containerd's config (which map to io.containerd.kata.v2).

Shared by `host` (handlers) and `kata-config` (per-handler ConfigPath).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from typing import Any

from kata_debug.node.hostroot import HostRoot

CONTAINERD_CONFIGS = (
    "/etc/containerd/config.toml",
    "/var/lib/rancher/k3s/agent/etc/containerd/config.toml",
    "/var/lib/rancher/rke2/agent/etc/containerd/config.toml",
)


@dataclass
class RuntimeHandler:
    name: str
    runtime_type: str | None
    config_path: str | None
    source: str

    @property
    def kata(self) -> bool:
        return "kata" in (self.runtime_type or "") or "kata" in self.name


def _runtimes(data: dict[str, Any]) -> dict[str, Any]:
    plugins = data.get("plugins") or {}
    # containerd 1.x: plugins."io.containerd.grpc.v1.cri".containerd.runtimes
    # containerd 2.x: plugins."io.containerd.cri.v1.runtime".containerd.runtimes
    for key in ("io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime", "cri"):
        section = plugins.get(key) or {}
        runtimes = (section.get("containerd") or {}).get("runtimes")
        if isinstance(runtimes, dict):
            return runtimes
    return {}


def runtime_handlers(host: HostRoot) -> list[RuntimeHandler]:
    """Handlers from every containerd config found (blocking)."""
    found: list[RuntimeHandler] = []
    for path in CONTAINERD_CONFIGS:
        try:
            with host.open(path) as fh:
                data = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError):
            continue
        for name, rt in _runtimes(data).items():
            if not isinstance(rt, dict):
                continue
            opts = got if isinstance(got := rt.get("options"), dict) else {}
            found.append(
                RuntimeHandler(
                    name=name,
                    runtime_type=rt.get("runtime_type"),
                    config_path=opts.get("ConfigPath"),
                    source=path,
                )
            )
    return found
