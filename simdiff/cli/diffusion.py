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
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from simdiff.base.atomic import write_json
from simdiff.base.errors import DataError
from simdiff.base.provenance import config_yaml
from simdiff.cli.app import stage_started
from simdiff.cli.stage_dir import check_rebuilt, claim, whole_field_identity
from simdiff.data.stores.latents import LatentStore
from simdiff.data.stores.training import TrainingStore

log = logging.getLogger("simdiff")

DM_DIR = "diffusion"
FINAL = "diffusion.ckpt"
LATENTS = "latents.zarr"


def latent_signature(store: TrainingStore) -> dict[str, Any]:
    """What a diffusion model is built for: the latents' shape, channels, periodicity and autoencoder."""
    layout = dict(store.attrs["layout"])
    dims = [d for d in (layout.get("depth_dim"), layout["y_dim"], layout["x_dim"]) if d]
    periodic = set(store.attrs["geometry"].get("periodic", []))
    return {
        "channels": [str(c) for c in store.group["channel"][...]],
        "latent_shape": [int(n) for n in store.data.shape[2:]],
        "periodic": [d in periodic for d in dims],
        "autoencoder_sha256": str(store.attrs.get("autoencoder", {}).get("checkpoint_sha256", "")),
    }


def stage_config(cfg: DictConfig, signature: dict[str, Any]) -> dict[str, Any]:
    """What defines a trained diffusion model: its config nodes, the seed and the latent signature."""
    plain = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("diffusion", "trainer", "loader")}
    plain["loader"].pop("store", None)
    whole_field_identity(plain, "diffusion")
    plain["seed"] = int(cfg.seed)
    plain["latent_signature"] = signature
    return yaml.safe_load(config_yaml(plain))


def residual_scale(store: TrainingStore) -> torch.Tensor:
    """(C,) std of the one-step tendency ``x_{t+1} - x_t`` per channel over train pairs in one block.

    Read chunk by chunk (a few MB at a time) in float64.
    """
    split, block = store.array("split"), store.array("block")
    ok = (split[1:] == 0) & (split[:-1] == 0) & (block[1:] == block[:-1])
    data = store.data
    c = data.shape[1]
    s1, s2, n = np.zeros(c), np.zeros(c), 0
    step = max(store.chunk_samples, 64)
    for lo in range(0, data.shape[0] - 1, step):
        hi = min(lo + step + 1, data.shape[0])
        x = np.asarray(data[lo:hi], dtype=np.float64)
        d = np.moveaxis((x[1:] - x[:-1])[ok[lo:hi - 1]], 1, 0).reshape(c, -1)
        s1 += d.sum(axis=1)
        s2 += (d**2).sum(axis=1)
        n += d.shape[1]
    if n == 0:
        raise DataError(f"{store.path}: no consecutive train pairs inside one block, so the residual "
                        "scale is undefined; use diffusion.residual=false or a store with longer blocks")
    var = s2 / n - (s1 / n) ** 2
    return torch.tensor(np.sqrt(np.maximum(var, 1e-12)), dtype=torch.float32)


def static_fields(store: TrainingStore, names: list[str]) -> torch.Tensor | None:
    """(n, [d], h, w) the named store arrays, each standardised (a constant one becomes zeros)."""
    if not names:
        return None
    fields = []
    for name in names:
        if not store.has(name):
            raise DataError(f"{store.path}: diffusion.conditioning.static names {name!r}, which the store "
                            f"does not have; use arrays of shape ([d], h, w) such as 'weights' or 'mask'")
        a = store.array(name).astype(np.float64)
        sd = a.std()
        fields.append((a - a.mean()) / sd if sd > 0 else np.zeros_like(a))
    return torch.tensor(np.stack(fields), dtype=torch.float32)


def build_model(dm_cfg: Any, signature: dict[str, Any], sizes: dict[str, int],
                static: torch.Tensor | None, scale: torch.Tensor | None,
                source: str = "the diffusion config") -> Any:
    """The ConditionalDenoiser for latents with ``signature`` and the store's condition ``sizes``.

    ``dm_cfg["net"]`` must be a spec :mod:`simdiff.base.registry` allows (DataError naming
    ``source`` otherwise); read saved configs with :func:`simdiff.cli.stage_dir.read_config`.
    """
    from simdiff.diffusion.denoiser import ConditionalDenoiser
    from simdiff.nets.conditioning import Conditioner
    from simdiff.nets.fold import DepthAsChannels

    check_rebuilt(dm_cfg["net"], source=source, key="diffusion.net")
    cond = dm_cfg["conditioning"]
    n_channels = len(signature["channels"])
    conditioner = Conditioner(
        int(dm_cfg["net"]["emb_dim"]),
        n_channels,
        previous=int(cond["previous"]),
        static=static,
        time_features=sizes.get("time_features", 0) if cond["time_features"] else 0,
        covariates=sizes.get("covariates", 0) if cond["covariates"] else 0,
        labels=sizes.get("label", 0) if cond["label"] else 0,
        dropout=dict(cond.get("dropout") or {}),
    )
    periodic = list(signature["periodic"])
    fold = bool(dm_cfg.get("fold_depth")) and len(periodic) == 3
    depth = int(signature["latent_shape"][0]) if fold else 1
    net = instantiate(dm_cfg["net"], in_channels=n_channels * depth, out_channels=n_channels * depth,
                      periodic=periodic[1:] if fold else periodic,
                      cond_channels=conditioner.spatial_channels * depth)
    if fold:
        net = DepthAsChannels(net, depth)
    if dm_cfg.get("compile"):
        net.compile()
    return ConditionalDenoiser(net, conditioner, sigma_data=float(dm_cfg["sigma_data"]),
                               residual=bool(dm_cfg["residual"]), residual_scale=scale)


def open_latents(run_dir: Path) -> LatentStore:
    """``run_dir/latents.zarr``, or a DataError that says to run ``simdiff encode`` first."""
    path = run_dir / LATENTS
    if not (path / "zarr.json").is_file():
        raise DataError(f"{path}: no latent store here; run `simdiff encode run_dir={run_dir}` first")
    return LatentStore(path)


def train_diffusion_stage(cfg: DictConfig) -> None:
    """``run_dir/latents.zarr`` -> ``run_dir/diffusion/`` (checkpoints, config, summary)."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from simdiff.data.loading.patch import check_patch
    from simdiff.lit.budget import TimeBudget
    from simdiff.lit.checkpoint import load_checkpoint
    from simdiff.lit.epoch_log import EpochLog
    from simdiff.lit.resume import KeepStopped, resume_checkpoints
    from simdiff.nets.autoencoder import total_factors

    started = stage_started()
    run_dir = Path(cfg.run_dir)
    store = open_latents(run_dir)
    signature = latent_signature(store)
    config = stage_config(cfg, signature)
    shape = signature["latent_shape"]
    patch = check_patch(cfg.diffusion.get("patch"), shape,
                        total_factors(cfg.diffusion.net.factors, len(shape)), "diffusion.patch")
    out = run_dir / DM_DIR
    ckpt_dir = out / "checkpoints"
    resume = claim(out, config, final=FINAL, stage="train-diffusion", force=bool(cfg.force))
    if resume is None:
        return

    L.seed_everything(int(cfg.seed), workers=True)
    dm_cfg = OmegaConf.to_container(cfg.diffusion, resolve=True)
    previous = int(dm_cfg["conditioning"]["previous"])
    dm = instantiate(cfg.loader, store=str(store.path), batch_size=dm_cfg["batch_size"], window=previous + 1,
                     patch=None if patch is None else [int(p) for p in dm_cfg["patch"]])
    static = static_fields(store, list(dm_cfg["conditioning"].get("static") or []))
    scale = residual_scale(store) if dm_cfg["residual"] else None
    model = build_model(dm_cfg, signature, dm.condition_sizes, static, scale)
    sampler = instantiate(cfg.diffusion.sampler)
    module = instantiate(cfg.diffusion.module, model=model, weights=dm.weights, sampler=sampler,
                         seed=int(cfg.seed), signature=signature, _convert_="all")
    last, best = resume_checkpoints(ckpt_dir, int(dm_cfg["checkpoint_every_n_steps"]))
    # after fit: the summary and a checkpoint copy (a second or two)
    budget = TimeBudget(dm_cfg["max_time"], started=started, reserve=3.0)
    callbacks = [*instantiate(cfg.trainer.get("callbacks") or []), last, best, KeepStopped(), EpochLog(),
                 budget]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, max_epochs=dm_cfg["max_epochs"],
                          accumulate_grad_batches=dm_cfg["accumulate_grad_batches"],
                          default_root_dir=str(out), logger=CSVLogger(str(out), name="logs"))
    n_params = sum(p.numel() for p in model.parameters())
    log.info("train-diffusion: %d parameters, latents %s, %s, conditions %s, residual=%s", n_params,
             shape, f"patches {list(dm.patch)}" if dm.patch else "whole fields",
             {k: v for k, v in dm.condition_sizes.items()}, dm_cfg["residual"])
    t0 = time.perf_counter()
    if resume:  # tensors and plain values only, or a DataError naming the file
        load_checkpoint(resume, stage="train-diffusion")
    trainer.fit(module, datamodule=dm, ckpt_path=resume or None, weights_only=True)
    wall = time.perf_counter() - t0
    if not trainer.is_global_zero:
        return
    steps = int(trainer.global_step) - module.start_step
    samples = steps * int(dm_cfg["batch_size"]) * int(dm_cfg["accumulate_grad_batches"]) * trainer.world_size
    checksums = list(module.rank_checksums)
    summary = {
        "epochs": int(trainer.current_epoch),
        "global_step": int(trainer.global_step),
        "steps_this_run": steps,
        "wall_s": round(wall, 2),
        "stage_wall_s": round(time.monotonic() - started, 2),
        "budget": dm_cfg["max_time"],
        "stopped_by_budget": budget.stopped_by_budget,
        "patch": None if dm.patch is None else list(dm.patch),
        "samples_per_s": round(samples / wall, 2) if wall > 0 else None,
        "parameters": n_params,
        "world_size": int(trainer.world_size),
        "rank_checksums": checksums,
        "ranks_identical": len(set(checksums)) == 1,
        "best_val_loss": None if best.best_model_score is None else float(best.best_model_score),
    }
    if not summary["ranks_identical"]:
        raise RuntimeError(f"train-diffusion: DDP ranks ended with different weights: {checksums}")
    write_json(summary, out / "train_summary.json")
    chosen = Path(best.best_model_path or last.last_model_path or ckpt_dir / "last.ckpt")
    if not chosen.is_file():
        chosen = ckpt_dir / "last.ckpt"
        trainer.save_checkpoint(chosen)
    tmp = out / f".{FINAL}.tmp"
    shutil.copyfile(chosen, tmp)
    os.replace(tmp, out / FINAL)
    log.info("train-diffusion: wrote %s (from %s); %.1f samples/s", out / FINAL, chosen.name,
             summary["samples_per_s"] or 0.0)
