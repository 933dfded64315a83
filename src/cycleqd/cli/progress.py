"""A rich progress display implementing the engine's reporter interface."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class RichReporter:
    """Shows one progress bar per phase, with the best score per task while evolving.

    Args:
        console: Where to draw (stderr by default, so ``--json`` output stays clean).
        enabled: Draw bars when the console is a terminal (else phase names and log lines only).
    """

    def __init__(self, console: Console | None = None, *, enabled: bool = True) -> None:
        self.console = console or Console(stderr=True)
        # Live bars only on a terminal; logs and pipes get plain lines.
        self.enabled = enabled and self.console.is_terminal
        self._progress: Progress | None = None
        self._task: Any = None

    def __enter__(self) -> RichReporter:
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=self.console,
                transient=False,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
            self._progress = None

    def phase(self, name: str, *, total: int | None = None, done: int = 0) -> None:
        """Start a new bar."""
        if self._progress is None:
            self.console.print(f"[bold]{name}[/]")
            return
        if self._task is not None:
            self._progress.update(self._task, visible=True)
        self._task = self._progress.add_task(name, total=total, completed=done, info="")

    def advance(self, info: Mapping[str, Any] | None = None) -> None:
        """Advance the current bar; generation lines show the archives' best scores."""
        if self._progress is None or self._task is None:
            return
        text = ""
        if info and "metrics" in info:
            bests = [
                f"{task} {m['best']['score']:.3f}" for task, m in info["metrics"].items() if m.get("best")
            ]
            text = "best " + " · ".join(bests)
        self._progress.update(self._task, advance=1, info=text)

    def log(self, message: str) -> None:
        """Print a line above the bars."""
        self.console.print(message, highlight=False)
