"""A callback that logs one line per epoch: epoch, step, the epoch-level metrics, wall time."""

from __future__ import annotations

import logging
import time

import lightning as L

log = logging.getLogger("simdiff")


class EpochLog(L.Callback):
    """Log ``epoch N step S | metric=value ... | T s`` after each validation epoch."""

    def __init__(self) -> None:
        self._start = time.perf_counter()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.endswith(("loss", "mse"))
                   and not k.endswith("_step")}
        text = " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
        log.info("epoch %d step %d | %s | %.1f s", trainer.current_epoch, trainer.global_step, text,
                 time.perf_counter() - self._start)
