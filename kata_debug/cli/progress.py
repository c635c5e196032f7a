"""Progress for long work: rich on a terminal, silent otherwise (machine-readable runs)."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from kata_debug.bundle.manifest import CollectorEntry

#: Colour of each collector / node status, wherever one is shown.
STATUS_STYLE = {"ok": "green", "partial": "yellow", "failed": "red", "timeout": "red", "skipped": "dim"}


class CollectorProgress:
    """One line per collector: a spinner while it runs, its status when done.

    rich is imported only when the display is on: a machine-readable run (`--format json`,
    no terminal) does not pay for it.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self._progress: Progress | None = None
        if self.enabled:
            from rich.console import Console
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=False,
            )
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> CollectorProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def started(self, name: str) -> None:
        if self._progress is not None:
            self._tasks[name] = self._progress.add_task(f"{name}: collecting", total=1)

    def finished(self, result: CollectorEntry) -> None:
        if self._progress is None or result.name not in self._tasks:
            return
        style = STATUS_STYLE.get(result.status, "white")
        self._progress.update(
            self._tasks[result.name],
            description=f"{result.name}: [{style}]{result.status}[/]",
            completed=1,
        )
