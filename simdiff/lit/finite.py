"""Stopping a training run at the first non-finite loss, and never checkpointing non-finite weights.

A NaN or Inf loss (bad data that slipped through, a learning rate too high, an overflow in
mixed precision) poisons every weight at the next optimizer step, and every later checkpoint
with them. :func:`require_finite_loss` stops the fit in the training step, before the backward
pass, with one :class:`~simdiff.base.errors.DataError` naming the step (exit code 2 from the
CLI); :func:`require_finite_weights` refuses to write a checkpoint whose weights are not all
finite (a finite loss with overflowing gradients), so ``checkpoints/last.ckpt`` keeps the last
good weights.
"""

from __future__ import annotations

import torch
from torch import nn

from simdiff.base.errors import DataError


def _fix(stage: str) -> str:
    return (f"checkpoints/last.ckpt keeps the last good weights. Fix: look for NaN/Inf in the data, lower "
            f"the learning rate ({stage}.module.optimizer.lr) or clip gradients (trainer.gradient_clip_val), "
            f"then re-run `simdiff train-{stage}` (force=true if you changed the config)")


def require_finite_loss(loss: torch.Tensor, *, step: int, epoch: int, batch: int, stage: str) -> None:
    """Raise a DataError when ``loss`` (a scalar) is NaN or infinite.

    Args:
        step: the trainer's global step (optimizer steps done before this batch).
        epoch, batch: the epoch and the batch index within it.
        stage: ``autoencoder`` or ``diffusion`` (names the config keys in the fix).
    """
    if not bool(torch.isfinite(loss.detach()).all()):
        raise DataError(
            f"train-{stage}: the training loss is {loss.detach().float().cpu().item()} at step {step} "
            f"(epoch {epoch}, batch {batch}); training stopped before this step changed any weight and "
            f"no checkpoint was written from it. " + _fix(stage)
        )


def require_finite_weights(module: nn.Module, *, step: int, stage: str) -> None:
    """Raise a DataError, before a checkpoint is written, when a weight or float buffer is not finite."""
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise DataError(
                f"train-{stage}: weight {name} is not finite at step {step}; refusing to write a checkpoint "
                "with it and stopping. " + _fix(stage)
            )
