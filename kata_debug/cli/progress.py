"""Progress for long work: rich on a terminal, silent otherwise (machine-readable runs)."""

from __future__ import annotations

import sys
from types import TracebackType

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from kata_debug.bundle.manifest import CollectorEntry

#: Colour of each collector / node status, wherever one is shown.
STATUS_STYLE = {"ok": "green", "partial": "yellow", "failed": "red", "timeout": "red", "skipped": "dim"}


class CollectorProgress:
    """One line per collector: a spinner while it runs, its status when done."""

    def __init__(self, enabled: bool) -> None:
        self.console = Console(stderr=True)
        self.enabled = enabled and sys.stderr.isatty()
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> CollectorProgress:
        if self.enabled:
            self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.enabled:
            self._progress.stop()

    def started(self, name: str) -> None:
        if self.enabled:
            self._tasks[name] = self._progress.add_task(f"{name}: collecting", total=1)

    def finished(self, result: CollectorEntry) -> None:
        if not self.enabled or result.name not in self._tasks:
            return
        style = STATUS_STYLE.get(result.status, "white")
        self._progress.update(
            self._tasks[result.name],
            description=f"{result.name}: [{style}]{result.status}[/]",
            completed=1,
        )
