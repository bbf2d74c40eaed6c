"""Exponential moving average of a network's weights, kept as buffers so checkpoints carry it.

    theta_ema <- d_t theta_ema + (1 - d_t) theta,    d_t = min(decay, (1 + t) / (10 + t)),

the update of Polyak & Juditsky (1992) averaging with the warm-up of TensorFlow's
ExponentialMovingAverage (``num_updates``), so early updates are not dominated by the random
initial weights. Buffers are averaged too (copied at the same rate). The averaged weights live
in this module's state dict (tensors only), so a Lightning checkpoint of the owner holds them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn


class ExponentialMovingAverage(nn.Module):
    """Shadow copy of ``model``'s floating-point parameters and buffers.

    Args:
        model: the network to average (not owned; pass it to each call).
        decay: d, the long-run decay in [0, 1).
        warmup: use the ``(1 + t) / (10 + t)`` warm-up.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.int64))
        self._names = [n for n, t in self._tensors(model) if t.is_floating_point()]
        for i, (_, t) in enumerate(self._selected(model)):
            self.register_buffer(f"shadow_{i}", t.detach().clone().float())

    @staticmethod
    def _tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
        yield from model.named_parameters()
        yield from model.named_buffers()

    def _selected(self, model: nn.Module) -> list[tuple[str, torch.Tensor]]:
        tensors = dict(self._tensors(model))
        return [(n, tensors[n]) for n in self._names]

    def current_decay(self) -> float:
        """d_t for the next update."""
        t = int(self.num_updates)
        return min(self.decay, (1 + t) / (10 + t)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One averaging step towards ``model``'s current weights."""
        d = self.current_decay()
        for i, (_, t) in enumerate(self._selected(model)):
            shadow = getattr(self, f"shadow_{i}")
            shadow.mul_(d).add_(t.detach().float(), alpha=1.0 - d)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite ``model``'s weights with the averages."""
        for i, (_, t) in enumerate(self._selected(model)):
            t.copy_(getattr(self, f"shadow_{i}").to(t.dtype))

    def backup(self, model: nn.Module) -> list[torch.Tensor]:
        """Copies of ``model``'s averaged tensors, for :meth:`restore`."""
        return [t.detach().clone() for _, t in self._selected(model)]

    @torch.no_grad()
    def restore(self, model: nn.Module, saved: list[torch.Tensor]) -> None:
        """Put back the tensors saved by :meth:`backup`."""
        for (_, t), s in zip(self._selected(model), saved, strict=True):
            t.copy_(s)

    @contextmanager
    def swapped_into(self, model: nn.Module) -> Iterator[nn.Module]:
        """Use the averaged weights inside the block, then restore the trained ones."""
        saved = self.backup(model)
        self.copy_to(model)
        try:
            yield model
        finally:
            self.restore(model, saved)


class EMAValidation:
    """LightningModule mixin: keep ``self.ema`` of ``self.ema_target()`` and validate with it.

    The average follows each optimizer step (``optimizer_step``), not ``on_train_batch_end``:
    Lightning runs checkpoint callbacks before the module's ``on_train_batch_end``, so an update
    there would be missing from a mid-epoch checkpoint and from a run resumed from it. Validation
    epochs swap the averaged weights in and the trained ones back out, so early stopping and the
    best checkpoint judge the weights that sampling and encoding use.
    """

    ema: ExponentialMovingAverage
    _trained_weights: list[torch.Tensor] | None = None

    def ema_target(self) -> nn.Module:
        """The network whose weights are averaged."""
        raise NotImplementedError

    def optimizer_step(self, *args: object, **kwargs: object) -> None:
        super().optimizer_step(*args, **kwargs)  # type: ignore[misc]
        self.ema.update(self.ema_target())

    def on_validation_epoch_start(self) -> None:
        self._trained_weights = self.ema.backup(self.ema_target())
        self.ema.copy_to(self.ema_target())

    def on_validation_epoch_end(self) -> None:
        if self._trained_weights is not None:
            self.ema.restore(self.ema_target(), self._trained_weights)
            self._trained_weights = None


def load_ema_checkpoint(
    module: nn.Module, checkpoint: str | Path, prefix: str, ema_decay: float, *,
    stage: str = "the stage that wrote it",
) -> nn.Module:
    """Load a Lightning checkpoint's EMA weights of ``module`` (saved under ``prefix``) into it.

    The owner saved ``module`` as ``<prefix>.*`` and its :class:`ExponentialMovingAverage` as
    ``ema.*``. Loads with ``torch.load(weights_only=True)`` (tensors and primitives only,
    :func:`simdiff.lit.checkpoint.load_checkpoint`) and returns ``module`` in eval mode with the
    averaged weights. A file that is not such a checkpoint of ``module`` raises a DataError
    naming it and ``stage``, the command that writes it.
    """
    from simdiff.base.errors import DataError
    from simdiff.lit.checkpoint import load_checkpoint

    state = load_checkpoint(checkpoint, stage=stage)["state_dict"]
    cut = len(prefix) + 1
    try:
        module.load_state_dict({k[cut:]: v for k, v in state.items() if k.startswith(f"{prefix}.")})
        ema = ExponentialMovingAverage(module, ema_decay)
        ema.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("ema.")})
    except (RuntimeError, KeyError, ValueError) as err:
        raise DataError(f"{checkpoint}: its weights do not fit the network its config.yaml describes "
                        f"({str(err).splitlines()[0]}); re-run `simdiff {stage}` with force=true") from err
    ema.copy_to(module)
    return module.eval()
