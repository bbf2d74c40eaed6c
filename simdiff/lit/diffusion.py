"""The LightningModule that trains a conditional latent diffusion model with the EDM loss.

Training (Karras et al. 2022): ``ln sigma ~ N(P_mean, P_std^2)``, the loss
``lambda(sigma) ||D(y + sigma n; sigma, c) - y||^2`` weighted over latent cells by the cell
weights, the optimiser it receives (AdamW in the shipped config, :mod:`simdiff.lit.optim`) with
linear warm-up (and optional cosine decay), gradient clipping and accumulation from the Trainer,
an EMA of the weights for validation and sampling.

Determinism and resume. Every random draw of training (noise levels, noise, condition drops)
comes from the module's own generator, seeded by ``(seed, rank)`` and saved in each checkpoint
(:class:`simdiff.lit.resume.SavedGenerator`), and the loader skips the batches an interrupted
epoch had already used (:class:`simdiff.data.loading.datamodule.EpochDataLoader`), so a run resumed from
a mid-epoch or epoch-end checkpoint ends with the same weights as one that never stopped (CPU,
same seed). Validation draws from a
generator reset every epoch, so it never disturbs training.

Validation logs, with the EMA weights:

* ``val/loss``: the training objective on the val split (fixed noise per epoch);
* ``val/loss_sigma_<lo>_<hi>``: the same loss at the geometric centre of each noise-level bin,
  showing which noise levels the model has learnt (low sigma: fine detail; high: large scale);
* every ``crps_every`` epochs, from the first, ``val/crps`` and ``val/spread_skill`` of a
  ``crps_members``-member ensemble sampled for the first ``crps_states`` validation states
  (diffused-variable units mapped back to latent states; CRPS averaged over cells and channels).
  The ensemble often costs more than the rest of validation; running it in the first one makes
  its cost known early to the stage's time budget, which forecasts each epoch end by its
  :meth:`~DiffusionModule.validation_kind` (:class:`simdiff.lit.budget.TimeBudget`).

On ``fit`` end, each rank's parameter checksum is gathered (``rank_checksums``): under DDP they
must all agree, which the stage records and checks.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import xarray as xr

from simdiff.base.errors import DataError
from simdiff.data.loading.patch import crop_shared
from simdiff.diffusion.denoiser import ConditionalDenoiser
from simdiff.diffusion.edm import EDMLoss
from simdiff.diffusion.sampling import Sampling
from simdiff.lit.ema import EMAValidation, ExponentialMovingAverage, load_ema_checkpoint
from simdiff.lit.finite import require_finite_loss, require_finite_weights
from simdiff.lit.optim import OptimizerFactory, adamw, check_factory, describe, optimizer_with_schedule
from simdiff.lit.resume import SavedGenerator

DEFAULT_BINS = (0.002, 0.02, 0.1, 0.5, 2.0, 10.0, 80.0)


def parameter_checksum(module: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer, in state-dict order (bitwise identity of weights)."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_condition_noise(condition_noise: Any, data_noise: Any, generated: bool) -> None:
    """Refuse (DataError) noise levels on the conditioning states that training cannot use:
    negative, infinite or not a number; the generated flag without noise to learn it from;
    ``data_noise`` without the flag that tells its rows apart. The CLI calls it before anything
    is written; :class:`DiffusionModule` on construction."""
    for name, value in (("condition_noise", condition_noise), ("data_noise", data_noise)):
        number = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if not number or not 0.0 <= float(value) < float("inf"):
            raise DataError(f"diffusion.module.{name}={value!r}: {name} must be finite and >= 0 (in units "
                            "of the one-step tendency's std; 0: off)")
    if generated and float(condition_noise) == 0.0:
        raise DataError("diffusion.conditioning.generated=true with diffusion.module.condition_noise=0: "
                        "the flag is learnt from the perturbed rows; set condition_noise > 0 or "
                        "generated=false")
    if float(data_noise) > 0.0 and not generated:
        raise DataError(f"diffusion.module.data_noise={data_noise} without "
                        "diffusion.conditioning.generated=true: it is the noise of the rows the flag "
                        "marks as data; set generated=true, or put the noise on every row with "
                        "condition_noise and data_noise=0")


class DiffusionModule(SavedGenerator, EMAValidation, L.LightningModule):
    """Trains ``model`` on batches ``{"target", ["previous"], [conditions]}`` of a latent store.

    Args:
        model: the conditional denoiser (net, conditioner, residual mode).
        weights: ([d], h, w) latent cell weights (the loss averages cells with them).
        sampling: the sampler and its noise levels for the validation ensembles
            (:class:`simdiff.diffusion.sampling.Sampling`, the config's ``sampler`` node); None: no
            validation ensembles.
        p_mean, p_std: the log-normal training noise distribution.
        optimizer: ``params -> Optimizer`` (:mod:`simdiff.lit.optim`), called with the model's
            parameters; its learning rate is the peak of the schedule. Default: AdamW, lr 2e-4,
            betas (0.9, 0.99), no weight decay.
        warmup_steps, cosine, min_lr_ratio: the schedule (:mod:`simdiff.lit.schedule`).
        ema_decay: weight EMA decay.
        seed: seeds the training generator (with the rank) and the validation generator.
        sigma_bins: edges of the noise-level bins of the validation loss.
        crps_every: epochs between validation ensembles (0: never).
        crps_members, crps_states: ensemble size and number of validation states.
        crps_steps: noise levels of the validation ensembles (None: ``sampling.steps``), so
            a large model's validation can cost less than its generation.
        condition_noise: training only: the previous states a forecast is conditioned on get
            Gaussian noise of this standard deviation, in units of the one-step tendency's
            per-channel std (residual mode; of the latent std otherwise), and the residual is
            taken from the perturbed state. A rollout feeds the model its own imperfect states;
            a model trained on exact ones treats them as exact and its spread grows more slowly
            than its error (noise on the conditioning state: the conditioning augmentation of
            Ho et al. 2022, the training noise of Kohl et al. 2023). 0: off. Validation and
            sampling see the states unchanged. With the conditioner's ``generated`` flag, a
            random half of the rows is perturbed and flagged 1, the other half kept exact and
            flagged 0, so the model tells the data's state (a forecast's lead 1) from its own
            (leads >= 2) instead of treating every input as uncertain.
        data_noise: with the ``generated`` flag, the noise level of the rows flagged 0 (the
            data's state), same units; 0 (default): they stay exact. Sets the spread of a
            forecast's first step apart from the later steps' (``condition_noise``).
        signature: what the model is built for (kept in checkpoints; plain types).
    """

    def __init__(
        self,
        model: ConditionalDenoiser,
        weights: torch.Tensor,
        sampling: Sampling | None = None,
        *,
        p_mean: float = -1.2,
        p_std: float = 1.2,
        optimizer: OptimizerFactory | None = None,
        warmup_steps: int = 200,
        cosine: bool = False,
        min_lr_ratio: float = 0.1,
        ema_decay: float = 0.999,
        seed: int = 0,
        sigma_bins: Sequence[float] = DEFAULT_BINS,
        crps_every: int = 1,
        crps_members: int = 8,
        crps_states: int = 8,
        crps_steps: int | None = None,
        condition_noise: float = 0.0,
        data_noise: float = 0.0,
        signature: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        check_condition_noise(condition_noise, data_noise, model.conditioner.generated)
        self.save_hyperparameters(ignore=["model", "weights", "sampling", "optimizer"])
        self.optimizer_factory = (adamw(lr=2e-4, betas=(0.9, 0.99)) if optimizer is None
                          else check_factory(optimizer, "DiffusionModule"))
        self.hparams["optimizer"] = describe(self.optimizer_factory)  # plain values: weights_only checkpoints
        self.model = model
        self.sampling = sampling
        w = weights.to(torch.float32)
        self.register_buffer("weights", w / w.mean())
        self.loss_fn = EDMLoss(sigma_data=model.precond.sigma_data, p_mean=p_mean, p_std=p_std)
        self.ema = ExponentialMovingAverage(model, ema_decay)
        self._val_gen: torch.Generator | None = None
        self.rank_checksums: list[str] = []
        self.start_step = 0  # global step this fit began at (> 0 when resumed)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        require_finite_weights(self, step=self.global_step, stage="diffusion")
        super().on_save_checkpoint(checkpoint)

    # -- training ---------------------------------------------------------------------------
    def _loss(self, batch: Mapping[str, torch.Tensor], generator: torch.Generator,
              sigma: torch.Tensor | None = None, drop: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        x = batch["target"]
        if drop:  # training
            batch = self._perturb_previous(batch, generator)
        y = self.model.target(x, batch)
        drops = None
        if drop:
            drops = self.model.conditioner.sample_drop(x.shape[0], generator=generator, device=x.device)
        cond = self.model.conditions(batch, drops)
        weight = self.weights
        if batch.get("origin") is not None:  # crops: the crop's cell weights, (B, 1, [d], h, w)
            weight = crop_shared(weight, batch["origin"], x.shape[2:]).unsqueeze(1)
        return self.loss_fn(self.model, y, generator=generator, weight=weight, sigma=sigma, **cond)

    def _perturb_previous(self, batch: Mapping[str, torch.Tensor],
                          generator: torch.Generator) -> Mapping[str, torch.Tensor]:
        """``batch`` with ``condition_noise`` added to its previous states (a copy; unchanged at 0)."""
        level = float(self.hparams.get("condition_noise", 0.0))
        previous = batch.get("previous")
        if level == 0.0 or previous is None:
            return batch
        scale = self.model.previous_scale(previous)
        noise = torch.randn(previous.shape, generator=generator, device=previous.device, dtype=previous.dtype)
        if not self.model.conditioner.generated:
            return {**batch, "previous": previous + level * scale * noise}
        # flagged: half the rows stand for a rollout's own state (perturbed, flag 1), half for data
        flag = (torch.rand(previous.shape[0], generator=generator, device=previous.device) < 0.5)
        flag = flag.to(previous.dtype)
        rows = flag.reshape(-1, *([1] * (previous.ndim - 1)))
        data = float(self.hparams.get("data_noise", 0.0))
        return {**batch, "previous": previous + (rows * level + (1 - rows) * data) * scale * noise,
                "generated": flag}

    def on_train_start(self) -> None:
        self.start_step = int(self.global_step)

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss(batch, self.training_generator())
        loss = loss.mean()
        require_finite_loss(loss, step=self.global_step, epoch=self.current_epoch, batch=batch_idx,
                            stage="diffusion")
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True,
                 batch_size=batch["target"].shape[0])
        return loss

    def ema_target(self) -> torch.nn.Module:
        return self.model

    # -- validation (EMA weights) ----------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        g = torch.Generator(device=self.device)
        g.manual_seed(int(self.hparams.seed) + 7_919 * (1 + int(self.global_rank)))
        self._val_gen = g

    def _bins(self) -> list[tuple[float, float]]:
        e = [float(v) for v in self.hparams.sigma_bins]
        return list(itertools.pairwise(e))

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        assert self._val_gen is not None
        n = batch["target"].shape[0]
        loss, _ = self._loss(batch, self._val_gen, drop=False)
        self.log("val/loss", loss.mean(), prog_bar=True, on_epoch=True, batch_size=n, sync_dist=True)
        for lo, hi in self._bins():
            sigma = torch.full((n,), math.sqrt(lo * hi), device=self.device)
            per, _ = self._loss(batch, self._val_gen, sigma=sigma, drop=False)
            self.log(f"val/loss_sigma_{lo:g}_{hi:g}", per.mean(), on_epoch=True, batch_size=n, sync_dist=True)
        if batch_idx == 0 and self.ensemble_due(self.current_epoch) and self.sampling is not None:
            crps, ratio = self._ensemble_scores(batch)
            self.log("val/crps", crps, on_epoch=True, batch_size=1, sync_dist=True)
            self.log("val/spread_skill", ratio, on_epoch=True, batch_size=1, sync_dist=True)

    def ensemble_due(self, epoch: int) -> bool:
        """Whether the validation of ``epoch`` samples the CRPS ensemble: epochs 0, every, 2 every ..."""
        every = int(self.hparams.crps_every)
        return every > 0 and epoch % every == 0

    def validation_kind(self, epoch: int) -> str:
        """What the validation of ``epoch`` costs: "ensemble" (with the CRPS ensemble) or "loss"."""
        return "ensemble" if self.ensemble_due(epoch) and self.sampling is not None else "loss"

    def sigmas(self) -> torch.Tensor:
        """The Karras noise levels the validation ensembles use."""
        assert self.sampling is not None
        return self.sampling.sigmas(self.hparams.crps_steps)

    def _ensemble_scores(self, batch: Mapping[str, torch.Tensor]) -> tuple[float, float]:
        """CRPS and corrected spread-skill of a small ensemble on the first states of ``batch``."""
        from simdiff.metrics.calibration import spread_skill
        from simdiff.metrics.crps import crps

        k = min(int(self.hparams.crps_states), batch["target"].shape[0])
        m = int(self.hparams.crps_members)
        rows = {key: v[:k].repeat_interleave(m, dim=0) for key, v in batch.items() if key != "index"}
        truth = batch["target"][:k]
        shape = (k * m, *truth.shape[1:])
        samples = self.model.sample(rows, shape, sampler=self.sampling.sampler, sigmas=self.sigmas(),
                                    generator=self._val_gen)
        ens = samples.float().reshape(k, m, *truth.shape[1:]).cpu().numpy()
        dims = ["case", "realization", *[f"d{i}" for i in range(truth.ndim - 1)]]
        fc = xr.DataArray(ens, dims=dims)
        obs = xr.DataArray(truth.float().cpu().numpy(), dims=[dims[0], *dims[2:]])
        score = float(crps(fc, obs).mean())
        ratio = float(spread_skill(fc, obs)["ratio_corrected"])
        return score, ratio

    # -- end of fit: DDP consistency -----------------------------------------------------------
    def on_fit_end(self) -> None:
        mine = parameter_checksum(self.model)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, mine)
            self.rank_checksums = [str(c) for c in gathered]
        else:
            self.rank_checksums = [mine]

    # -- optimiser ----------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        return optimizer_with_schedule(self.optimizer_factory, self.model.parameters(), self._trainer,
                                       warmup=hp.warmup_steps, cosine=hp.cosine, min_ratio=hp.min_lr_ratio)


def load_ema_model(
    model: ConditionalDenoiser, checkpoint: str | Path, ema_decay: float = 0.999
) -> ConditionalDenoiser:
    """Load a DiffusionModule checkpoint's EMA weights into ``model`` (eval mode, weights_only load)."""
    return load_ema_checkpoint(model, checkpoint, "model", ema_decay,  # type: ignore[return-value]
                               stage="train-diffusion")
