"""Collectors: one module per kind of evidence, all behind `kata_debug.collectors.base.Collector`.

`REGISTRY` lists them in the order they appear in `--help`, the manifest and the bundle,
keyed by the `name` each class declares. Collector modules are imported on first use of the
registry, each on its own: one that fails to import does not break the CLI; it stays
listed and fails as its own manifest entry when run (`REGISTRY.load` raises its error).
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
    """Name -> collector class, names taken from the classes themselves.

    A module that cannot be imported is kept under its module name spelled the collector
    way (`resource_limits` -> `resource-limits`, which tests/test_collectors_registry.py
    holds every class to), so `--collector resource-limits` and the manifest still name it.
    """

    def __init__(self, classes: tuple[str, ...]) -> None:
        self._classes = classes
        self._lock = threading.Lock()
        self._loaded: dict[str, type[Collector] | Exception] | None = None

    def _entries(self) -> dict[str, type[Collector] | Exception]:
        with self._lock:  # first use may come from a worker thread (option validation)
            if self._loaded is None:
                loaded: dict[str, type[Collector] | Exception] = {}
                for ref in self._classes:
                    module, _, cls_name = ref.partition(":")
                    try:
                        cls: type[Collector] = getattr(import_module(f"kata_debug.collectors.{module}"), cls_name)
                    except Exception as exc:  # noqa: BLE001 - reported when the collector runs
                        loaded[module.replace("_", "-")] = exc
                    else:
                        loaded[cls.name] = cls
                self._loaded = loaded
            return self._loaded

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries()))

    def __contains__(self, name: object) -> bool:
        return name in self._entries()

    def __len__(self) -> int:
        return len(self._entries())

    def load(self, name: str) -> type[Collector]:
        """The collector class; raises KeyError for an unknown name, the import error for a broken module."""
        entry = self._entries()[name]
        if isinstance(entry, Exception):
            raise entry
        return entry


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
