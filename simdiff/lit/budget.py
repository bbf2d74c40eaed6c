"""A wall-clock budget for a whole training stage, honoured to within a step.

Lightning's ``Trainer(max_time=...)`` counts only the training loop, from its start, and
checks after each step whether the budget is already spent. Everything after that check is
over budget: the rest of a long step, the validation Lightning runs when training stops
early, the checkpoints, and what the stage does after ``fit`` (the autoencoder's report over
whole test fields), and the start-up before the loop is not counted at all. On the 512x512
radar day that overran a 4-minute budget by 63 % (README, "Measured").

:class:`TimeBudget` replaces that timer (it is a ``Timer``, so the Trainer adds none of its
own) and counts from the start the stage passes (``simdiff.cli.app.stage_started``: the
process start for a command's first stage). After every training step it forecasts what
continuing would cost and stops while the stage still fits::

    now + step + pause(e) [+ pause(e + 1) after an epoch's last batch] + reserve > start + budget

* ``step``: the longest of the recent training steps (data wait included);
* ``pause``: the longest epoch-end pause (validation, checkpoints, the loader's restart) seen
  after an epoch of the same kind, or else of any kind, or before any, the val batches times
  ``step``; stopping early still runs one validation and the checkpoints, continuing past an
  epoch's last batch runs one more. A module whose validations differ in cost from epoch to
  epoch says which kind an epoch has with ``validation_kind(epoch) -> str`` (the diffusion
  module's CRPS ensemble epochs);
* ``reserve``: what the stage does after ``fit`` (set by the stage, e.g. from a timed
  whole-field inference, :func:`inference_seconds`).

The elapsed training time is kept in checkpoints as ``Timer`` keeps it, so a resumed run
spends what is left of the budget. Under DDP the decision is broadcast from rank 0.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Timer


def inference_seconds(net: torch.nn.Module, shape: Sequence[int], samples: int = 1) -> float:
    """Seconds ``net`` takes for ``samples`` zero fields of ``shape`` (C, [D], Y, X), eval, no grad.

    Run once before training, it tells the stage how long its whole-field work after ``fit``
    will take, and checks on the way that the (fully convolutional) net runs at full size.
    """
    param = next(net.parameters())
    x = torch.zeros((samples, *shape), dtype=param.dtype, device=param.device)
    was_training = net.training
    net.eval()
    try:
        t0 = time.perf_counter()
        with torch.no_grad():
            net(x)
        return time.perf_counter() - t0
    finally:
        net.train(was_training)


class TimeBudget(Timer):
    """Stop training so that the stage, from ``started`` to its last output, fits ``duration``.

    Args:
        duration: ``"dd:hh:mm:ss"`` (or a timedelta/dict, as ``Timer`` takes); None: no budget.
        started: ``time.monotonic()`` when the stage began; default: now.
        reserve: seconds the stage needs after ``fit`` returns.
        history: recent steps whose longest is the step forecast.
        verbose: log when the budget stops training.
    """

    def __init__(
        self,
        duration: Any,
        *,
        started: float | None = None,
        reserve: float = 0.0,
        history: int = 20,
        verbose: bool = True,
    ) -> None:
        super().__init__(duration=duration, interval="step", verbose=verbose)
        self.started = time.monotonic() if started is None else float(started)
        self.reserve = float(reserve)
        self._steps: deque[float] = deque(maxlen=int(history))
        self._batch_start: float | None = None
        self._last_end: float | None = None
        self._paused_at: float | None = None
        self._paused_kind: str | None = None
        self.pauses: dict[str | None, float] = {}  # the longest epoch-end pause per validation kind
        self.stopped_by_budget = False

    # -- the forecast -------------------------------------------------------------------------
    def deadline(self) -> float:
        """``time.monotonic()`` by which ``fit`` must return (budget less reserve and earlier runs)."""
        assert self._duration is not None
        return self.started + self._duration - self._offset - self.reserve

    @staticmethod
    def _kind(pl_module: L.LightningModule, epoch: int) -> str | None:
        kind = getattr(pl_module, "validation_kind", None)
        return None if kind is None else str(kind(epoch))

    def _pause_estimate(self, trainer: L.Trainer, kind: str | None, step: float) -> float:
        if kind in self.pauses:
            return self.pauses[kind]
        if self.pauses:
            return max(self.pauses.values())
        batches = 0
        datasets = getattr(getattr(trainer, "datamodule", None), "datasets", None) or {}
        if "val" in datasets:
            batches = len(datasets["val"])
        elif trainer.num_val_batches:
            batches = int(sum(trainer.num_val_batches))
        return batches * step

    # -- hooks ---------------------------------------------------------------------------------
    def on_train_batch_start(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        now = time.monotonic()
        if self._paused_at is not None:
            kind = self._paused_kind
            self.pauses[kind] = max(self.pauses.get(kind, 0.0), now - self._paused_at)
            self._paused_at = None
            self._last_end = None
        self._batch_start = now

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        now = time.monotonic()
        since = self._last_end if self._last_end is not None else self._batch_start
        if since is not None:
            self._steps.append(now - since)
        self._last_end = now
        last = batch_idx + 1 >= trainer.num_training_batches
        epoch = trainer.current_epoch
        if last:
            self._paused_at, self._paused_kind = now, self._kind(pl_module, epoch)
        if self._duration is None:
            return
        step = max(self._steps, default=0.0)
        pause = self._pause_estimate(trainer, self._kind(pl_module, epoch), step)
        need = step + pause  # one more step, then the validation and checkpoints of this epoch
        if last:  # that validation comes anyway; then a step and the next epoch's
            need += self._pause_estimate(trainer, self._kind(pl_module, epoch + 1), step)
        stop = now + need > self.deadline() or self.time_elapsed() >= self._duration
        stop = bool(trainer.strategy.broadcast(stop))
        if stop and not trainer.should_stop:
            self.stopped_by_budget = True
            if self._verbose:
                from lightning.pytorch.utilities.rank_zero import rank_zero_info

                rank_zero_info(
                    f"Time budget: stopping after step {trainer.global_step}, {self.deadline() - now:.0f} s "
                    f"before the reserve of {self.reserve:.0f} s (next step ~{step:.1f} s, "
                    f"validation and checkpoints ~{pause:.1f} s)"
                )
        trainer.should_stop = trainer.should_stop or stop
