"""The ``train-autoencoder`` and ``encode`` stages.

``train-autoencoder`` writes ``run_dir/autoencoder/``::

  config.yaml              the resolved autoencoder/trainer/loader config + the data signature
  checkpoints/last.ckpt    every ``checkpoint_every_n_steps`` steps and every epoch (resume point)
  checkpoints/best.ckpt    lowest EMA validation loss
  autoencoder.ckpt         the final checkpoint (best), published last by an atomic rename
  reconstruction.json/png  the report on the test split (simdiff.evaluate.reconstruction)
  logs/                    CSV metrics

Re-running with the same config resumes from ``last.ckpt`` (mid-epoch included) and ends with
the weights an uninterrupted run ends with (:mod:`simdiff.lit.resume`), or does nothing once
``autoencoder.ckpt`` exists; a different config (or a store the net does not fit) is refused
unless ``force=true``. The checkpoint cadence is not part of the config: changing it changes no
weights. ``encode`` writes ``run_dir/latents.zarr`` (simdiff.data.stores.latents) with the
EMA weights of ``autoencoder.ckpt``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import yaml
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from simdiff.base.errors import DataError
from simdiff.base.provenance import config_yaml
from simdiff.cli.app import stage_started
from simdiff.cli.nodes import lightning_logs_once, plain_node, preemption_signal
from simdiff.data.stores.training import TrainingStore
from simdiff.nets.window import window_cells, windowed_shape
from simdiff.runs.autoencoder import encode_run, publish_checkpoint, reconstruction_report
from simdiff.runs.completion import Identity, trained
from simdiff.runs.layout import RunDir
from simdiff.runs.models import build_net
from simdiff.runs.stage_dir import claim, display_free_identity, whole_field_identity

log = logging.getLogger("simdiff")

def stage_config(cfg: DictConfig, signature: dict[str, Any]) -> dict[str, Any]:
    """What defines a trained autoencoder: its config nodes, the seed and the data signature."""
    plain = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("autoencoder", "trainer", "loader")}
    plain["loader"].pop("store", None)  # a path: the data signature identifies the store, so runs can move
    plain["autoencoder"].pop("checkpoint_every_n_steps", None)  # resume is exact: the cadence changes nothing
    if plain["autoencoder"].get("window") == 1:  # the default: runs trained before it keep their identity
        plain["autoencoder"].pop("window", None)
    whole_field_identity(plain, "autoencoder")
    display_free_identity(plain)
    plain["seed"] = int(cfg.seed)
    plain["data_signature"] = signature
    return yaml.safe_load(config_yaml(plain))


def identity(cfg: DictConfig) -> Identity:
    """train-autoencoder depends on its config (with the data signature) and the training store."""
    from simdiff.lit.autoencoder import data_signature

    run = RunDir(cfg.run_dir)
    preemption_signal(cfg)  # refuse a bad preemption.signals before anything runs
    config = stage_config(cfg, data_signature(TrainingStore(run.store)))
    return Identity(config, {"training store": run.store}, [run.final("autoencoder")])


def encode_identity(cfg: DictConfig) -> Identity:
    """encode depends on the training store, the trained autoencoder and ``encode``'s options."""
    run = RunDir(cfg.run_dir)
    return Identity({"encode": {"atom_subcells": atom_subcells(cfg)}},
                    {"training store": run.store, **trained(run, "autoencoder")}, [run.latents])


def atom_subcells(cfg: DictConfig) -> int:
    """``encode.atom_subcells``, checked (a positive integer, else a DataError naming the key)."""
    value = cfg.get("encode", {}).get("atom_subcells", 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(f"encode.atom_subcells={value!r}: must be a positive integer (1: atom "
                        "densities on the latent cells; 2: on 2^3 sub-cells of each, as channels)")
    return int(value)


def train_patch(ae: Any, signature: dict[str, Any]) -> list[int] | None:
    """``autoencoder.patch``, checked against the field and the net's factors (else a DataError)."""
    from simdiff.data.loading.patch import check_patch
    from simdiff.nets.autoencoder import total_factors

    shape = signature["spatial_shape"]
    factors = total_factors(ae.net.factors, len(shape))
    full = check_patch(ae.get("patch"), shape, factors, "autoencoder.patch")
    if full is None:
        return None
    spanned = [p and c == n for p, c, n in zip(signature["periodic"], full, shape, strict=True)]
    if float(ae.loss.get("spectral_weight", 0.0)) > 0 and not any(spanned):
        raise DataError(f"autoencoder.patch={list(ae.patch)} leaves no periodic axis whole, so the spectral "
                        f"term (autoencoder.loss.spectral_weight={ae.loss.spectral_weight}) has no axis to "
                        "work on; span a periodic axis whole with the patch, or set "
                        "autoencoder.loss.spectral_weight=0")
    return [int(p) for p in ae.patch]


def check_window(ae: Any, store: TrainingStore, patch: Any) -> int:
    """``autoencoder.window``, checked against the store and the other options (else a DataError)."""
    value = ae.get("window", 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(f"autoencoder.window={value!r}: give the number of consecutive states per latent, "
                        "an integer >= 1 (1: one state)")
    if value == 1:
        return 1
    why = []
    if store.layout.sample_dim != "time":
        why.append(f"{store.path} holds samples ({store.layout.sample_dim!r}), not a time series")
    if patch:
        why.append(f"autoencoder.patch={list(patch)} (crops of windows are not built)")
    if float(ae.loss.get("count_weight", 0.0)) > 0:
        why.append(f"autoencoder.loss.count_weight={ae.loss.count_weight} (the count term scores single "
                   "states)")
    if why:
        raise DataError(f"autoencoder.window={value} encodes windows of consecutive times, but "
                        + "; ".join(why) + ". Set autoencoder.window=1, or fix the above")
    return int(value)


def report_seconds(net: Any, store: TrainingStore, shape: list[int]) -> float:
    """Forecast of the time the stage needs after training: the report over whole test fields.

    Times one whole-field pass of the (untrained) net, which also shows before training that the
    fully convolutional net runs on the whole field, and scales it by the report's samples.
    """
    from simdiff.lit.budget import inference_seconds

    samples = len(store.indices("test")) or len(store.indices("val"))
    one = inference_seconds(net, (net.in_channels, *shape))
    return 1.1 * samples * one + 5.0


def physical_map(loss: Any, store: TrainingStore, patch: Any) -> Any:
    """The store's map to physical amounts when the loss has a count term, else None; a
    DataError when the count term cannot apply (crops, or a variable without Log1p)."""
    from simdiff.lit.physical import PhysicalAmount

    if loss.count_weight <= 0:
        return None
    if patch:
        raise DataError(f"autoencoder.loss.count_weight={loss.count_weight} scores what whole fields "
                        f"hold, and autoencoder.patch={list(patch)} trains on crops; set "
                        "autoencoder.patch=null or autoencoder.loss.count_weight=0")
    try:
        return PhysicalAmount.from_store(store)
    except ValueError as e:
        raise DataError(str(e)) from None


def train_autoencoder_stage(cfg: DictConfig) -> None:
    """``run_dir/data/train.zarr`` -> ``run_dir/autoencoder/`` (checkpoints, config, report)."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from simdiff.lit.autoencoder import data_signature, load_ema_weights
    from simdiff.lit.budget import TimeBudget
    from simdiff.lit.checkpoint import load_checkpoint
    from simdiff.lit.epoch_log import EpochLog
    from simdiff.lit.resume import KeepStopped, resume_checkpoints

    lightning_logs_once()
    started = stage_started()
    run = RunDir(cfg.run_dir)
    store = TrainingStore(run.store)
    signature = data_signature(store)
    config = stage_config(cfg, signature)
    ae = cfg.autoencoder
    patch = train_patch(ae, signature)
    window = check_window(ae, store, patch)
    loss = instantiate(ae.loss)
    physical = physical_map(loss, store, patch)  # before anything is written: it checks the store
    out, ckpt_dir = run.stage_dir("autoencoder"), run.checkpoints("autoencoder")
    resume = claim(out, config, final=run.final("autoencoder").name, stage="train-autoencoder",
                   force=bool(cfg.force))
    if resume is None:
        return
    ckpt_path = resume or None

    L.seed_everything(int(cfg.seed), workers=True)
    dm = instantiate(cfg.loader, batch_size=ae.batch_size, patch=patch, window=window)
    ae_plain = plain_node(ae)
    net = build_net(ae_plain, signature)
    depth = store.layout.depth_dim is not None
    module = instantiate(ae.module, net=net, loss=loss, weights=window_cells(dm.weights, window, depth),
                         mask=window_cells(dm.mask, window, depth), seed=int(cfg.seed), signature=signature,
                         physical=physical, window=window, _convert_="all")
    last, checkpoint = resume_checkpoints(ckpt_dir, int(ae.get("checkpoint_every_n_steps") or 0),
                                          preemption=preemption_signal(cfg))
    shape = windowed_shape(signature["spatial_shape"], window)
    budget = TimeBudget(ae.max_time, started=started, reserve=report_seconds(net, store, shape) / window)
    callbacks = [*instantiate(cfg.trainer.get("callbacks") or []), instantiate(ae.early_stopping),
                 last, checkpoint, KeepStopped(), EpochLog(), budget]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, max_epochs=ae.max_epochs,
                          default_root_dir=str(out), logger=CSVLogger(str(out), name="logs"))
    log.info("train-autoencoder: %d parameters, latents %s%s, compression %.1fx, %s, %.0f s for the report",
             sum(p.numel() for p in net.parameters()), net.latent_shape(shape),
             f" (windows of {window} states)" if window > 1 else "", net.compression_ratio(shape),
             f"patches {list(patch)}" if patch else "whole fields", budget.reserve)
    if ckpt_path:  # tensors and plain values only, or a DataError naming the file
        load_checkpoint(ckpt_path, stage="train-autoencoder")
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    if not trainer.is_global_zero:
        return
    best = Path(checkpoint.best_model_path or ckpt_dir / "last.ckpt")
    net = load_ema_weights(build_net(ae_plain, signature), best, float(ae.module.ema_decay))
    reconstruction_report(net, store, out, int(ae.encode_batch_size), window)
    publish_checkpoint(best, run.final("autoencoder"))
    log.info("train-autoencoder: wrote %s (from %s); %d steps, %.0f s of a %s budget",
             run.final("autoencoder"), best.name, trainer.global_step, time.monotonic() - started,
             ae.max_time)


def encode_stage(cfg: DictConfig) -> None:
    """``run_dir/autoencoder/autoencoder.ckpt`` + the training store -> ``run_dir/latents.zarr``."""
    encode_run(RunDir(cfg.run_dir), atom_subcells(cfg))
