"""The ``evaluate`` stage: ``run_dir/forecast.zarr`` + the training store -> ``run_dir/report/``.

Scores the ensemble against the truth of the training store (physical units, cell-weighted,
mask-aware) and against three baselines on the same cases: a climatological ensemble of
training states (same season and time of day where the data has seasons), persistence, and the
autoencoder ceiling (the scores of decode(encode(truth)), the best any latent model can do).
Writes ``metrics.json``, ``metrics.csv``, the figures and ``index.html`` (simdiff.evaluate.report)
and prints a summary table. When ``run_dir/augmented.zarr`` (``augment.out``) exists, the report gets
an ``augment`` section: quantiles, Wasserstein-1 against held-out data, spectrum ratio and the
memorisation check of the synthetic samples.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from omegaconf import DictConfig

from simdiff.cli.augment import output_path as augment_output_path
from simdiff.cli.autoencoder import AE_DIR, build_net
from simdiff.cli.autoencoder import FINAL as AE_FINAL
from simdiff.cli.generate import output_path
from simdiff.cli.stage_dir import read_config
from simdiff.data.stores.stats import denormalise
from simdiff.data.stores.training import TrainingStore
from simdiff.data.transforms import domain_of
from simdiff.evaluate.baselines import climatology_needs_care
from simdiff.generate.output import open_output

log = logging.getLogger("simdiff")

REPORT = "report"


def ae_ceiling(run_dir: Path, store: TrainingStore, indices: np.ndarray) -> xr.Dataset | None:
    """decode(encode(truth)) at the store's samples ``indices``, physical units; None without an AE."""
    from simdiff.lit.autoencoder import load_ema_weights
    from simdiff.lit.encode import reconstruct_store

    final = run_dir / AE_DIR / AE_FINAL
    if not final.is_file():
        log.warning("evaluate: no autoencoder at %s; the AE-ceiling baseline is left out", final)
        return None
    saved = read_config(run_dir / AE_DIR / "config.yaml")
    net = load_ema_weights(
        build_net(saved["autoencoder"], saved["data_signature"]),
        final,
        float(saved["autoencoder"]["module"]["ema_decay"]),
    )
    recon = reconstruct_store(
        net, store, indices=indices, batch_size=int(saved["autoencoder"]["encode_batch_size"])
    )
    ds = store.dataset().isel({store.layout.sample_dim: indices})
    return denormalise(ds.assign(data=recon.variable))


def evaluate_stage(cfg: DictConfig) -> None:
    """Score ``run_dir/forecast.zarr`` and write ``run_dir/report/``."""
    from rich.console import Console

    from simdiff.evaluate.html import summary_table
    from simdiff.evaluate.report import evaluate_augmented, evaluate_forecast, report_figures, write_report

    run_dir = Path(cfg.run_dir)
    store = TrainingStore(run_dir / "data" / "train.zarr")
    sdim = store.layout.sample_dim
    ds = store.dataset()
    truth = denormalise(ds)
    train_idx = store.indices("train")
    train = truth.isel({sdim: train_idx})
    periodic = set(store.attrs["geometry"].get("periodic", []))
    path = output_path(cfg) if cfg.generate.mode == "forecast" else run_dir / "forecast.zarr"
    augmented = augment_output_path(cfg)
    metrics: dict[str, Any] = {}
    forecast = None
    if path.exists() or not augmented.exists():
        forecast = open_output(path)
        leads = forecast.sizes["lead_time"]
        valid = (np.asarray(forecast["init_index"].values)[:, None] + np.arange(1, leads + 1)).ravel()
        valid = np.unique(valid[valid < store.n_samples])
        ev = cfg.evaluate
        ceiling = ae_ceiling(run_dir, store, valid) if ev.baselines.ae_ceiling else None
        features = ds["time_features"].isel({sdim: train_idx}) if "time_features" in ds else None
        log.info("evaluate: %s, %d members x %d inits x %d leads", path, forecast.sizes["realization"],
                 forecast.sizes["init_time"], leads)
        metrics = evaluate_forecast(
            forecast, truth, train=train if ev.baselines.climatology else None, ae_ceiling=ceiling,
            weights=ds["weights"], periodic=periodic, sample_dim=sdim, time_features=features,
            seed=int(cfg.seed), persistence_baseline=bool(ev.baselines.persistence),
            window_days=float(ev.climatology_window_days), spectra=bool(ev.spectra),
            domains={name: domain_of(t) for name, t in store.transforms.items()},
        )
        clim = metrics["baselines"]["climatology"]
        if clim is not None and climatology_needs_care(clim):
            log.warning("evaluate: the climatology baseline is weak on this record (%d training states, "
                        "pools %s, smallest %d for %d members); read crps_climatology with care",
                        clim["training_states"], clim["pools"], clim["smallest_pool"], clim["members"])
        rms = forecast.attrs.get("simdiff_decoder_residual_rms_over_std")
        metrics["source"] = {"forecast": str(path), "store": str(store.path),
                             "decoder_residual_rms_over_std": json.loads(rms) if rms else None}
    if augmented.exists():
        synthetic = open_output(augmented)
        synthetic = synthetic.isel({sdim: np.flatnonzero(synthetic["synthetic"].values)})
        test_idx = store.indices("test")
        if not len(test_idx):
            test_idx = store.indices("val")
        log.info("evaluate: %s, %d synthetic samples", augmented, synthetic.sizes[sdim])
        metrics["augment"] = evaluate_augmented(
            synthetic[list(truth.data_vars)], train, truth.isel({sdim: test_idx}), weights=ds["weights"],
            periodic=periodic, sample_dim=sdim,
        )
        metrics["augment"]["source"] = str(augmented)
    figures = report_figures(metrics, forecast=forecast, truth=truth, sample_dim=sdim) if forecast else None
    out = write_report(metrics, run_dir / REPORT, figures)
    if forecast is not None:
        Console(stderr=True, width=160).print(summary_table(metrics))
    log.info("evaluate: report in %s (open index.html)", out)
