"""Kata configuration in effect, every candidate file, and what kata-env says.

"Which configuration.toml is the runtime actually using" is the first question in most
Kata bug reports; kata-deploy, distro packages and per-handler `ConfigPath`s make it easy
to edit the wrong one.
"""

from __future__ import annotations

import asyncio
import os
import tomllib
from typing import Any

from kata_debug.collectors.base import CollectContext, Collector, CollectorOutput, host_tool_note
from kata_debug.node.containerd_config import runtime_handlers
from kata_debug.node.hostroot import HostRoot, describe
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
            try:
                names = await asyncio.to_thread(host.listdir, d)
                files.extend(f"{d}/{name}" for name in names if name.endswith(".toml"))
                files.extend(await asyncio.to_thread(drop_in_paths, host, f"{d}/configuration.toml"))
            except OSError as exc:  # a looping or unreadable directory: this one item, not the collector
                out.item_failed(d, describe(exc))
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
        summary["tools"] = await self._tools(ctx, out, effective or next(iter(in_use), None))
        await out.add_json("summary.json", summary)

    async def _sizing(self, ctx: CollectContext, out: CollectorOutput, path: str) -> dict[str, Any] | None:
        try:
            cfg = await asyncio.to_thread(load_config, ctx.host, path)
        except OSError as exc:
            out.item_failed(path, describe(exc))
            return None
        except tomllib.TOMLDecodeError as exc:
            out.item_failed(path, f"not valid TOML: {exc}")
            return None
        return cfg.sizing_keys()

    async def _tools(
        self, ctx: CollectContext, out: CollectorOutput, config: str | None
    ) -> dict[str, dict[str, str | None]]:
        """Run kata-env / kata-ctl env from the node when they exist (static binaries) and may run.

        Under a host root other than `/` they run in this process's mount namespace: they
        are pointed at the node's configuration (`--config`, `KATA_CONF_FILE`) so at least
        the file they describe is the node's; the note says where they ran.
        """
        found: dict[str, dict[str, str | None]] = {}
        on_node = str(ctx.host.root) == "/"
        real_config = None if on_node or config is None else await asyncio.to_thread(ctx.host.resolve, config)
        for out_name, argv, paths in _TOOLS:
            real = await asyncio.to_thread(ctx.host.first_file, paths)
            if real is None:
                found[argv[0]] = {"result": "not installed", "ran": None}
                continue
            if not ctx.run_host_tools:
                found[argv[0]] = {
                    "result": "not run",
                    "ran": f"{real} not run: --host-root is not / (pass --run-host-tools to run the node's binaries)",
                }
                continue
            cmd = [str(real), *argv[1:]]
            env = None
            if real_config is not None:
                env = {**os.environ, "KATA_CONF_FILE": str(real_config)}
                if argv[0] == "kata-runtime":
                    cmd = [str(real), "--config", str(real_config), *argv[1:]]
            code = await out.add_command(out_name, cmd, max_bytes=4 << 20, env=env)
            found[argv[0]] = {
                "result": "not runnable" if code is None else f"exit {code}",
                "ran": host_tool_note(ctx, str(real)),
                **({"config": str(real_config)} if real_config is not None else {}),
            }
        return found
