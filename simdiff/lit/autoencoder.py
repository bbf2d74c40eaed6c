"""The LightningModule that trains an autoencoder on a training store's batches.

It receives its network and loss (lightning-hydra-template wiring); the data-dependent
tensors (cell weights, validity mask) come from the store through the CLI. Hyperparameters
saved in checkpoints are plain numbers and strings only, so checkpoints load with
``torch.load(weights_only=True)``. Validation runs with the EMA weights, so early stopping
and the best checkpoint judge the weights that ``encode`` and the report use.

Determinism and resume. Each training step runs with torch's global RNG seeded from the
module's own generator (seeded by ``(seed, rank)`` and saved in each checkpoint,
:mod:`simdiff.lit.resume`), so the KL bottleneck's sampling noise (and any dropout) after a
resume is the noise an uninterrupted run draws; with the loader's skip of already-used batches a
run resumed from any checkpoint ends with the same weights as one that never stopped (CPU, same
seed).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch

from simdiff.data.loading.patch import crop_shared
from simdiff.data.stores.training import TrainingStore
from simdiff.lit.ema import EMAValidation, ExponentialMovingAverage, load_ema_checkpoint
from simdiff.lit.finite import require_finite_loss, require_finite_weights
from simdiff.lit.optim import OptimizerFactory, adamw, check_factory, describe, optimizer_with_schedule
from simdiff.lit.physical import PhysicalAmount
from simdiff.lit.resume import SavedGenerator, global_rng_from
from simdiff.nets.autoencoder import Autoencoder
from simdiff.nets.losses import ReconstructionLoss
from simdiff.nets.window import stack_window, window_states


class AutoencoderModule(SavedGenerator, EMAValidation, L.LightningModule):
    """Trains ``net`` to reconstruct ``batch["target"]`` (B, C, [D], H, W).

    Args:
        net: the autoencoder.
        loss: reconstruction loss (masked weighted MSE, optional spectral term).
        weights: ([D], H, W) cell weights; normalised to mean 1 over valid cells.
        mask: ([D], H, W) bool, True where valid.
        optimizer: ``params -> Optimizer`` (:mod:`simdiff.lit.optim`), called with the net's
            parameters; its learning rate is the peak of the schedule. Default: AdamW, lr 1e-3,
            no weight decay.
        warmup_steps: linear learning-rate warm-up steps.
        cosine: cosine decay to ``min_lr_ratio * lr`` over the trainer's estimated steps.
        min_lr_ratio: final learning rate as a fraction of ``lr``.
        ema_decay: decay of the weight EMA (:class:`~simdiff.lit.ema.ExponentialMovingAverage`).
        seed: seeds the training generator (with the rank) that seeds each step's global RNG.
        signature: the data the net is built for (variables, grid, periodicity), kept in the
            checkpoint so loading can refuse a store it does not fit.
        physical: the store's map to physical amounts, which the loss's count term needs
            (``loss.count_weight > 0``); batches then carry their store ``index``.
        window: consecutive states per input (:mod:`simdiff.nets.window`): the loader's window of
            ``window`` states is stacked along the depth axis; ``weights`` and ``mask`` are then the
            window's (:func:`~simdiff.nets.window.window_cells`).
    """

    def __init__(
        self,
        net: Autoencoder,
        loss: ReconstructionLoss,
        weights: torch.Tensor,
        mask: torch.Tensor,
        optimizer: OptimizerFactory | None = None,
        warmup_steps: int = 100,
        cosine: bool = True,
        min_lr_ratio: float = 0.05,
        ema_decay: float = 0.999,
        seed: int = 0,
        signature: Mapping[str, Any] | None = None,
        physical: PhysicalAmount | None = None,
        window: int = 1,
    ) -> None:
        super().__init__()
        if window > 1 and loss.count_weight > 0:
            raise ValueError("AutoencoderModule: the count term scores single states; use window=1")
        if loss.count_weight > 0 and physical is None:
            raise ValueError("AutoencoderModule: loss.count_weight > 0 needs the store's physical map "
                             "(physical=PhysicalAmount.from_store(store))")
        self.save_hyperparameters(ignore=["net", "loss", "weights", "mask", "optimizer", "physical"])
        self.optimizer_factory = (adamw() if optimizer is None
                                  else check_factory(optimizer, "AutoencoderModule"))
        self.hparams["optimizer"] = describe(self.optimizer_factory)  # plain values: weights_only checkpoints
        self.net = net
        self.loss = loss
        self.physical = physical if loss.count_weight > 0 else None
        mask = mask.to(torch.bool)
        w = weights.to(torch.float32) * mask
        self.register_buffer("weights", w / w[mask].mean())
        self.register_buffer("mask", mask)
        self.ema = ExponentialMovingAverage(net, ema_decay)

    def _step(self, batch: Mapping[str, torch.Tensor], stage: str) -> torch.Tensor:
        x = batch["target"]
        if self.hparams.window > 1:
            x = stack_window(window_states(dict(batch)), has_depth=x.ndim == 5)
        out = self.net(x)
        # A batch of crops (``origin``) is scored with the crops' own weights and mask; an axis is
        # periodic in a crop only where the crop spans it whole.
        origin, size = batch.get("origin"), x.shape[2:]
        weights = crop_shared(self.weights, origin, size)
        mask = crop_shared(self.mask, origin, size)
        periodic = [p and n == m for p, n, m in zip(self.net.periodic, size, self.mask.shape, strict=True)]
        amounts = None
        if self.physical is not None:
            if origin is not None:
                raise ValueError("AutoencoderModule: the count term scores whole fields; train on whole "
                                 "fields (autoencoder.patch=null) or set autoencoder.loss.count_weight=0")
            amounts = (self.physical(out.recon, batch["index"]), self.physical(x, batch["index"]))
        terms = self.loss(out.recon.float(), x.float(), weights, mask, periodic, amounts)
        loss = terms["loss"] + out.reg
        on_step = stage == "train"
        self.log(f"{stage}/loss", terms["mse"] if stage == "val" else loss, prog_bar=True,
                 on_step=on_step, on_epoch=True, batch_size=x.shape[0], sync_dist=not on_step)
        self.log(f"{stage}/mse", terms["mse"], on_step=False, on_epoch=True, batch_size=x.shape[0],
                 sync_dist=True)
        for extra in ("spectral", "count"):
            if extra in terms:
                self.log(f"{stage}/{extra}", terms[extra], on_step=False, on_epoch=True,
                         batch_size=x.shape[0], sync_dist=True)
        self.log(f"{stage}/reg", out.reg, on_step=False, on_epoch=True, batch_size=x.shape[0],
                 sync_dist=True)
        return loss

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        with global_rng_from(self.training_generator(), self.device):
            loss = self._step(batch, "train")
        require_finite_loss(loss, step=self.global_step, epoch=self.current_epoch, batch=batch_idx,
                            stage="autoencoder")
        return loss

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        require_finite_weights(self, step=self.global_step, stage="autoencoder")
        super().on_save_checkpoint(checkpoint)

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def ema_target(self) -> torch.nn.Module:
        return self.net

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        return optimizer_with_schedule(self.optimizer_factory, self.net.parameters(), self._trainer,
                                       warmup=hp.warmup_steps, cosine=hp.cosine, min_ratio=hp.min_lr_ratio)


def data_signature(store: TrainingStore) -> dict[str, Any]:
    """What an autoencoder is built for: variables, layout, spatial shape and periodic flags per axis.

    Plain types only, so it goes into YAML and checkpoints.
    """
    layout = dict(store.attrs["layout"])
    dims = [d for d in (layout.get("depth_dim"), layout["y_dim"], layout["x_dim"]) if d]
    periodic = set(store.attrs["geometry"].get("periodic", []))
    return {
        "variables": list(store.variables),
        "layout": layout,
        "spatial_shape": [int(n) for n in store.data.shape[2:]],
        "periodic": [d in periodic for d in dims],
    }


def signature_differences(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
    """``key: expected -> actual`` lines for every signature entry that differs."""
    return [
        f"{k}: {expected.get(k)!r} -> {actual.get(k)!r}"
        for k in sorted(set(expected) | set(actual))
        if expected.get(k) != actual.get(k)
    ]


def load_ema_weights(net: Autoencoder, checkpoint: str | Path, ema_decay: float = 0.999) -> Autoencoder:
    """Load an AutoencoderModule checkpoint's EMA weights into ``net`` (eval mode).

    Loads with ``torch.load(weights_only=True)``: checkpoints hold tensors and primitives only.
    """
    return load_ema_checkpoint(net, checkpoint, "net", ema_decay,  # type: ignore[return-value]
                               stage="train-autoencoder")
