"""The learning-rate schedule both training stages use: linear warm-up, then optional cosine decay.

    f(step) = (step + 1) / warmup                                     step < warmup
    f(step) = r + (1 - r) (1 + cos(pi p)) / 2,  p = (step - warmup) / (total - warmup)   after

(Goyal et al. 2017 for the warm-up; Loshchilov & Hutter 2017, SGDR, for the cosine), with ``r``
the final fraction of the peak rate; without cosine the rate stays at its peak.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch


def warmup_cosine_factor(step: int, *, warmup: int, total: int, cosine: bool, min_ratio: float) -> float:
    """The multiplier of the peak learning rate at optimizer step ``step``."""
    if step < warmup:
        return (step + 1) / warmup
    if not cosine:
        return 1.0
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine(
    optimizer: torch.optim.Optimizer, *, warmup: int, total: int, cosine: bool, min_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step ``LambdaLR`` with :func:`warmup_cosine_factor`."""
    fn = partial(warmup_cosine_factor, warmup=max(int(warmup), 0), total=max(int(total), 1),
                 cosine=bool(cosine), min_ratio=float(min_ratio))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)


def total_steps(trainer: Any) -> int:
    """Optimizer steps the run is planned for: ``max_steps``, else epochs x steps per epoch.

    Counted from the DataModule's train dataset when there is one, not with
    ``trainer.estimated_stepping_batches``: that sets up the fit loop's train loader before
    a checkpoint is restored, and the loader would then not get its saved mid-epoch state.
    """
    if trainer is None:
        return 1
    if int(trainer.max_steps or -1) > 0:
        return int(trainer.max_steps)
    datasets = getattr(trainer.datamodule, "datasets", None) or {}
    if "train" in datasets and int(trainer.max_epochs or -1) > 0:
        batches = len(datasets["train"])
        limit = trainer.limit_train_batches
        if isinstance(limit, int):
            batches = min(batches, limit)
        elif limit is not None:
            batches = int(batches * float(limit))
        per_epoch = math.ceil(batches / max(int(trainer.accumulate_grad_batches), 1))
        return max(per_epoch * int(trainer.max_epochs), 1)
    return max(int(trainer.estimated_stepping_batches), 1)
