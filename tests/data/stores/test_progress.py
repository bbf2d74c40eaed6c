"""The rich dask progress bar: counts every task of a pass, shows once outside a terminal."""

from __future__ import annotations

import dask
import dask.array as da
from rich.console import Console

from simdiff.data.stores.progress import RichDaskProgress


def test_counts_every_task_and_prints_one_final_line_outside_a_terminal(capsys) -> None:
    x = da.ones((40, 10), chunks=(4, 10))
    with RichDaskProgress("prepare: statistics") as bar:
        assert float(dask.compute((x + 1).sum())[0]) == 800.0
        assert float(dask.compute((x * 2).mean())[0]) == 2.0  # a second pass adds its tasks
        task = bar._bar.tasks[0]  # type: ignore[union-attr]
        assert task.total is not None and task.completed == task.total >= 20
    out = capsys.readouterr().out
    total = int(task.total)
    assert out.count("prepare: statistics") == 1 and f"{total}/{total} tasks" in out
    assert not Console().is_terminal
