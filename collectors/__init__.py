"""Collectors: one module per kind of evidence, all behind `kata_debug.collectors.base.Collector`.

`REGISTRY` is the order they appear in `--help`, the manifest and the bundle.
"""

from __future__ import annotations

from importlib import import_module

from kata_debug.collectors.base import CollectContext, Collector, CollectorOutput, CollectorSkipped

# name -> "module:Class"; imported lazily so one broken collector cannot break the CLI.
REGISTRY: dict[str, str] = {
    "host": "host:HostCollector",
    "kata-config": "kata_config:KataConfigCollector",
    "oci-specs": "oci_specs:OciSpecsCollector",
    "sandboxes": "sandboxes:SandboxesCollector",
    "resource-limits": "resource_limits:ResourceLimitsCollector",
    "shim-logs": "shim_logs:ShimLogsCollector",
    "agent-traces": "agent_traces:AgentTracesCollector",
}


def load(name: str) -> type[Collector]:
    module, _, cls = REGISTRY[name].partition(":")
    return getattr(import_module(f"kata_debug.collectors.{module}"), cls)


__all__ = ["REGISTRY", "load", "Collector", "CollectContext", "CollectorOutput", "CollectorSkipped"]
