"""How a cluster run reports per-node progress (the CLI draws it; library callers may not care)."""

from __future__ import annotations

from typing import Protocol

from kata_debug.bundle.manifest import NodeEntry


class ClusterProgress(Protocol):
    def nodes_planned(self, names: list[str]) -> None: ...
    def node_started(self, name: str) -> None: ...
    def node_bytes(self, name: str, total: int) -> None: ...
    def node_finished(self, result: NodeEntry) -> None: ...


class NoProgress:
    """Progress for callers that show none."""

    def nodes_planned(self, names: list[str]) -> None:
        pass

    def node_started(self, name: str) -> None:
        pass

    def node_bytes(self, name: str, total: int) -> None:
        pass

    def node_finished(self, result: NodeEntry) -> None:
        pass
