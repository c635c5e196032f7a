"""containerd's configuration as containerd itself would see it: the main file, its
`imports` (conf.d drop-ins) merged in containerd's order, and the facts Kata depends on
(runtime handlers with their runtime_type, runtime_path, snapshotter, pod_annotations and
ConfigPath; the devmapper snapshotter plugin; the k3s/RKE2 template).

Shared by `host` (facts), `kata-config` (per-handler ConfigPath), `resource-limits` and the
readiness checks. Everything is read through `HostRoot` (no link leads out of the host
root) and bounded: at most `MAX_CONFIG_FILES` files of `MAX_CONFIG_BYTES` each per main
config, imports nested at most `MAX_IMPORT_DEPTH` deep.

Merge order (containerd's `LoadConfig`): the main file first, then each import in the
order listed (a glob's matches sorted by name), each merged over what came before, so a
later file wins. How a file wins differs by containerd major version:
- containerd 1.x replaces a whole `plugins."<id>"` section with the imported one (so a
  drop-in that sets one CRI option drops every runtime the main file declared under the
  same plugin): https://github.com/containerd/containerd/issues/5837
- containerd 2.x merges plugin sections key by key:
  https://github.com/containerd/containerd/pull/9982
We take the binary's major version when it is known, else config `version = 3` (written
for containerd 2.x only) as 2.x.
"""

from __future__ import annotations

import fnmatch
import json
import posixpath
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kata_debug.node.hostroot import HostRoot

CONTAINERD_CONFIGS = (
    "/etc/containerd/config.toml",
    "/var/lib/rancher/k3s/agent/etc/containerd/config.toml",
    "/var/lib/rancher/rke2/agent/etc/containerd/config.toml",
)
#: k3s/RKE2 regenerate config.toml from these Go templates at every start (v3 for containerd 2.x).
TEMPLATE_NAMES = ("config.toml.tmpl", "config-v3.toml.tmpl")

#: Files read per main config (itself, its imports and theirs); the rest are reported.
MAX_CONFIG_FILES = 32
#: Bytes read of each file: a containerd config is a few KiB.
MAX_CONFIG_BYTES = 1 << 20
#: Imports of imports followed this deep (containerd follows them too).
MAX_IMPORT_DEPTH = 4

#: Plugin ids holding the CRI runtimes: 1.x (config version 1/2), 2.x (version 3), and the
#: short id of version-1 configs.
_RUNTIME_PLUGINS = ("io.containerd.cri.v1.runtime", "io.containerd.grpc.v1.cri", "cri")
_DEVMAPPER = "io.containerd.snapshotter.v1.devmapper"


@dataclass
class RuntimeHandler:
    name: str
    runtime_type: str | None
    config_path: str | None
    #: The file that last set this runtime (a drop-in, when one did).
    source: str
    runtime_path: str | None = None
    #: This runtime's snapshotter; None = the CRI plugin's default.
    snapshotter: str | None = None
    pod_annotations: list[str] = field(default_factory=list)
    #: The shim containerd starts for it: runtime_path, or the name runtime_type implies.
    shim: str | None = None
    #: Where that shim is on the node (None: not found; checked under the host root).
    shim_found: str | None = None

    @property
    def kata(self) -> bool:
        return "kata" in (self.runtime_type or "") or "kata" in self.name

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "runtime_type": self.runtime_type,
            "config_path": self.config_path,
            "kata": self.kata,
            "source": self.source,
            "runtime_path": self.runtime_path,
            "snapshotter": self.snapshotter,
            "pod_annotations": self.pod_annotations,
            "shim": self.shim,
            "shim_found": self.shim_found,
        }


@dataclass
class ContainerdConfig:
    """One main config and what containerd makes of it."""

    main: str
    #: Every file read, main first, in merge order.
    files: list[str]
    version: int | None
    merge: str
    handlers: list[RuntimeHandler]
    default_snapshotter: str | None
    #: `[plugins."io.containerd.snapshotter.v1.devmapper"]` when configured (pool_name, root_path).
    devmapper: dict[str, Any] | None
    #: Imports that matched nothing, files past the caps, unparsable files.
    problems: list[str]
    #: A k3s/RKE2 template: what config.toml becomes at the next start, not what runs now.
    template: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "main": self.main,
            "files": self.files,
            "version": self.version,
            "merge": self.merge,
            "default_snapshotter": self.default_snapshotter,
            "devmapper": self.devmapper,
            "problems": self.problems,
            "template": self.template,
            "runtime_handlers": [h.to_json() for h in self.handlers],
        }


#: Where containerd (and dockerd) find a shim named only by runtime_type: the PATH of their
#: systemd units, plus kata-deploy's install directory, which some units add.
SHIM_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin", "/opt/kata/bin")


def shim_binary(runtime_type: str | None) -> str | None:
    """`io.containerd.kata.v2` -> `containerd-shim-kata-v2` (containerd's naming rule);
    an absolute runtime_type is the binary itself."""
    if not runtime_type:
        return None
    if runtime_type.startswith("/"):
        return runtime_type
    parts = runtime_type.split(".")
    if len(parts) < 3 or not parts[-1].startswith("v"):
        return None
    return f"containerd-shim-{'-'.join(parts[-2:])}"


def find_shim(host: HostRoot, shim: str | None) -> str | None:
    """Where a shim is on the node: an absolute path as is, a bare name on SHIM_DIRS (blocking)."""
    if not shim:
        return None
    if shim.startswith("/"):
        return shim if host.is_file(shim) else None
    return next((f"{d}/{shim}" for d in SHIM_DIRS if host.is_file(f"{d}/{shim}")), None)


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def merge_config(base: dict[str, Any], over: Mapping[str, Any], *, v2: bool) -> dict[str, Any]:
    """`over` (a later file) merged over `base` the way containerd 1.x or 2.x does."""
    if v2:
        return _deep_merge(base, over)
    out = dict(base)
    for k, v in over.items():
        if k == "plugins" and isinstance(v, Mapping) and isinstance(out.get("plugins"), dict):
            out["plugins"] = {**out["plugins"], **v}  # whole plugin sections replaced
        else:
            out[k] = v
    return out


def _load(host: HostRoot, path: str, problems: list[str], *, template: bool = False) -> dict[str, Any] | None:
    try:
        data = host.read_bytes(path, MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        problems.append(f"{path}: not readable ({exc.strerror or exc})")
        return None
    if len(data) > MAX_CONFIG_BYTES:
        problems.append(f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB, not read")
        return None
    text = data.decode("utf-8", "replace")
    if template:
        # Go template actions are not TOML: keep the literal TOML lines around them.
        text = "\n".join(ln for ln in text.splitlines() if "{{" not in ln)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"{path}: not valid TOML ({exc})")
        return None


def _expand(host: HostRoot, pattern: str, base_dir: str, problems: list[str]) -> list[str]:
    """An `imports` entry as containerd expands it: relative to the importing file's
    directory, a glob in its last component matched by name and sorted."""
    path = posixpath.normpath(posixpath.join(base_dir, pattern))
    head, tail = posixpath.split(path)
    if any(c in head for c in "*?["):
        problems.append(f"import {pattern!r}: wildcards in directories are not followed")
        return []
    if not any(c in tail for c in "*?["):
        if host.is_file(path):
            return [path]
        problems.append(f"import {pattern!r}: {path} does not exist")
        return []
    try:
        names = host.listdir(head)
    except OSError as exc:
        problems.append(f"import {pattern!r}: {head} not readable ({exc.strerror or exc})")
        return []
    return [
        posixpath.join(head, n) for n in names if fnmatch.fnmatchcase(n, tail) and host.is_file(posixpath.join(head, n))
    ]


def _imports(data: Mapping[str, Any]) -> list[str]:
    got = data.get("imports")
    return [str(i) for i in got] if isinstance(got, list) else []


def _runtime_section(plugins: Mapping[str, Any]) -> tuple[str | None, Mapping[str, Any]]:
    for key in _RUNTIME_PLUGINS:
        section = plugins.get(key)
        if isinstance(section, Mapping) and isinstance(section.get("containerd"), Mapping):
            return key, section["containerd"]
    return None, {}


def _str(v: Any) -> str | None:
    return str(v) if isinstance(v, str | int) and not isinstance(v, bool) else None


def _handlers(containerd: Mapping[str, Any], owner: Mapping[str, str], default: str) -> list[RuntimeHandler]:
    runtimes = containerd.get("runtimes")
    out: list[RuntimeHandler] = []
    for name, rt in runtimes.items() if isinstance(runtimes, Mapping) else []:
        if not isinstance(rt, Mapping):
            continue
        opts = got if isinstance(got := rt.get("options"), Mapping) else {}
        annotations = rt.get("pod_annotations")
        out.append(
            RuntimeHandler(
                name=str(name),
                runtime_type=_str(rt.get("runtime_type")),
                config_path=_str(opts.get("ConfigPath")),
                source=owner.get(str(name), default),
                runtime_path=_str(rt.get("runtime_path")),
                snapshotter=_str(rt.get("snapshotter")),
                pod_annotations=[str(a) for a in annotations] if isinstance(annotations, list) else [],
            )
        )
    return out


def _owners(parsed: list[tuple[str, dict[str, Any]]]) -> dict[str, str]:
    """runtime name -> the last file that declares it (what the evidence points at)."""
    owner: dict[str, str] = {}
    for path, data in parsed:
        _, section = _runtime_section(data.get("plugins") or {})
        runtimes = section.get("runtimes")
        for name in runtimes if isinstance(runtimes, Mapping) else ():
            owner[str(name)] = path
    return owner


def load_containerd_config(
    host: HostRoot, main: str, *, binary_major: int | None = None, template: bool = False
) -> ContainerdConfig | None:
    """Read one main config and its imports; None when the main file is absent (blocking)."""
    if not host.is_file(main):
        return None
    problems: list[str] = []
    root = _load(host, main, problems, template=template)
    if root is None:
        return ContainerdConfig(main, [main], None, "unread", [], None, None, problems, template)
    version = root.get("version") if isinstance(root.get("version"), int) else None
    v2 = binary_major >= 2 if binary_major is not None else version == 3
    parsed: list[tuple[str, dict[str, Any]]] = [(main, root)]
    seen = {main}
    queue = [(i, posixpath.dirname(main), 1) for i in _imports(root)]
    while queue:
        pattern, base_dir, depth = queue.pop(0)
        for path in _expand(host, pattern, base_dir, problems):
            if path in seen:
                continue
            if len(seen) >= MAX_CONFIG_FILES:
                problems.append(f"{path}: past {MAX_CONFIG_FILES} config files, not read")
                continue
            seen.add(path)
            data = _load(host, path, problems)
            if data is None:
                continue
            parsed.append((path, data))
            if depth < MAX_IMPORT_DEPTH:
                queue += [(i, posixpath.dirname(path), depth + 1) for i in _imports(data)]
            elif _imports(data):
                problems.append(f"{path}: imports nested deeper than {MAX_IMPORT_DEPTH}, not followed")
    merged: dict[str, Any] = {}
    for _, data in parsed:
        merged = merge_config(merged, data, v2=v2)
    got = merged.get("plugins")
    plugins: Mapping[str, Any] = got if isinstance(got, Mapping) else {}
    key, containerd = _runtime_section(plugins)
    default_snapshotter = _str(containerd.get("snapshotter"))
    images = plugins.get("io.containerd.cri.v1.images")
    if default_snapshotter is None and isinstance(images, Mapping):
        default_snapshotter = _str(images.get("snapshotter"))
    # Owners only among files whose section survived the merge (1.x drops a replaced one).
    owners = _owners(parsed if v2 else [p for p in parsed if key and key in (p[1].get("plugins") or {})])
    devmapper = plugins.get(_DEVMAPPER)
    handlers = _handlers(containerd, owners, main)
    for h in handlers:
        h.shim = h.runtime_path or shim_binary(h.runtime_type)
        h.shim_found = find_shim(host, h.shim)
    return ContainerdConfig(
        main=main,
        files=[p for p, _ in parsed],
        version=version,
        merge="containerd 2.x (plugin sections merged key by key)"
        if v2
        else "containerd 1.x (a later file replaces whole plugin sections)",
        handlers=handlers,
        default_snapshotter=default_snapshotter,
        devmapper=dict(devmapper) if isinstance(devmapper, Mapping) else None,
        problems=problems,
        template=template,
    )


def containerd_configs(host: HostRoot, *, binary_major: int | None = None) -> list[ContainerdConfig]:
    """Every containerd main config on the node, and the k3s/RKE2 templates (blocking)."""
    out = []
    for main in CONTAINERD_CONFIGS:
        cfg = load_containerd_config(host, main, binary_major=binary_major)
        if cfg is not None:
            out.append(cfg)
        if main.startswith("/var/lib/rancher/"):
            for name in TEMPLATE_NAMES:
                tmpl = posixpath.join(posixpath.dirname(main), name)
                cfg = load_containerd_config(host, tmpl, binary_major=binary_major, template=True)
                if cfg is not None:
                    out.append(cfg)
    return out


def runtime_handlers(host: HostRoot) -> list[RuntimeHandler]:
    """Handlers containerd runs with now: every main config, imports merged, templates left
    out (blocking)."""
    return [h for cfg in containerd_configs(host) if not cfg.template for h in cfg.handlers]


DOCKER_CONFIG = "/etc/docker/daemon.json"


@dataclass
class DockerRuntime:
    """One `runtimes` entry of Docker's daemon.json."""

    name: str
    #: `path`: an OCI runtime CLI dockerd execs (runc-style); Kata 2.x has none.
    path: str | None
    #: `runtimeType`: a containerd shim v2 (`io.containerd.kata.v2` or the shim's path).
    runtime_type: str | None
    shim: str | None
    shim_found: str | None

    @property
    def legacy_kata_cli(self) -> bool:
        """The entry runs kata-runtime as an OCI CLI (removed in Kata 2.0)."""
        return bool(self.path) and posixpath.basename(self.path or "").startswith("kata-runtime")

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "runtime_type": self.runtime_type,
            "legacy_kata_cli": self.legacy_kata_cli,
            "shim": self.shim,
            "shim_found": self.shim_found,
        }


def docker_runtimes(host: HostRoot, problems: list[str] | None = None) -> list[DockerRuntime]:
    """The Kata-looking `runtimes` of /etc/docker/daemon.json (blocking); [] without one."""
    if not host.is_file(DOCKER_CONFIG):
        return []
    try:
        data = json.loads(host.read_bytes(DOCKER_CONFIG, MAX_CONFIG_BYTES))
    except (OSError, ValueError) as exc:
        if problems is not None:
            problems.append(f"{DOCKER_CONFIG}: not readable as JSON ({exc})")
        return []
    runtimes = data.get("runtimes") if isinstance(data, dict) else None
    out = []
    for name, rt in runtimes.items() if isinstance(runtimes, dict) else []:
        if not isinstance(rt, dict):
            continue
        path, rtype = _str(rt.get("path")), _str(rt.get("runtimeType"))
        if "kata" not in f"{name} {path} {rtype}":
            continue
        shim = shim_binary(rtype)
        out.append(DockerRuntime(str(name), path, rtype, shim, find_shim(host, shim)))
    return out
