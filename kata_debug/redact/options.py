"""`--obfuscate-hosts` / `--obfuscate-map` as a run uses them: checked, then the map's life.

Kept apart from the CLI so `collect`, `collect --cluster` and `diagnose` share one set of
rules: the map is refused, not guessed, when the bundle goes somewhere it cannot sit next to.
"""

from __future__ import annotations

import os
import socket
import stat
import sys
from dataclasses import dataclass, field
from typing import Any

from kata_debug.errors import OutputError, UsageError
from kata_debug.node.hostroot import HostRoot
from kata_debug.redact.obfuscate import MapFile, Obfuscator

#: Default map name: next to the bundle, so it is found, and named so it is not mailed with it.
MAP_SUFFIX = ".map.json"
#: Hidden `collect` flag: the run's key and the cluster's node names arrive in the `obfuscate`
#: member of the JSON line `collect --cluster` writes to the node's stdin (beside the
#: `--redact-config` rules), never in argv: exec requests, command included, are in the API
#: server's audit log and the node's process list, and the key links pseudonyms to originals.
OBFUSCATE_STDIN = "--obfuscate-stdin"
#: Node names a cluster run hands each node (each node has up to ~3: name, Hostname, DNS names).
MAX_NODE_NAMES = 50_000


@dataclass
class ObfuscateOptions:
    enabled: bool = False
    #: `--obfuscate-map FILE`; None: `<bundle>.map.json`.
    map_path: str | None = None
    #: Set by `collect --cluster` on each node: the run's key, so every node gives the same
    #: pseudonyms; the node then hands its map back on stderr (`Obfuscator.map_line`).
    key: bytes | None = None
    #: More hostnames to find (the cluster's node names), besides the node's own.
    names: list[str] = field(default_factory=list)

    def node_input(self) -> dict[str, Any] | None:
        """The `obfuscate` member of a node's stdin line (`OBFUSCATE_STDIN`); None without a key."""
        if not self.enabled or self.key is None:
            return None
        return {"key": self.key.hex(), "names": list(self.names)}

    def open_map(self, bundle_path: str, streamed: bool) -> MapFile | None:
        """Create the map file before any work (None: a cluster node hands its map over stderr)."""
        if self.map_path is None and (streamed and self.key is not None):
            return None
        return MapFile(self.map_path or bundle_path + MAP_SUFFIX)

    def finish(self, hosts: Obfuscator, map_file: MapFile | None, bundle_path: str) -> None:
        """Write the map once the bundle is complete (to the file, or to stderr for the laptop)."""
        if map_file is None:
            sys.stderr.buffer.write(hosts.map_line())
            sys.stderr.flush()
            return
        try:
            map_file.write(hosts.map, None if bundle_path == "-" else os.path.basename(bundle_path))
        except OSError as exc:
            raise OutputError(
                f"--obfuscate-map {map_file.path}: cannot write: {exc.strerror or exc}; "
                f"the bundle {bundle_path} is complete but its pseudonyms cannot be reversed"
            ) from None


def obfuscate_options(enabled: bool, map_path: str | None, node_input: Any = None) -> ObfuscateOptions:
    """The CLI's options as one value. `node_input` is the `obfuscate` member of the JSON line
    `collect --cluster` sends a node on stdin (`OBFUSCATE_STDIN`): the run's key and the
    cluster's node names. Anything malformed there is a usage error naming the flag."""
    if node_input is None:
        return ObfuscateOptions(enabled=enabled, map_path=map_path)
    where = f"{OBFUSCATE_STDIN}: stdin's `obfuscate` member"
    if not isinstance(node_input, dict) or set(node_input) - {"key", "names"}:
        raise UsageError(f"{where}: expected an object with `key` and `names`")
    key, names = node_input.get("key"), node_input.get("names", [])
    try:
        raw = bytes.fromhex(key) if isinstance(key, str) else b""
    except ValueError:
        raw = b""
    if len(raw) < 16:
        raise UsageError(f"{where}: `key` is not a key (at least 32 hex digits)")
    if (
        not isinstance(names, list)
        or len(names) > MAX_NODE_NAMES
        or not all(isinstance(n, str) and 0 < len(n) <= 253 for n in names)
    ):
        raise UsageError(f"{where}: `names` must be a list of at most {MAX_NODE_NAMES} host names")
    return ObfuscateOptions(enabled=True, map_path=map_path, key=raw, names=list(names))


def check_obfuscate(opts: ObfuscateOptions, output: str | None) -> None:
    """Refuse, before any work, a map that could not be written or would replace a file."""
    if not opts.enabled:
        if opts.map_path is not None:
            raise UsageError("--obfuscate-map: only with --obfuscate-hosts")
        return
    if opts.map_path is None and opts.key is None and output is not None and _streamed(output):
        raise UsageError(
            f"--obfuscate-hosts: the bundle goes to {'standard output' if output == '-' else output}, "
            "so the map cannot sit next to it; give --obfuscate-map FILE"
        )
    if opts.map_path is not None:
        if os.path.lexists(opts.map_path):
            raise UsageError(f"--obfuscate-map {opts.map_path}: already exists; it is never replaced")
        parent = os.path.dirname(opts.map_path) or "."
        if not os.path.isdir(parent):
            raise UsageError(f"--obfuscate-map {opts.map_path}: directory {parent} does not exist")
        if output is not None and output != "-" and os.path.abspath(opts.map_path) == os.path.abspath(output):
            raise UsageError(f"--obfuscate-map {opts.map_path}: is the bundle's own --output")


def _streamed(output: str) -> bool:
    """stdout, a pipe or a device: no directory to put the map next to the bundle in."""
    if output == "-":
        return True
    try:
        mode = os.stat(output).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


def host_names(host: HostRoot, node: str) -> list[str]:
    """The node's own names: the node name, /etc/hostname under the host root, the kernel's."""
    names = [node]
    for path in ("/etc/hostname", "/proc/sys/kernel/hostname"):
        try:
            names.append(host.read_text(path, 256).strip())
        except (OSError, UnicodeDecodeError):
            pass
    if str(host.root) == "/":  # elsewhere the kernel's name is this machine's, not the node's
        names.append(socket.gethostname())
    if os.environ.get("NODE_NAME"):
        names.append(os.environ["NODE_NAME"])
    return [n for n in names if n]
