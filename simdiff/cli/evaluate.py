"""``simdiff evaluate``: the forecast, conditional or sample draws and/or the augmented dataset ->
``run_dir/report/``.

Scores the ensemble against the truth of the training store and its baselines
(:mod:`simdiff.runs.evaluation`): a climatological ensemble of training states, persistence,
and the autoencoder ceiling. When ``augmented.zarr`` (``augment.out``) exists, the report gets
an ``augment`` section. Conditional mode's members (molecules) are scored against the density of
the sample each was drawn for (``molecular``), sample mode's draws against held-out data
(``samples``). Writes ``metrics.json``, ``metrics.csv``, the figures and ``index.html``
(:mod:`simdiff.evaluate.report`) and prints a summary table.
"""

from __future__ import annotations

import json
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
from simdiff.runs.evaluation import Scoring, molecular_report, score_augmented, score_forecast, score_samples
from simdiff.runs.layout import RunDir

log = logging.getLogger("simdiff")


def _inputs(cfg: DictConfig) -> tuple[Path, Path, Path | None]:
    """What evaluate scores: forecast mode's output (else run_dir/forecast.zarr), the augmented
    set, and conditional or sample mode's output (None in forecast mode)."""
    mode = build(cfg.generate.mode)
    forecast = output_path(cfg, mode) if mode.kind == "forecast" else RunDir(cfg.run_dir).output("forecast")
    other = output_path(cfg, mode) if mode.kind in ("conditional", "samples") else None
    return forecast, augment_output_path(cfg), other


def _scores_forecast(forecast: Path, augmented: Path, drawn: Path | None) -> bool:
    """The forecast is scored when it is there, or when nothing else is (then its absence is the error)."""
    return forecast.exists() or not (augmented.exists() or (drawn is not None and drawn.exists()))


def identity(cfg: DictConfig) -> Identity:
    """evaluate depends on its node, the seed, the truth, the outputs it scores and the autoencoder."""
    run = RunDir(cfg.run_dir)
    forecast, augmented, drawn = _inputs(cfg)
    inputs = {"training store": run.store}
    if drawn is not None and drawn.exists():
        inputs["generated"] = drawn
    if _scores_forecast(forecast, augmented, drawn):
        inputs["forecast"] = forecast
    if augmented.exists():
        inputs["augmented"] = augmented
    if run.certificate.is_file():
        inputs["certificate"] = run.certificate
    if cfg.evaluate.baselines.ae_ceiling and run.final("autoencoder").is_file():
        inputs.update(trained(run, "autoencoder"))
    config = {"evaluate": plain_node(cfg.evaluate), "seed": int(cfg.seed)}
    return Identity(config, inputs, [run.metrics, run.report / "index.html"])


def molecular_table(molecular: dict[str, Any]) -> Any:
    """A rich table: per variable and molecule, electron-count error, radial error, peak ratio."""
    from rich.table import Table

    table = Table(title="generated densities against their references (same molecule, geometry, grid)")
    for col in ("variable", "molecule", "count err median", "count err p90", "radial err", "peak ratio",
                "negative"):
        table.add_column(col, justify="left" if col in ("variable", "molecule") else "right")
    for name, e in molecular.items():
        if not isinstance(e, dict) or "electron_count_relative_error" not in e:
            continue
        c = e["electron_count_relative_error"]
        radial, peak = e["radial_profile_relative_error"]["median"], e["peak_ratio"]["median"]
        table.add_row(name, "all", f"{c['median']:.3%}", f"{c['p90']:.3%}", f"{radial:.3g}", f"{peak:.3g}",
                      f"{e['negative_fraction']:.3g}")
        if e.get("renormalised"):
            raw = e["electron_count_relative_error_raw"]
            table.add_row("", "(as drawn, before renormalising)", f"{raw['median']:.3%}", f"{raw['p90']:.3%}",
                          "", "", "")
        for base, b in (e.get("baselines") or {}).items():
            bc = b["electron_count_relative_error"]
            table.add_row("", f"({base})", f"{bc['median']:.3%}", f"{bc['p90']:.3%}",
                          f"{b['radial_profile_relative_error']['median']:.3g}",
                          f"{b['peak_ratio']['median']:.3g}", "")
        for mol, m in e.get("by_molecule", {}).items():
            table.add_row("", mol, f"{m['electron_count_relative_error']:.3%}", "",
                          f"{m['radial_profile_relative_error']:.3g}", f"{m['peak_ratio']:.3g}", "")
    return table


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
        diurnal=bool(ev.diurnal),
        diurnal_window=(float(ev.diurnal_window[0]), float(ev.diurnal_window[1])),
        block_inits=None if ev.block_inits is None else int(ev.block_inits),
    )
    path, augmented, drawn = _inputs(cfg)
    store = TrainingStore(run.store)
    truth = denormalise(store.dataset())  # the truth first: a store with a foreign transform stops here
    metrics: dict[str, Any] = {}
    forecast = None
    figures: dict[str, Any] = {}
    if drawn is not None and drawn.exists():
        output = open_output(drawn)
        if "condition" in output.dims:
            log.info("evaluate: %s, %d members x %d conditions", drawn, output.sizes["realization"],
                     output.sizes["condition"])
            metrics["molecular"], figures = molecular_report(run, output)
            metrics["molecular"]["source"] = str(drawn)
        else:
            log.info("evaluate: %s, %d samples", drawn, output.sizes["realization"])
            metrics["samples"] = score_samples(run, output)
            metrics["samples"]["source"] = str(drawn)
    if _scores_forecast(path, augmented, drawn):
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
        metrics["augment"] = score_augmented(run, synthetic, forecast, seed=int(cfg.seed))
        metrics["augment"]["source"] = str(augmented)
    if run.certificate.is_file():
        log.info("evaluate: the downstream certificate %s", run.certificate)
        metrics["certificate"] = json.loads(run.certificate.read_text())
    if forecast is not None:
        sdim = store.layout.sample_dim
        figures.update(report_figures(metrics, forecast=forecast, truth=truth, sample_dim=sdim))
    else:
        figures.update(report_figures(metrics))
    out = write_report(metrics, run.report, figures)
    if forecast is not None:
        Console(stderr=True, width=160).print(summary_table(metrics))
    if "molecular" in metrics:
        Console(stderr=True, width=160).print(molecular_table(metrics["molecular"]))
    log.info("evaluate: report in %s (open index.html)", out)
