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
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from simdiff.base.errors import DataError
from simdiff.base.provenance import config_yaml, sha256_path
from simdiff.cli.app import stage_started
from simdiff.cli.stage_dir import CONFIG, check_rebuilt, claim, read_config, whole_field_identity
from simdiff.data.stores.training import TrainingStore

log = logging.getLogger("simdiff")

AE_DIR = "autoencoder"
FINAL = "autoencoder.ckpt"
LATENTS = "latents.zarr"


def _store(run_dir: Path) -> TrainingStore:
    return TrainingStore(run_dir / "data" / "train.zarr")


def stage_config(cfg: DictConfig, signature: dict[str, Any]) -> dict[str, Any]:
    """What defines a trained autoencoder: its config nodes, the seed and the data signature."""
    plain = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("autoencoder", "trainer", "loader")}
    plain["loader"].pop("store", None)  # a path: the data signature identifies the store, so runs can move
    plain["autoencoder"].pop("checkpoint_every_n_steps", None)  # resume is exact: the cadence changes nothing
    whole_field_identity(plain, "autoencoder")
    plain["seed"] = int(cfg.seed)
    plain["data_signature"] = signature
    return yaml.safe_load(config_yaml(plain))


def build_net(ae_cfg: Any, signature: dict[str, Any], source: str = "the autoencoder config") -> Any:
    """The autoencoder for a store with ``signature`` (in_channels and periodic flags from it).

    ``ae_cfg["net"]`` must be a spec :mod:`simdiff.base.registry` allows (DataError naming
    ``source`` otherwise); read saved configs with :func:`simdiff.cli.stage_dir.read_config`.
    """
    check_rebuilt(ae_cfg["net"], source=source, key="autoencoder.net")
    return instantiate(ae_cfg["net"], in_channels=len(signature["variables"]),
                       periodic=list(signature["periodic"]))


def check_fits(saved: dict[str, Any], store: TrainingStore) -> None:
    """Refuse (DataError) when ``store`` is not the data the saved autoencoder was built for."""
    from simdiff.lit.autoencoder import data_signature, signature_differences

    diff = signature_differences(saved["data_signature"], data_signature(store))
    if diff:
        raise DataError(
            f"{store.path}: the autoencoder in {store.path.parents[1] / AE_DIR} was trained on other "
            f"data (channels, variables or grid differ):\n  " + "\n  ".join(diff)
            + "\nFix: re-run `simdiff train-autoencoder` with force=true for this store, or point "
            "run_dir at the store it was trained on"
        )


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


def report_seconds(net: Any, store: TrainingStore, shape: list[int]) -> float:
    """Forecast of the time the stage needs after training: the report over whole test fields.

    Times one whole-field pass of the (untrained) net, which also shows before training that the
    fully convolutional net runs on the whole field, and scales it by the report's samples.
    """
    from simdiff.lit.budget import inference_seconds

    samples = len(store.indices("test")) or len(store.indices("val"))
    one = inference_seconds(net, (net.in_channels, *shape))
    return 1.1 * samples * one + 5.0


def _report(net: Any, store: TrainingStore, out_dir: Path, compression: float, batch_size: int) -> None:
    """Reconstruct the test split and write reconstruction.json/.png into ``out_dir`` atomically."""
    from simdiff.data.stores.stats import denormalise
    from simdiff.lit.encode import reconstruct_store

    try:
        from simdiff.evaluate.reconstruction import reconstruction_report
    except ImportError as err:
        log.warning("reconstruction report not written: simdiff.evaluate.reconstruction is unavailable (%s)",
                    err)
        return
    split = "test"
    idx = store.indices("test")
    if not len(idx):
        split, idx = "val", store.indices("val")
        log.warning("the test split of %s is empty; the reconstruction report uses the val split", store.path)
    ds = store.dataset()
    sdim = store.layout.sample_dim
    truth_ds = ds.isel({sdim: idx})
    recon = reconstruct_store(net, store, indices=idx, batch_size=batch_size)
    truth = denormalise(truth_ds)
    rec = denormalise(truth_ds.assign(data=recon.variable))
    periodic = set(store.attrs["geometry"].get("periodic", []))
    tmp = Path(tempfile.mkdtemp(prefix=".report.tmp-", dir=out_dir))
    try:
        reconstruction_report(truth, rec, weights=ds["weights"].load(), periodic=periodic,
                              compression_ratio=compression, out_dir=tmp, sample=0)
        for f in sorted(tmp.iterdir()):
            os.replace(f, out_dir / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("reconstruction report (%s split): %s", split, out_dir / "reconstruction.json")


def train_autoencoder_stage(cfg: DictConfig) -> None:
    """``run_dir/data/train.zarr`` -> ``run_dir/autoencoder/`` (checkpoints, config, report)."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from simdiff.lit.autoencoder import data_signature, load_ema_weights
    from simdiff.lit.budget import TimeBudget
    from simdiff.lit.checkpoint import load_checkpoint
    from simdiff.lit.epoch_log import EpochLog
    from simdiff.lit.resume import KeepStopped, resume_checkpoints

    started = stage_started()
    run_dir = Path(cfg.run_dir)
    store = _store(run_dir)
    signature = data_signature(store)
    config = stage_config(cfg, signature)
    ae = cfg.autoencoder
    patch = train_patch(ae, signature)
    out = run_dir / AE_DIR
    ckpt_dir = out / "checkpoints"
    resume = claim(out, config, final=FINAL, stage="train-autoencoder", force=bool(cfg.force))
    if resume is None:
        return
    ckpt_path = resume or None

    L.seed_everything(int(cfg.seed), workers=True)
    dm = instantiate(cfg.loader, batch_size=ae.batch_size, patch=patch)
    net = build_net(ae, signature)
    module = instantiate(ae.module, net=net, loss=instantiate(ae.loss), weights=dm.weights, mask=dm.mask,
                         seed=int(cfg.seed), signature=signature, _convert_="all")
    last, checkpoint = resume_checkpoints(ckpt_dir, int(ae.get("checkpoint_every_n_steps") or 0))
    shape = signature["spatial_shape"]
    budget = TimeBudget(ae.max_time, started=started, reserve=report_seconds(net, store, shape))
    callbacks = [*instantiate(cfg.trainer.get("callbacks") or []), instantiate(ae.early_stopping),
                 last, checkpoint, KeepStopped(), EpochLog(), budget]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, max_epochs=ae.max_epochs,
                          default_root_dir=str(out), logger=CSVLogger(str(out), name="logs"))
    log.info("train-autoencoder: %d parameters, latents %s, compression %.1fx, %s, %.0f s for the report",
             sum(p.numel() for p in net.parameters()), net.latent_shape(shape), net.compression_ratio(shape),
             f"patches {list(patch)}" if patch else "whole fields", budget.reserve)
    if ckpt_path:  # tensors and plain values only, or a DataError naming the file
        load_checkpoint(ckpt_path, stage="train-autoencoder")
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    if not trainer.is_global_zero:
        return
    best = Path(checkpoint.best_model_path or ckpt_dir / "last.ckpt")
    net = load_ema_weights(build_net(ae, signature), best, float(ae.module.ema_decay))
    _report(net, store, out, net.compression_ratio(shape), int(ae.encode_batch_size))
    tmp = out / f".{FINAL}.tmp"
    shutil.copyfile(best, tmp)
    os.replace(tmp, out / FINAL)
    log.info("train-autoencoder: wrote %s (from %s); %d steps, %.0f s of a %s budget", out / FINAL, best.name,
             trainer.global_step, time.monotonic() - started, ae.max_time)


def encode_stage(cfg: DictConfig) -> None:
    """``run_dir/autoencoder/autoencoder.ckpt`` + the training store -> ``run_dir/latents.zarr``."""
    from simdiff.data.stores.latents import LatentStore, write_latent_store
    from simdiff.lit.autoencoder import load_ema_weights
    from simdiff.lit.encode import encode_store

    run_dir = Path(cfg.run_dir)
    out = run_dir / AE_DIR
    final = out / FINAL
    if not final.is_file():
        raise DataError(
            f"{final}: no trained autoencoder here; run `simdiff train-autoencoder run_dir={run_dir}` first"
        )
    saved = read_config(out / CONFIG)
    store = _store(run_dir)
    check_fits(saved, store)
    digest, _ = sha256_path(final)
    target = run_dir / LATENTS
    if target.exists():
        old = LatentStore(target).autoencoder.get("checkpoint_sha256")
        if old == digest:
            log.info("encode: %s is up to date with %s; skipping", target, final)
            return
        if not cfg.force:
            raise DataError(f"{target} was encoded with another autoencoder (sha256 {old}); "
                            f"pass force=true to replace it")
    net = load_ema_weights(build_net(saved["autoencoder"], saved["data_signature"]), final,
                           float(saved["autoencoder"]["module"]["ema_decay"]))
    shape = [int(n) for n in store.data.shape[2:]]
    latents = encode_store(net, store, batch_size=int(saved["autoencoder"]["encode_batch_size"]))
    info = {
        "checkpoint": str(final.resolve()),
        "checkpoint_sha256": digest,
        "config": config_yaml(saved),
        "input_dims": list(store.layout.spatial_dims),
        "input_shape": shape,
        "latent_shape": list(net.latent_shape(shape)),
        "factors": list(net.total_factors),
        "compression_ratio": float(net.compression_ratio(shape)),
    }
    tmp = Path(tempfile.mkdtemp(prefix=".latents.tmp-", dir=run_dir))
    try:
        write_latent_store(latents, store, tmp / LATENTS, factors=net.total_factors, periodic=net.periodic,
                           autoencoder=info)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp / LATENTS, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    std = np.asarray(LatentStore(target).scale)
    log.info("encode: wrote %s, latents %s, per-channel scale %s", target, info["latent_shape"],
             np.array2string(std, precision=3))



