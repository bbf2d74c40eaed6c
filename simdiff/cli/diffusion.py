"""The ``train-diffusion`` stage: ``run_dir/latents.zarr`` -> ``run_dir/diffusion/``.

Writes::

  config.yaml              the resolved diffusion/trainer/loader config + the latent signature
  checkpoints/last.ckpt    every ``checkpoint_every_n_steps`` steps and every epoch (resume point)
  checkpoints/best.ckpt    lowest EMA validation loss
  diffusion.ckpt           the final checkpoint (best), published last by an atomic rename
  train_summary.json       steps, epochs, wall time, samples/s, world size, per-rank weight checksums
  logs/                    CSV metrics (loss per sigma bin, validation CRPS and spread-skill)

Re-running with the same config resumes from ``last.ckpt`` (mid-epoch included) or does nothing
once ``diffusion.ckpt`` exists; another config is refused unless ``force=true``. Under DDP
(``trainer=ddp``) every rank runs this function; rank 0 writes the summary and publishes.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import yaml
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from simdiff.base.provenance import config_yaml
from simdiff.cli.app import stage_started
from simdiff.cli.nodes import build, lightning_logs_once, preemption_signal
from simdiff.runs.completion import Identity
from simdiff.runs.layout import RunDir
from simdiff.runs.models import (
    build_model,
    check_label_standardisation,
    check_tendency_cycle,
    cycle_harmonics,
    label_standardisation,
    latent_signature,
    open_latents,
    residual_scale,
    static_fields,
    tendency_cycle,
)
from simdiff.runs.stage_dir import claim, display_free_identity, whole_field_identity
from simdiff.runs.training import finish_diffusion

log = logging.getLogger("simdiff")

def stage_config(cfg: DictConfig, signature: dict[str, Any]) -> dict[str, Any]:
    """What defines a trained diffusion model: its config nodes, the seed and the latent signature."""
    plain = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("diffusion", "trainer", "loader")}
    plain["loader"].pop("store", None)
    whole_field_identity(plain, "diffusion")
    display_free_identity(plain)
    if not plain["diffusion"].get("standardise_by_label"):  # off: a run made before the key keeps
        plain["diffusion"].pop("standardise_by_label", None)  # its identity (resumed, not refused)
    module = plain["diffusion"].get("module", {})
    if not module.get("data_noise"):  # likewise
        module.pop("data_noise", None)
    plain["seed"] = int(cfg.seed)
    plain["latent_signature"] = signature
    return yaml.safe_load(config_yaml(plain))


def identity(cfg: DictConfig) -> Identity:
    """train-diffusion depends on its config (with the latent signature) and the latent store."""
    run = RunDir(cfg.run_dir)
    preemption_signal(cfg)  # refuse a bad preemption.signals before anything runs
    config = stage_config(cfg, latent_signature(open_latents(run)))
    return Identity(config, {"latents": run.latents}, [run.final("diffusion")])


def train_diffusion_stage(cfg: DictConfig) -> None:
    """``run_dir/latents.zarr`` -> ``run_dir/diffusion/`` (checkpoints, config, summary)."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from simdiff.data.loading.patch import check_patch
    from simdiff.lit.budget import TimeBudget
    from simdiff.lit.checkpoint import load_checkpoint
    from simdiff.lit.diffusion import check_condition_noise
    from simdiff.lit.epoch_log import EpochLog
    from simdiff.lit.resume import KeepStopped, resume_checkpoints
    from simdiff.nets.autoencoder import total_factors

    lightning_logs_once()
    started = stage_started()
    run = RunDir(cfg.run_dir)
    store = open_latents(run)
    signature = latent_signature(store)
    config = stage_config(cfg, signature)
    shape = signature["latent_shape"]
    patch = check_patch(cfg.diffusion.get("patch"), shape,
                        total_factors(cfg.diffusion.net.factors, len(shape)), "diffusion.patch")
    out, ckpt_dir = run.stage_dir("diffusion"), run.checkpoints("diffusion")
    dm_cfg = OmegaConf.to_container(cfg.diffusion, resolve=True)
    daily, annual = cycle_harmonics(dm_cfg)
    if daily or annual:  # refused before anything is written
        check_tendency_cycle(store, daily, annual, bool(dm_cfg["residual"]))
    module = dm_cfg.get("module") or {}  # noise levels refused before anything is written
    check_condition_noise(module.get("condition_noise", 0.0), module.get("data_noise", 0.0),
                          bool(dm_cfg["conditioning"].get("generated")))
    by_label = bool(dm_cfg.get("standardise_by_label"))
    if by_label:
        check_label_standardisation(store, dm_cfg)
    resume = claim(out, config, final=run.final("diffusion").name, stage="train-diffusion",
                   force=bool(cfg.force))
    if resume is None:
        return

    L.seed_everything(int(cfg.seed), workers=True)
    previous = int(dm_cfg["conditioning"]["previous"])
    win = store.window  # latents of windows of `win` states: the previous windows are `win` samples apart
    dm = instantiate(cfg.loader, store=str(store.path), batch_size=dm_cfg["batch_size"], window=previous + 1,
                     stride=win, lookback=win - 1,
                     patch=None if patch is None else [int(p) for p in dm_cfg["patch"]])
    static = static_fields(store, list(dm_cfg["conditioning"].get("static") or []))
    scale = residual_scale(store) if dm_cfg["residual"] else None
    cycle = tendency_cycle(store, daily, annual, bool(dm_cfg["residual"])) if (daily or annual) else None
    stats = label_standardisation(store) if by_label else None
    if stats is not None:
        log.info("train-diffusion: latents standardised per label, scale %s",
                 " ".join(f"{float(v):.2f}" for v in stats[1].mean(dim=1)))
    model = build_model(dm_cfg, signature, dm.condition_sizes, static, scale, cycle=cycle, label_stats=stats)
    # the Sampling object joins after instantiate: Hydra would turn a dataclass argument into a dict
    module = instantiate(cfg.diffusion.module, model=model, weights=dm.weights, seed=int(cfg.seed),
                         signature=signature, _convert_="all", _partial_=True)(sampling=build(cfg.sampler))
    last, best = resume_checkpoints(ckpt_dir, int(dm_cfg["checkpoint_every_n_steps"]),
                                    preemption=preemption_signal(cfg))
    # after fit: the summary and a checkpoint copy (a second or two)
    budget = TimeBudget(dm_cfg["max_time"], started=started, reserve=3.0)
    callbacks = [*instantiate(cfg.trainer.get("callbacks") or []), last, best, KeepStopped(), EpochLog(),
                 budget]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, max_epochs=dm_cfg["max_epochs"],
                          accumulate_grad_batches=dm_cfg["accumulate_grad_batches"],
                          default_root_dir=str(out), logger=CSVLogger(str(out), name="logs"))
    n_params = sum(p.numel() for p in model.parameters())
    log.info("train-diffusion: %d parameters, latents %s%s, %s, conditions %s, residual=%s", n_params,
             shape, f" (windows of {win} states)" if win > 1 else "",
             f"patches {list(dm.patch)}" if dm.patch else "whole fields",
             {k: v for k, v in dm.condition_sizes.items()}, dm_cfg["residual"])
    t0 = time.perf_counter()
    if resume:  # tensors and plain values only, or a DataError naming the file
        load_checkpoint(resume, stage="train-diffusion")
    trainer.fit(module, datamodule=dm, ckpt_path=resume or None, weights_only=True)
    wall = time.perf_counter() - t0
    if not trainer.is_global_zero:
        return
    finish_diffusion(run, trainer, module, best, last, dm_cfg=dm_cfg, wall=wall, started=started,
                     budget=budget, patch=dm.patch)
