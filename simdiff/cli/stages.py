"""The stage task functions behind each sub-command, and the chain that ``simdiff run`` walks."""

from __future__ import annotations

import glob
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from simdiff.base.errors import DataError
from simdiff.cli import augment, autoencoder, certify, diffusion, evaluate, generate
from simdiff.cli.app import restart_stage_clock, to_plain
from simdiff.cli.augment import augment_stage
from simdiff.cli.autoencoder import encode_stage, train_autoencoder_stage
from simdiff.cli.certify import certify_stage
from simdiff.cli.diffusion import train_diffusion_stage
from simdiff.cli.evaluate import evaluate_stage
from simdiff.cli.generate import generate_stage
from simdiff.cli.nodes import build
from simdiff.evaluate.html import report_summary
from simdiff.runs import completion
from simdiff.runs.completion import Identity
from simdiff.runs.layout import RunDir

log = logging.getLogger("simdiff")


def source_inputs(data: DictConfig) -> dict[str, Path]:
    """The files a data preset reads (``data.source``: a path, a glob, or a list of them), by name."""
    spec = data.get("source")
    patterns = [] if spec is None else [spec] if isinstance(spec, str) else [str(p) for p in spec]
    files = sorted({Path(f) for pattern in patterns for f in (glob.glob(pattern) or [pattern])
                    if Path(f).exists()})
    return {f"source {f.name}" if len(files) < 50 else f"source {f}": f for f in files}


def prepare_config(cfg: DictConfig) -> dict[str, Any]:
    """The ``data`` and ``prepare`` nodes a store records and its stage is known by, without
    ``prepare.cluster``: where the dask passes run changes no byte of the store."""
    plain = to_plain(cfg, "data", "prepare")
    plain["prepare"].pop("cluster", None)
    return plain


def prepare_identity(cfg: DictConfig) -> Identity:
    build(cfg.prepare)  # refuse bad options (prepare.split, prepare.cluster, ...) before anything runs
    return Identity(prepare_config(cfg), source_inputs(cfg.data), [RunDir(cfg.run_dir).store])


def prepare_stage(cfg: DictConfig) -> None:
    """Adapter -> ``run_dir/data/train.zarr``."""
    from simdiff.data.stores.prepare import prepare

    source = instantiate(cfg.data, _convert_="object")
    options = build(cfg.prepare)
    path = prepare(
        source, cfg.run_dir, options=options, config=prepare_config(cfg), force=cfg.force
    )
    log.info("training store: %s", path)


@dataclass(frozen=True)
class Stage:
    """A sub-command: its name, one line of help, its task, and its identity (what its outputs
    depend on: :class:`simdiff.runs.completion.Identity`)."""

    name: str
    help: str
    task: Callable[[DictConfig], None]
    identity: Callable[[DictConfig], Identity]
    ranked: bool = False  # every rank of a multi-process launch takes part (DDP, Fabric)

    def run(self, cfg: DictConfig) -> None:
        """The task, once: skipped when done with the same config and inputs, under the stage's lock.

        In the extra processes of a multi-process launch (DDP ranks > 0), a stage that is not
        ``ranked`` is left to the primary; every stage ends when the primary has finished it
        (:func:`simdiff.runs.completion.wait_for_primary`).
        """
        run = RunDir(cfg.run_dir)
        identity = self.identity(cfg)
        primary = completion.is_primary_process()
        if self.ranked or primary:
            with completion.stage(run, self.name, identity, force=bool(cfg.force)) as todo:
                if todo:
                    self.task(cfg)
        if not primary:
            completion.wait_for_primary(run, self.name, identity)


STAGES: tuple[Stage, ...] = (
    Stage("prepare", "source files or a built-in simulator -> run_dir/data/train.zarr", prepare_stage,
          prepare_identity),
    Stage("train-autoencoder", "train the autoencoder -> run_dir/autoencoder/", train_autoencoder_stage,
          autoencoder.identity, ranked=True),
    Stage("encode", "encode the training store -> run_dir/latents.zarr", encode_stage,
          autoencoder.encode_identity),
    Stage("train-diffusion", "train the latent diffusion model -> run_dir/diffusion/", train_diffusion_stage,
          diffusion.identity, ranked=True),
    Stage("generate", "ensembles and samples -> run_dir/forecast.zarr", generate_stage, generate.identity,
          ranked=True),
    Stage("augment", "synthetic samples in the source schema -> run_dir/augmented.zarr", augment_stage,
          augment.identity, ranked=True),
    Stage("certify", "a downstream model on real vs real + synthetic data -> run_dir/certificate.json",
          certify_stage, certify.identity),
    Stage("evaluate", "metrics, plots and report -> run_dir/report/", evaluate_stage, evaluate.identity),
)
MAIN_JOB = ("prepare", "train-autoencoder", "encode", "train-diffusion", "generate", "evaluate")


def run_all(cfg: DictConfig) -> None:
    """The main job: every stage in turn (each skips itself when its outputs exist with the same
    config), with the wall time of each, then a closing summary of the report."""
    by_name = {s.name: s for s in STAGES}
    times: list[tuple[str, float]] = []
    chain = [str(n) for n in cfg.main_job.stages]
    unknown = [n for n in chain if n not in by_name]
    if unknown:
        raise DataError(f"main_job.stages={chain}: {unknown} are not stages; use some of {list(MAIN_JOB)}")
    for k, name in enumerate(chain, 1):
        stage = by_name[name]
        log.info("== stage %d/%d: %s ==", k, len(chain), name)
        t0 = time.perf_counter()
        if times:
            restart_stage_clock()  # the first stage's budget counts from the process start
        stage.run(cfg)
        times.append((name, time.perf_counter() - t0))
        log.info("== stage %s done in %.1f s ==", name, times[-1][1])
    log.info("stages: %s", ", ".join(f"{n} {t:.0f} s" for n, t in times))
    summary = Path(cfg.run_dir) / "report" / "metrics.json"
    if summary.is_file():
        for line in report_summary(json.loads(summary.read_text())):
            log.info(line)
        log.info("report: %s", summary.parent / "index.html")
    log.info("run_dir: %s", cfg.run_dir)
    if cfg.main_job.get("why"):
        log.warning("the main job ends after %s: %s", chain[-1], cfg.main_job.why)
