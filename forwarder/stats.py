"""The forwarder's counters, as logged every `stats_interval` and returned by `Forwarder.run()`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ForwarderStats:
    connections: int = 0
    open_connections: int = 0
    frames: int = 0
    spans: int = 0
    decode_errors: int = 0
    oversized_frames: int = 0
    truncated_frames: int = 0
    #: Strings in decoded spans that held what no sink can encode (lone surrogates -> U+FFFD).
    repaired_strings: int = 0
    #: Connections closed at once because `max_connections` were open.
    rejected_connections: int = 0
    #: Connections closed because they stopped in the middle of a frame for `idle_timeout`.
    idle_timeouts: int = 0
    #: Times a connection paused reading until the buffer budget could hold its frame.
    budget_waits: int = 0
    listeners: int = 0
    per_exporter: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        exp = " ".join(
            f"[{name}: exported={s.exported} dropped={s.dropped} failed_exports={s.failed_exports} "
            f"poisoned={s.poisoned} queued={q}]"
            for name, (s, q) in self.per_exporter.items()
        )
        return (
            f"connections={self.connections} open={self.open_connections} frames={self.frames} "
            f"spans={self.spans} decode_errors={self.decode_errors} oversized_frames={self.oversized_frames} "
            f"truncated_frames={self.truncated_frames} repaired_strings={self.repaired_strings} "
            f"rejected_connections={self.rejected_connections} idle_timeouts={self.idle_timeouts} "
            f"budget_waits={self.budget_waits} {exp}"
        ).rstrip()

    def as_dict(self) -> dict[str, Any]:
        return {
            "connections": self.connections,
            "frames": self.frames,
            "spans": self.spans,
            "decode_errors": self.decode_errors,
            "oversized_frames": self.oversized_frames,
            "truncated_frames": self.truncated_frames,
            "repaired_strings": self.repaired_strings,
            "rejected_connections": self.rejected_connections,
            "idle_timeouts": self.idle_timeouts,
            "budget_waits": self.budget_waits,
            "exporters": {
                name: {
                    "exported": s.exported,
                    "dropped": s.dropped,
                    "failed_exports": s.failed_exports,
                    "poisoned": s.poisoned,
                    "queued": q,
                }
                for name, (s, q) in self.per_exporter.items()
            },
        }
