"""What a cluster run returns to its caller, and its `--output-format json` summary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kata_debug.analyze.diagnose import Diagnosis
from kata_debug.bundle.manifest import ItemFailure, NodeEntry
from kata_debug.cluster.node_exec import PARTIAL_EXIT


@dataclass
class ClusterResult:
    output: str
    context: str | None
    nodes: list[NodeEntry]
    items_failed: list[ItemFailure]
    redactions: dict[str, int]
    interrupted: str | None
    #: The cluster part's findings (also in analysis/findings.json); nodes have their own.
    diagnosis: Diagnosis | None = None
    #: `--obfuscate-hosts`: the file holding pseudonym -> original (never in the bundle).
    obfuscate_map: str | None = None

    @property
    def exit_code(self) -> int:
        bad = any(n.status != "ok" for n in self.nodes) or bool(self.items_failed) or bool(self.interrupted)
        return PARTIAL_EXIT if bad else 0


def result_json(result: ClusterResult) -> dict[str, Any]:
    return {
        "bundle": result.output,
        "context": result.context,
        "exit_code": result.exit_code,
        "interrupted": result.interrupted,
        "nodes": [n.to_json() for n in result.nodes],
        "cluster_items_failed": [f.to_json() for f in result.items_failed],
        "redactions": result.redactions,
        "findings": [f.to_json(with_node=True) for f in result.diagnosis.findings] if result.diagnosis else None,
        **({"obfuscate_map": result.obfuscate_map} if result.obfuscate_map else {}),
    }
