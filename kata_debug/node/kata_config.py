"""Which Kata configuration is in effect on a node, and the keys that size the VM.

Kata reads the first of its search paths that exists, then merges `config.d/*.toml`
drop-ins beside it in lexical order. kata-deploy installs under /opt/kata instead and points
containerd's runtime handlers at a file there (`ConfigPath`), so those count too.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from typing import Any

from kata_debug.node.hostroot import HostRoot

SEARCH_PATHS: tuple[str, ...] = (
    "/etc/kata-containers/configuration.toml",
    "/usr/share/defaults/kata-containers/configuration.toml",
)
# Directories that hold configuration-<hypervisor>.toml variants (listed, not "in effect").
CONFIG_DIRS: tuple[str, ...] = (
    "/etc/kata-containers",
    "/usr/share/defaults/kata-containers",
    "/opt/kata/share/defaults/kata-containers",
    "/etc/kata-containers/runtime-rs",
    "/usr/share/defaults/kata-containers/runtime-rs",
    "/opt/kata/share/defaults/kata-containers/runtime-rs",
)


@dataclass
class KataConfig:
    """The sizing-relevant view of one (merged) Kata configuration."""

    path: str
    drop_ins: list[str]
    hypervisor: str | None
    default_vcpus: float | None
    default_maxvcpus: int | None
    default_memory: int | None
    static_sandbox_resource_mgmt: bool | None
    sandbox_cgroup_only: bool | None
    enable_annotations: list[str]
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    def sizing_keys(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "drop_ins": self.drop_ins,
            "hypervisor": self.hypervisor,
            "default_vcpus": self.default_vcpus,
            "default_maxvcpus": self.default_maxvcpus,
            "default_memory": self.default_memory,
            "static_sandbox_resource_mgmt": self.static_sandbox_resource_mgmt,
            "sandbox_cgroup_only": self.sandbox_cgroup_only,
            "enable_annotations": self.enable_annotations,
        }


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_config(data: dict[str, Any], path: str, drop_ins: list[str] | None = None) -> KataConfig:
    hyp_section: dict[str, Any] = {}
    hyp_name: str | None = None
    hyps = data.get("hypervisor")
    if isinstance(hyps, dict) and hyps:
        hyp_name = next(iter(hyps))
        hyp_section = hyps[hyp_name] if isinstance(hyps[hyp_name], dict) else {}
    runtime = got if isinstance(got := data.get("runtime"), dict) else {}

    def num(v: Any) -> Any:
        return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    def flag(v: Any) -> bool | None:
        return v if isinstance(v, bool) else None

    ann = hyp_section.get("enable_annotations")
    return KataConfig(
        path=path,
        drop_ins=drop_ins or [],
        hypervisor=hyp_name,
        default_vcpus=num(hyp_section.get("default_vcpus")),
        default_maxvcpus=num(hyp_section.get("default_maxvcpus")),
        default_memory=num(hyp_section.get("default_memory")),
        static_sandbox_resource_mgmt=flag(runtime.get("static_sandbox_resource_mgmt")),
        sandbox_cgroup_only=flag(runtime.get("sandbox_cgroup_only")),
        enable_annotations=[str(a) for a in ann] if isinstance(ann, list) else [],
        raw=data,
    )


def drop_in_paths(host: HostRoot, config_path: str) -> list[str]:
    directory = config_path.rsplit("/", 1)[0] + "/config.d"
    return [f"{directory}/{n}" for n in host.listdir(directory) if n.endswith(".toml")]


def load_config(host: HostRoot, path: str) -> KataConfig:
    """Parse `path` plus its drop-ins. Raises OSError / tomllib.TOMLDecodeError (blocking)."""
    with host.open(path) as fh:
        data = tomllib.load(fh)
    drop_ins = drop_in_paths(host, path)
    for d in drop_ins:
        with host.open(d) as fh:
            data = _merge(data, tomllib.load(fh))
    return parse_config(data, path, drop_ins)


def effective_config_path(host: HostRoot) -> str | None:
    for p in SEARCH_PATHS:
        if host.is_file(p):
            return p
    return None


def load_effective_config(host: HostRoot) -> KataConfig | None:
    """The configuration the Go runtime would use with no explicit path, or None if absent.

    Blocking; call through asyncio.to_thread from async code.
    """
    path = effective_config_path(host)
    return load_config(host, path) if path else None
