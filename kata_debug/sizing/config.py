"""Which sizing configuration applies to a workload: a node's file, or kata-deploy's defaults.

On a node we read the configuration in effect (`kata_config.load_effective_config`). For a
manifest there is no node, so we fall back to what kata-deploy installs for the runtime
handler the pod names (`kata-qemu` -> configuration-qemu.toml, `kata-dragonball` ->
runtime-rs dragonball, ...): the handler decides the runtime, the hypervisor and whether
sizing is static, which changes the answer more than anything else. The table below is
read from the 4.1.0 Makefiles and `configuration-*.toml.in` templates (x86_64 values).
"""

from __future__ import annotations

import tomllib
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from kata_debug.errors import UsageError
from kata_debug.node.kata_config import KataConfig, parse_config
from kata_debug.sizing.model import GO, GO_ENABLE_ANNOTATIONS, KATA_RELEASE, RS, RS_ENABLE_ANNOTATIONS, SizingConfig

_COCO = ("enable_iommu", "kernel_params", "kernel_verity_params", "default_vcpus", "default_memory", "cc_init_data")


def _go(hyp: str, static: bool, memory: int = 2048, ann: tuple[str, ...] = GO_ENABLE_ANNOTATIONS) -> SizingConfig:
    return SizingConfig(
        runtime=GO, hypervisor=hyp, default_memory=memory, static_sandbox_resource_mgmt=static, enable_annotations=ann
    )


def _rs(
    hyp: str, ov_cpu: float, ov_mem: int, memory: int = 2048, ann: tuple[str, ...] = RS_ENABLE_ANNOTATIONS
) -> SizingConfig:
    return SizingConfig(
        runtime=RS,
        hypervisor=hyp,
        default_memory=memory,
        static_sandbox_resource_mgmt=True,
        enable_annotations=ann,
        overhead_vcpus=ov_cpu,
        overhead_memory=ov_mem,
    )


# kata-deploy shim name (handler without "kata-") -> its configuration's sizing keys.
PROFILES: dict[str, SizingConfig] = {
    # Go runtime (src/runtime/Makefile, config/configuration-*.toml.in)
    "qemu": _go("qemu", static=False),  # static only on arm64
    "clh": _go("clh", static=False),
    "clh-azure": _go("clh", static=True),
    "fc": _go("firecracker", static=True),
    "stratovirt": _go("stratovirt", static=True),
    "qemu-coco-dev": _go("qemu", static=True, ann=_COCO),
    "qemu-snp": _go("qemu", static=True, ann=_COCO),
    "qemu-tdx": _go("qemu", static=True, ann=_COCO),
    "qemu-se": _go("qemu", static=True, ann=_COCO),
    "qemu-nvidia-cpu": _go("qemu", static=True),
    "qemu-nvidia-gpu": _go("qemu", static=True, memory=8192),
    "qemu-nvidia-gpu-snp": _go("qemu", static=True, memory=8192, ann=_COCO),
    "qemu-nvidia-gpu-tdx": _go("qemu", static=True, memory=8192, ann=_COCO),
    # runtime-rs (src/runtime-rs/Makefile DEFOVERHEAD*, config/configuration-*.toml.in)
    "qemu-runtime-rs": _rs("qemu", 0.2, 32),
    "clh-runtime-rs": _rs("clh", 0.2, 32),
    "clh-azure-runtime-rs": _rs("clh", 0.2, 32),
    "dragonball": _rs("dragonball", 0.2, 32),
    "qemu-coco-dev-runtime-rs": _rs("qemu", 0.4, 128, ann=_COCO),
    "qemu-snp-runtime-rs": _rs("qemu", 0.4, 128, ann=_COCO),
    "qemu-tdx-runtime-rs": _rs("qemu", 0.4, 128, ann=_COCO),
    "qemu-se-runtime-rs": _rs("qemu", 0.4, 768, ann=_COCO),
    "qemu-nvidia-cpu-runtime-rs": _rs("qemu", 0.2, 128, ann=()),
    "qemu-nvidia-gpu-runtime-rs": _rs("qemu", 0.5, 512, memory=8192, ann=()),
    "qemu-nvidia-gpu-snp-runtime-rs": _rs("qemu", 0.5, 512, memory=8192, ann=("cc_init_data",)),
    "qemu-nvidia-gpu-tdx-runtime-rs": _rs("qemu", 0.5, 512, memory=8192, ann=("cc_init_data",)),
}

_RS_SUFFIX = "-runtime-rs"


def _shim_of(handler: str | None) -> str:
    if not handler:
        return "qemu"
    h = handler.strip().lower()
    h = h.removeprefix("kata-").removeprefix("kata")
    h = h.lstrip("-_")
    return h or "qemu"


@lru_cache(maxsize=256)
def for_handler(handler: str | None, runtime: str | None = None) -> SizingConfig:
    """kata-deploy's configuration for a runtime handler (or runtimeClassName), as an assumption.

    `runtime` ("go"/"rs") forces the runtime: `kata-qemu` with `rs` becomes the
    `qemu-runtime-rs` shim, and a shim with no twin in the other runtime falls back to qemu.
    """
    shim = _shim_of(handler)
    profile = PROFILES.get(shim)
    if runtime is not None and (profile is None or profile.runtime != runtime):
        base = shim.removesuffix(_RS_SUFFIX)
        twin = base if runtime == GO or base == "dragonball" else base + _RS_SUFFIX
        if twin in PROFILES and PROFILES[twin].runtime == runtime:
            shim = twin
        else:
            shim = "qemu-runtime-rs" if runtime == RS else "qemu"
        profile = PROFILES[shim]
    if profile is None:
        profile = PROFILES["qemu-runtime-rs" if shim.endswith(_RS_SUFFIX) else "qemu"]
        origin = (
            f"handler {handler!r} is not a kata-deploy shim: assumed "
            f"{'runtime-rs' if profile.runtime == RS else 'Go runtime'} qemu defaults"
        )
    else:
        origin = f"kata-deploy {KATA_RELEASE} defaults for shim {shim!r}"
    return replace(profile, source=f"{origin} ({_describe(profile)}); no configuration.toml was read")


def _describe(c: SizingConfig) -> str:
    parts = [
        "runtime-rs" if c.runtime == RS else "Go runtime",
        c.hypervisor,
        f"default_vcpus={c.default_vcpus:g}",
        f"default_memory={c.default_memory}",
        f"static_sandbox_resource_mgmt={'true' if c.static_sandbox_resource_mgmt else 'false'}",
    ]
    if c.runtime == RS:
        parts += [f"overhead_vcpus={c.overhead_vcpus:g}", f"overhead_memory={c.overhead_memory}"]
    return ", ".join(parts)


def runtime_of_config(raw: dict[str, Any], hypervisor: str | None) -> str:
    """runtime-rs configurations name their runtime and hypervisor under [runtime]; Go's do not."""
    runtime = got if isinstance(got := raw.get("runtime"), dict) else {}
    if "hypervisor_name" in runtime or "name" in runtime or hypervisor == "dragonball":
        return RS
    hyp = (raw.get("hypervisor") or {}).get(hypervisor or "", {}) if isinstance(raw.get("hypervisor"), dict) else {}
    if isinstance(hyp, dict) and ("overhead_vcpus" in hyp or "overhead_memory" in hyp):
        return RS
    return GO


def from_kata_config(kc: KataConfig, runtime: str | None = None) -> SizingConfig:
    """The sizing keys of a parsed configuration file; missing keys get the runtime's own defaults.

    A key that is absent behaves as 0/false/empty in both runtimes, which their
    adjustments then turn into 1 vCPU, and 2048 MiB (Go) or 128 MiB (runtime-rs).
    """
    rt = runtime or runtime_of_config(kc.raw, kc.hypervisor)
    hyps = got if isinstance(got := kc.raw.get("hypervisor"), dict) else {}
    hyp = hyps.get(kc.hypervisor or "", {}) if isinstance(hyps, dict) else {}
    hyp = hyp if isinstance(hyp, dict) else {}

    def num(key: str) -> float:
        v = hyp.get(key)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0.0

    cfg = SizingConfig(
        runtime=rt,
        hypervisor=kc.hypervisor or "qemu",
        default_vcpus=float(kc.default_vcpus or 0),
        default_maxvcpus=int(kc.default_maxvcpus or 0),
        default_memory=int(kc.default_memory or 0),
        static_sandbox_resource_mgmt=bool(kc.static_sandbox_resource_mgmt),
        enable_annotations=tuple(kc.enable_annotations),
        overhead_vcpus=num("overhead_vcpus") if rt == RS else 0.0,
        overhead_memory=int(num("overhead_memory")) if rt == RS else 0,
    )
    return replace(cfg, source=f"{kc.path} ({_describe(cfg)})")


def load_config_file(path: Path, runtime: str | None = None) -> SizingConfig:
    """`--config FILE`: a configuration.toml from a node (blocking; call via to_thread)."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise UsageError(f"--config {path}: no such file") from None
    except OSError as exc:
        raise UsageError(f"--config {path}: cannot read: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"--config {path}: not valid TOML: {exc}") from None
    kc = parse_config(data, str(path))
    if kc.hypervisor is None:
        raise UsageError(f"--config {path}: no [hypervisor.<name>] section; is this a Kata configuration.toml?")
    return from_kata_config(kc, runtime)
