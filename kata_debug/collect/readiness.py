"""What this node lacks to run Kata sandboxes, for the last lines of `collect`.

A bundle from a node without Kata is all `ok` collectors, which reads as "all is well";
the person who ran it needs to be told what is missing instead. This is the one place
that turns a node's state into that list, so `kata-debug diagnose` can take it over
(and replace it with its findings) without the CLI changing shape.

Blocking (it reads a handful of small files under the host root): call it before or
after the event loop, or through `asyncio.to_thread`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from kata_debug.collectors.host import gather_facts
from kata_debug.node.containerd_config import runtime_handlers
from kata_debug.node.hostroot import HostRoot
from kata_debug.node.kata_config import effective_config_path

#: What a root run reads that another user usually cannot: said once, not per failed file.
ROOT_WOULD_ADD = (
    "run as root for a complete bundle: Kata runtime state (/run/vc, /run/kata), containerd task "
    "bundles (OCI specs), the shim monitor sockets, other users' qemu command lines (the VM sizes "
    "actually applied) and the system journal are readable only by root"
)


@dataclass(frozen=True)
class NodeReadiness:
    """What stops this node from running Kata sandboxes, and what a root run would add."""

    missing: list[str] = field(default_factory=list)
    not_root: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"missing": list(self.missing), "not_root": self.not_root}


def node_readiness(host_root: Path, euid: int | None = None) -> NodeReadiness:
    """Check the node under `host_root` for the pieces Kata needs.

    `euid` is the effective user id of this run (default: this process's); the note about
    root is given only for a run on the node itself (`--host-root /`), where root would read more.
    """
    host = HostRoot.at(host_root)
    missing: list[str] = []
    try:
        config = effective_config_path(host)
        handlers = runtime_handlers(host)
    except OSError as exc:
        return NodeReadiness([f"cannot read the node's configuration: {exc}"])
    if config is None and not any(h.config_path and host.is_file(h.config_path) for h in handlers):
        missing.append("no Kata configuration (configuration.toml) in the default search paths")
    for gap in gather_facts(host)["missing"]:
        missing.append(str(gap))
    uid = os.geteuid() if euid is None else euid
    not_root = ROOT_WOULD_ADD if uid != 0 and os.path.abspath(host_root) == "/" else None
    return NodeReadiness(missing, not_root)
