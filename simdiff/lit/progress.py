"""The training stages' progress display: Lightning's rich bar with a single short metrics field.

Lightning's bar shows every ``prog_bar`` metric plus the logger's ``v_num``, step and epoch
values of the same loss side by side; in a log file or a narrow terminal that column wraps into a
block of lines under each bar. :class:`~simdiff.lit.epoch_log.EpochLog` already writes each
epoch's numbers to the log, so the bar keeps only the running losses (``train/loss``,
``val/loss``) on one line.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import RichProgressBar


def bar_metrics(items: dict[str, Any]) -> dict[str, Any]:
    """The losses of Lightning's progress-bar metrics, one value each: the per-step value named
    without its ``_step`` suffix, per-epoch duplicates and ``v_num`` dropped."""
    out: dict[str, Any] = {}
    for key, value in items.items():
        if key == "v_num" or key.endswith("_epoch") or not key.removesuffix("_step").endswith("loss"):
            continue
        out[key.removesuffix("_step")] = value
    return out


class StageProgressBar(RichProgressBar):
    """``RichProgressBar`` whose metrics field holds only the running losses (:func:`bar_metrics`)."""

    def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, Any]:
        return bar_metrics(super().get_metrics(trainer, pl_module))
