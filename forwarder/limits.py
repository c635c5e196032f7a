"""How much a guest's trace connections may hold: connections, time stalled mid-frame, bytes.

The guest is untrusted. Without limits, 500 connections that each announce a 1 MiB frame
and stop before its end held 643 MiB on a node agent limited to 512 Mi. Three limits bound
that (no I/O here; `forwarder.connection` applies them):

* `max_connections`: connections beyond it are closed at once (counted).
* `idle_timeout`: a connection that stops sending in the middle of a frame is closed after
  this long. Between frames a connection may stay quiet indefinitely (an idle agent).
* `buffer_budget`: bytes of incomplete frames held across all connections. Each connection
  may hold `UNRESERVED_BYTES` on its own (what one read brings); a frame announced larger
  must reserve its whole size from the budget first, and the connection stops reading
  until it can (back-pressure: nothing is dropped, the guest's writes block). Reservations
  are granted first come, first served, and freed when the frame completes or the
  connection closes; a holder that stalls is closed by the idle timeout, so waiting
  connections always get their turn.

Memory held for incomplete frames is thus at most `buffer_budget + max_connections *
UNRESERVED_BYTES` (64 MiB + 16 MiB with the defaults).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_IDLE_TIMEOUT = 30.0
DEFAULT_BUFFER_BUDGET = 64 << 20
#: What one connection may read and hold without a reservation (also its read size then).
UNRESERVED_BYTES = 64 << 10


@dataclass(frozen=True)
class ListenerLimits:
    """The three limits; `idle_timeout` 0 disables that one."""

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    buffer_budget: int = DEFAULT_BUFFER_BUDGET

    def check(self, max_frame_bytes: int) -> None:
        """Raise ValueError naming the limit that cannot work with `max_frame_bytes`."""
        if self.max_connections < 1:
            raise ValueError(f"max_connections {self.max_connections} must be at least 1")
        if self.idle_timeout < 0:
            raise ValueError(f"idle_timeout {self.idle_timeout} must not be negative")
        if self.buffer_budget < max_frame_bytes + 8:
            raise ValueError(
                f"buffer_budget {self.buffer_budget} is below max_frame_bytes {max_frame_bytes} plus its header: "
                "a frame that large could never be read"
            )


class BudgetWaiter(Protocol):
    """A connection waiting for a reservation; called back when it is granted."""

    def budget_granted(self, nbytes: int) -> None: ...


class BufferBudget:
    """Reservations for incomplete large frames across every connection (see the module doc).

    A holder asks for its frame's whole size once its header has arrived; while it waits it
    holds nothing from the budget (its previous frame is complete), so waiting holders can
    never keep the budget from being granted.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.reserved = 0
        self._waiting: dict[BudgetWaiter, int] = {}  # insertion order: first come, first served

    def acquire(self, holder: BudgetWaiter, nbytes: int) -> bool:
        """Reserve `nbytes` for `holder` now (True), or queue it for `budget_granted` (False)."""
        if not self._waiting and self.reserved + nbytes <= self.limit:
            self.reserved += nbytes
            return True
        self._waiting[holder] = nbytes
        return False

    def release(self, nbytes: int) -> None:
        """Give back a reservation (frame complete, or its connection closed)."""
        self.reserved -= nbytes
        while self._waiting:
            holder, want = next(iter(self._waiting.items()))
            if self.reserved + want > self.limit:
                break
            del self._waiting[holder]
            self.reserved += want
            holder.budget_granted(want)

    def forget(self, holder: BudgetWaiter) -> None:
        """A waiting holder went away before its turn."""
        if self._waiting.pop(holder, None) is not None:
            self.release(0)  # the next in line may fit now

    @property
    def waiting(self) -> int:
        return len(self._waiting)
