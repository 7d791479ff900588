"""Live training progress (rich), one bar per epoch with the per-task losses."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["ProgressDisplay"]


class ProgressDisplay:
    """A rich progress bar; a no-op when disabled (``enabled=None``: on when stderr is a terminal)."""

    def __init__(self, enabled: bool | None = None, console: Console | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.console = console or Console(stderr=True)
        self._progress: Progress | None = None
        self._task = None

    def start_epoch(self, epoch: int, epochs: int, total: int | None) -> None:
        if not self.enabled:
            return
        if self._progress is None:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[losses]}"),
                console=self.console,
                transient=True,
            )
            self._progress.start()
        if self._task is not None:
            self._progress.remove_task(self._task)
        self._task = self._progress.add_task(f"epoch {epoch + 1}/{epochs}", total=total, losses="")

    def update(
        self, advance: int, names: Sequence[str] | None = None, losses: Sequence[float] | None = None
    ) -> None:
        if self._progress is None or self._task is None:
            return
        text = (
            ""
            if losses is None or names is None
            else "  ".join(f"{n} {v:.4f}" for n, v in zip(names, losses))
        )
        self._progress.update(self._task, advance=advance, losses=text)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._task = None
