"""The optimiser both training modules receive, and the schedule they wrap around it.

A module gets its optimiser as a factory ``params -> Optimizer``: in the config tree a partial
node from ``conf/optimizer/`` (``_target_: torch.optim.AdamW`` with ``_partial_: true``), chosen
per stage (``autoencoder.module.optimizer``, ``diffusion.module.optimizer``), which Hydra
instantiates as ``functools.partial(torch.optim.AdamW, lr=..., ...)``; in Python any callable,
e.g. ``functools.partial(torch.optim.AdamW, lr=1e-3)``. The module calls it with all of its
network's parameters (one parameter group) and puts the warm-up/cosine schedule of
:mod:`simdiff.lit.schedule` on it.

The factory itself is not a checkpoint hyperparameter (checkpoints hold plain values only and
load with ``torch.load(weights_only=True)``); :func:`describe` records its class and keywords as
plain values instead.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import torch

from simdiff.lit.schedule import total_steps, warmup_cosine

#: ``factory(params)`` -> an optimiser over ``params``.
OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]


def adamw(lr: float = 1e-3, weight_decay: float = 0.0, **kwargs: Any) -> OptimizerFactory:
    """``torch.optim.AdamW`` as a factory; weight decay 0 unless asked (torch's default is 0.01)."""
    return functools.partial(torch.optim.AdamW, lr=lr, weight_decay=weight_decay, **kwargs)


def check_factory(optimizer: Any, owner: str) -> OptimizerFactory:
    """``optimizer`` when it is callable, else a TypeError that says what ``owner`` expects."""
    if not callable(optimizer) or isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"{owner}: optimizer must be a factory params -> torch.optim.Optimizer (in a config a node "
            f"with `_partial_: true`, conf/optimizer/; in Python functools.partial(torch.optim.AdamW, "
            f"lr=...)), got {optimizer!r}")
    return optimizer


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def describe(optimizer: OptimizerFactory) -> dict[str, Any]:
    """The factory as plain values: ``{"class": dotted path, **keywords}`` (for checkpoints and logs)."""
    func, keywords = optimizer, {}
    while isinstance(func, functools.partial):
        keywords = {**func.keywords, **keywords}
        func = func.func
    name = f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"
    return {"class": name, **{k: _plain(v) for k, v in keywords.items()}}


def optimizer_with_schedule(optimizer: OptimizerFactory, params: Iterable[torch.nn.Parameter], trainer: Any,
                            *, warmup: int, cosine: bool, min_ratio: float) -> dict[str, Any]:
    """What ``configure_optimizers`` returns: the optimiser over ``params`` and its per-step schedule."""
    opt = optimizer(params)
    sched = warmup_cosine(opt, warmup=warmup, total=total_steps(trainer), cosine=cosine, min_ratio=min_ratio)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
