"""The stage task functions behind each sub-command, and the chain that ``simdiff run`` walks."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass

from hydra.utils import instantiate
from omegaconf import DictConfig

from simdiff.cli.app import EXIT_NOT_BUILT, to_plain
from simdiff.cli.autoencoder import encode_stage, train_autoencoder_stage

log = logging.getLogger("simdiff")


def prepare_stage(cfg: DictConfig) -> None:
    """Adapter -> ``run_dir/data/train.zarr``."""
    from simdiff.data.prepare import prepare

    source = instantiate(cfg.data, _convert_="object")
    options = instantiate(cfg.prepare)
    path = prepare(
        source, cfg.run_dir, options=options, config=to_plain(cfg, "data", "prepare"), force=cfg.force
    )
    log.info("training store: %s", path)


@dataclass(frozen=True)
class Stage:
    """A sub-command: its name, one line of help, and its task (None until it is built)."""

    name: str
    help: str
    task: Callable[[DictConfig], None] | None = None
    issue: str = ""


STAGES: tuple[Stage, ...] = (
    Stage("prepare", "source files or a built-in simulator -> run_dir/data/train.zarr", prepare_stage),
    Stage("train-autoencoder", "train the autoencoder -> run_dir/autoencoder/", train_autoencoder_stage),
    Stage("encode", "encode the training store -> run_dir/latents.zarr", encode_stage),
    Stage(
        "train-diffusion",
        "train the latent diffusion model -> run_dir/diffusion/",
        issue="the conditional latent diffusion issue",
    ),
    Stage("generate", "ensembles and samples -> run_dir/forecast.zarr", issue="the generation issue"),
    Stage(
        "augment",
        "synthetic samples in the source schema -> run_dir/augmented.zarr",
        issue="the generation issue",
    ),
    Stage("evaluate", "metrics, plots and report -> run_dir/report/", issue="the evaluation issue"),
)
MAIN_JOB = ("prepare", "train-autoencoder", "encode", "train-diffusion", "generate", "evaluate")


def not_built(stage: Stage) -> Callable[[DictConfig], None]:
    """A task that says clearly that ``stage`` is not built yet and exits non-zero."""

    def task(cfg: DictConfig) -> None:
        print(
            f"simdiff {stage.name}: this stage is not built yet (planned in {stage.issue}). "
            f"Stages available now: {', '.join(s.name for s in STAGES if s.task)}.",
            file=sys.stderr,
        )
        sys.exit(EXIT_NOT_BUILT)

    return task


def run_all(cfg: DictConfig) -> None:
    """The main job: every stage in turn; stages not built yet are listed at the end."""
    by_name = {s.name: s for s in STAGES}
    pending = []
    for name in MAIN_JOB:
        stage = by_name[name]
        if stage.task is None:
            pending.append(stage)
            continue
        log.info("== stage %s ==", name)
        stage.task(cfg)
    log.info("run_dir: %s", cfg.run_dir)
    if pending:
        log.warning("stages not built yet, skipped: %s", ", ".join(f"{s.name} ({s.issue})" for s in pending))
