"""``simdiff evaluate``: the forecast and/or the augmented dataset -> ``run_dir/report/``.

Scores the ensemble against the truth of the training store and its baselines
(:mod:`simdiff.runs.evaluation`): a climatological ensemble of training states, persistence,
and the autoencoder ceiling. When ``augmented.zarr`` (``augment.out``) exists, the report gets
an ``augment`` section. Writes ``metrics.json``, ``metrics.csv``, the figures and ``index.html``
(:mod:`simdiff.evaluate.report`) and prints a summary table.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from simdiff.cli.augment import output_path as augment_output_path
from simdiff.cli.generate import output_path
from simdiff.cli.nodes import build, plain_node
from simdiff.data.stores.stats import denormalise
from simdiff.data.stores.training import TrainingStore
from simdiff.generate.output import open_output
from simdiff.runs.completion import Identity, trained
from simdiff.runs.evaluation import Scoring, score_augmented, score_forecast
from simdiff.runs.layout import RunDir

log = logging.getLogger("simdiff")


def _inputs(cfg: DictConfig) -> tuple[Path, Path]:
    """What evaluate scores: forecast mode's output (else run_dir/forecast.zarr) and the augmented set."""
    mode = build(cfg.generate.mode)
    forecast = output_path(cfg, mode) if mode.kind == "forecast" else RunDir(cfg.run_dir).output("forecast")
    return forecast, augment_output_path(cfg)


def identity(cfg: DictConfig) -> Identity:
    """evaluate depends on its node, the seed, the truth, the outputs it scores and the autoencoder."""
    run = RunDir(cfg.run_dir)
    forecast, augmented = _inputs(cfg)
    inputs = {"training store": run.store}
    if forecast.exists() or not augmented.exists():
        inputs["forecast"] = forecast
    if augmented.exists():
        inputs["augmented"] = augmented
    if cfg.evaluate.baselines.ae_ceiling and run.final("autoencoder").is_file():
        inputs.update(trained(run, "autoencoder"))
    config = {"evaluate": plain_node(cfg.evaluate), "seed": int(cfg.seed)}
    return Identity(config, inputs, [run.metrics, run.report / "index.html"])


def evaluate_stage(cfg: DictConfig) -> None:
    """Score the run's outputs and write ``run_dir/report/``."""
    from rich.console import Console

    from simdiff.evaluate.html import summary_table
    from simdiff.evaluate.report import report_figures, write_report

    run = RunDir(cfg.run_dir)
    ev = cfg.evaluate
    scoring = Scoring(
        climatology=bool(ev.baselines.climatology),
        persistence=bool(ev.baselines.persistence),
        ae_ceiling=bool(ev.baselines.ae_ceiling),
        climatology_window_days=float(ev.climatology_window_days),
        spectra=bool(ev.spectra),
    )
    path, augmented = _inputs(cfg)
    store = TrainingStore(run.store)
    truth = denormalise(store.dataset())  # the truth first: a store with a foreign transform stops here
    metrics: dict[str, Any] = {}
    forecast = None
    if path.exists() or not augmented.exists():
        forecast = open_output(path)
        log.info(
            "evaluate: %s, %d members x %d inits x %d leads",
            path,
            forecast.sizes["realization"],
            forecast.sizes["init_time"],
            forecast.sizes["lead_time"],
        )
        metrics = score_forecast(run, forecast, scoring, seed=int(cfg.seed))
        metrics["source"]["forecast"] = str(path)
    if augmented.exists():
        synthetic = open_output(augmented)
        log.info("evaluate: %s, %d synthetic samples", augmented, int(synthetic["synthetic"].sum()))
        metrics["augment"] = score_augmented(run, synthetic)
        metrics["augment"]["source"] = str(augmented)
    figures = None
    if forecast is not None:
        figures = report_figures(metrics, forecast=forecast, truth=truth, sample_dim=store.layout.sample_dim)
    out = write_report(metrics, run.report, figures)
    if forecast is not None:
        Console(stderr=True, width=160).print(summary_table(metrics))
    log.info("evaluate: report in %s (open index.html)", out)
