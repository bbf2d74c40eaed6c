"""A rich progress bar for dask passes: one display that redraws in place, not lines of text.

dask's own ``ProgressBar`` prints a new text line every ``dt`` seconds when its output is not a
terminal (a log file, a SLURM job's output), so a long ``prepare`` fills the log with bars.
:class:`RichDaskProgress` is a dask callback that advances a :class:`rich.progress.Progress`
by finished tasks: in a terminal it redraws in place; elsewhere rich prints it once, when the
pass ends.
"""

from __future__ import annotations

from typing import Any

from dask.callbacks import Callback
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class RichDaskProgress(Callback):
    """``with RichDaskProgress("prepare: statistics"): dask.compute(...)``: a bar of dask tasks."""

    def __init__(self, description: str) -> None:
        super().__init__()
        self.description = description
        self._bar: Progress | None = None
        self._task: Any = None

    def __enter__(self) -> RichDaskProgress:
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("tasks"), TimeElapsedColumn())
        self._bar.start()
        self._task = self._bar.add_task(self.description, total=None)
        return super().__enter__()  # type: ignore[no-any-return]

    def __exit__(self, *args: Any) -> None:
        super().__exit__(*args)
        if self._bar is not None:
            self._bar.stop()

    def _start_state(self, dsk: Any, state: dict[str, Any]) -> None:
        assert self._bar is not None
        total = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
        done = len(state["finished"])
        self._bar.update(self._task, total=(self._bar.tasks[0].total or 0) + total, advance=done)

    def _posttask(self, key: Any, result: Any, dsk: Any, state: dict[str, Any], worker_id: Any) -> None:
        assert self._bar is not None
        self._bar.advance(self._task)
