"""Kata configuration in effect, every candidate file, and what kata-env says.

"Which configuration.toml is the runtime actually using" is the first question in most
Kata bug reports; kata-deploy, distro packages and per-handler `ConfigPath`s make it easy
to edit the wrong one.
"""

from __future__ import annotations

import asyncio
import tomllib
from typing import Any

from kata_debug.collectors.base import CollectContext, Collector, CollectorOutput
from kata_debug.node.containerd_config import runtime_handlers
from kata_debug.node.hostroot import HostRoot
from kata_debug.node.kata_config import CONFIG_DIRS, SEARCH_PATHS, drop_in_paths, effective_config_path, load_config

_TOOLS = (
    (
        "kata-env.json",
        ("kata-runtime", "kata-env", "--json"),
        ("/opt/kata/bin/kata-runtime", "/usr/bin/kata-runtime", "/usr/local/bin/kata-runtime"),
    ),
    (
        "kata-ctl-env.txt",
        ("kata-ctl", "env"),
        ("/opt/kata/bin/kata-ctl", "/usr/bin/kata-ctl", "/usr/local/bin/kata-ctl"),
    ),
)


#: Keys of a `[hypervisor.*]` section that name a file the runtime opens or executes.
ASSET_KEYS = ("path", "kernel", "image", "initrd", "firmware", "virtio_fs_daemon", "jailer_path")


def check_assets(host: HostRoot, configs: list[str]) -> list[dict[str, Any]]:
    """Does every asset path of these configurations exist on the node? Blocking.

    A path in the configuration that is not there (distro and kata-static layouts mixed,
    an upgrade that moved /opt/kata) breaks every sandbox using it; `diagnose` names it.
    """
    out: list[dict[str, Any]] = []
    for config in configs:
        try:
            data = tomllib.loads(host.read_text(config, 4 << 20))
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
            continue
        for name, section in (data.get("hypervisor") or {}).items():
            if not isinstance(section, dict):
                continue
            for key in ASSET_KEYS:
                value = section.get(key)
                if isinstance(value, str) and value.startswith("/"):
                    out.append(
                        {
                            "config": config,
                            "section": f"hypervisor.{name}",
                            "setting": key,
                            "path": value,
                            "exists": host.exists(value),
                        }
                    )
    return out


class KataConfigCollector(Collector):
    name = "kata-config"
    summary = (
        "Kata configuration files in search order, config.d drop-ins, the one in effect and its sizing keys, "
        "whether its asset paths exist, kata-env"
    )
    reads = (
        *SEARCH_PATHS,
        *(f"{d}/configuration*.toml" for d in CONFIG_DIRS),
        "<config dir>/config.d/*.toml",
        "/etc/containerd/config.toml (runtime ConfigPath)",
        "kata-runtime kata-env",
        "kata-ctl env",
    )

    async def collect(self, ctx: CollectContext, out: CollectorOutput) -> None:
        host = ctx.host
        files: list[str] = []
        for d in CONFIG_DIRS:
            for name in await asyncio.to_thread(host.listdir, d):
                if name.endswith(".toml"):
                    files.append(f"{d}/{name}")
            files.extend(await asyncio.to_thread(drop_in_paths, host, f"{d}/configuration.toml"))
        for f in files:
            await out.add_host_file("files" + f, f, max_bytes=4 << 20)

        summary: dict[str, Any] = {"search_order": list(SEARCH_PATHS), "found": files, "missing": []}
        effective = await asyncio.to_thread(effective_config_path, host)
        summary["in_effect"] = effective
        summary["sizing"] = await self._sizing(ctx, out, effective) if effective else None
        if not effective:
            summary["missing"].append("no Kata configuration in the default search paths")
        handlers = await asyncio.to_thread(runtime_handlers, host)
        summary["handlers"] = []
        for h in handlers:
            if not h.kata:
                continue
            entry: dict[str, Any] = {"handler": h.name, "runtime_type": h.runtime_type, "config_path": h.config_path}
            if h.config_path:
                entry["sizing"] = await self._sizing(ctx, out, h.config_path)
            summary["handlers"].append(entry)
        in_use = [p for p in [effective, *(h["config_path"] for h in summary["handlers"] if h.get("config_path"))] if p]
        summary["assets"] = await asyncio.to_thread(check_assets, host, list(dict.fromkeys(in_use)))
        summary["tools"] = await self._tools(ctx, out)
        await out.add_json("summary.json", summary)

    async def _sizing(self, ctx: CollectContext, out: CollectorOutput, path: str) -> dict[str, Any] | None:
        try:
            cfg = await asyncio.to_thread(load_config, ctx.host, path)
        except OSError as exc:
            out.item_failed(path, exc.strerror or str(exc))
            return None
        except tomllib.TOMLDecodeError as exc:
            out.item_failed(path, f"not valid TOML: {exc}")
            return None
        return cfg.sizing_keys()

    async def _tools(self, ctx: CollectContext, out: CollectorOutput) -> dict[str, str]:
        """Run kata-env / kata-ctl env from the node when they exist (static binaries)."""
        found: dict[str, str] = {}
        for out_name, argv, paths in _TOOLS:
            real = await asyncio.to_thread(ctx.host.first_file, paths)
            if real is None:
                found[argv[0]] = "not installed"
                continue
            code = await out.add_command(out_name, [str(real), *argv[1:]], max_bytes=4 << 20)
            found[argv[0]] = "not runnable" if code is None else f"exit {code}"
        return found
