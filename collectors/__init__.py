"""Collectors: one module per kind of evidence, all behind `kata_debug.collectors.base.Collector`.

`REGISTRY` lists them in the order they appear in `--help`, the manifest and the bundle,
keyed by the `name` each class declares (which is its module's name). A collector module is
imported only when that collector is loaded, each on its own: one that fails to import does
not break the CLI; it stays listed and fails as its own manifest entry when run
(`REGISTRY.load` raises its error).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from importlib import import_module

from kata_debug.collectors.base import (
    CollectContext,
    Collector,
    CollectorOptions,
    CollectorOutput,
    CollectorSkipped,
)

# "module:Class" in `kata_debug.collectors`, in registry order.
_CLASSES = (
    "host:HostCollector",
    "kata_config:KataConfigCollector",
    "oci_specs:OciSpecsCollector",
    "sandboxes:SandboxesCollector",
    "resource_limits:ResourceLimitsCollector",
    "shim_logs:ShimLogsCollector",
    "agent_traces:AgentTracesCollector",
    "captures:CapturesCollector",
)


class CollectorRegistry:
    """Name -> collector class, each module imported only when its collector is loaded.

    A collector's name is its module's name spelled the collector way (`resource_limits` ->
    `resource-limits`), and its class declares that same name (`load` holds it to it), so
    listing and validating `--collector` import nothing: a `collect -c shim-logs` does not
    pay, on every run, for importing the other collectors (the sandboxes collector alone
    pulls in aiohttp). A module that cannot be imported stays listed under its name and
    fails as its own manifest entry when run (`load` raises its error).
    """

    def __init__(self, classes: tuple[str, ...]) -> None:
        self._refs = {module.replace("_", "-"): (module, cls) for module, _, cls in (r.partition(":") for r in classes)}
        self._lock = threading.Lock()
        self._loaded: dict[str, type[Collector]] = {}

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._refs))

    def __contains__(self, name: object) -> bool:
        return name in self._refs

    def __len__(self) -> int:
        return len(self._refs)

    def load(self, name: str) -> type[Collector]:
        """The collector class; raises KeyError for an unknown name, the import error for a broken module."""
        module, cls_name = self._refs[name]
        with self._lock:  # first use may come from a worker thread
            cls = self._loaded.get(name)
            if cls is None:
                cls = getattr(import_module(f"kata_debug.collectors.{module}"), cls_name)
                if cls.name != name:
                    raise TypeError(f"{module}:{cls_name} is named {cls.name!r}, not {name!r} after its module")
                self._loaded[name] = cls
            return cls


REGISTRY = CollectorRegistry(_CLASSES)

__all__ = [
    "REGISTRY",
    "CollectorRegistry",
    "Collector",
    "CollectContext",
    "CollectorOptions",
    "CollectorOutput",
    "CollectorSkipped",
]
