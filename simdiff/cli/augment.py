"""``simdiff augment``: trained models -> ``run_dir/augmented.zarr`` (or .nc), synthetic samples in
the source's schema, filtered by physical bounds (:mod:`simdiff.runs.augment`).

Ranks, resume, publish: :func:`simdiff.runs.outputs.publish`, as ``generate``. Rank 0 computes
the training range once and stores it with the filter in the partial store's attributes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from simdiff.base.errors import DataError
from simdiff.cli.generate import check_output_node, launch, member_ids, model_inputs
from simdiff.cli.nodes import build, plain_node, preemption_signal, sampler_spec
from simdiff.data.stores.training import SPLITS, TrainingStore
from simdiff.generate.augment import training_range
from simdiff.runs.augment import AugmentJob
from simdiff.runs.completion import Identity
from simdiff.runs.layout import RunDir
from simdiff.runs.models import open_latents
from simdiff.runs.outputs import publish

#: Keys that say how the stage runs, not what it makes (left out of the config hash, so a
#: re-run with more rounds or other devices resumes).
RUN_KEYS = ("accelerator", "devices", "num_nodes", "strategy", "batch_size", "out", "max_rounds")


def output_path(cfg: DictConfig) -> Path:
    """``augment.out``, else ``run_dir/augmented.{zarr,nc}``."""
    check_output_node("augment", cfg.augment)
    if cfg.augment.get("out"):
        return Path(cfg.augment.out)
    return RunDir(cfg.run_dir).output("augmented", str(cfg.augment.format))


def check_values(aug: DictConfig) -> None:
    """Refuse (DataError) bad counts and splits before anything runs."""
    member_ids(aug.samples, "augment.samples")
    if aug.split not in SPLITS:
        raise DataError(f"augment.split={aug.split!r} is not one of {sorted(SPLITS)}")
    rounds = aug.max_rounds
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise DataError(f"augment.max_rounds={rounds!r}: give a count >= 1 (draws per sample at most)")
    per = aug.draws_per_source
    if not isinstance(per, int) or isinstance(per, bool) or per < 1:
        raise DataError(f"augment.draws_per_source={per!r}: give a count >= 1 (draws per real state)")


def identity(cfg: DictConfig) -> Identity:
    """augment depends on its node (less how it runs), the seed, the stores and the models."""
    run = RunDir(cfg.run_dir)
    check_values(cfg.augment)
    preemption_signal(cfg)  # refuse a bad preemption.signals before anything runs
    config = {"augment": plain_node(cfg.augment, drop=RUN_KEYS), "sampler": plain_node(cfg.sampler),
              "seed": int(cfg.seed)}
    return Identity(config, model_inputs(run), [output_path(cfg)])


def augment_stage(cfg: DictConfig) -> None:
    """Draw, filter and publish the augmented dataset."""
    aug = cfg.augment
    run = RunDir(cfg.run_dir)
    target = output_path(cfg)
    store = TrainingStore(run.store)
    filt = build(aug.filter)
    filt.check_variables(store.variables, str(store.path))
    loaded = launch(cfg, "augment", RUN_KEYS)

    def attrs() -> dict[str, Any]:
        bounds = training_range(store, "train")
        out = loaded.attrs(store, int(cfg.seed), f"simdiff augment of {store.path}")
        out["simdiff_synthetic"] = 1
        # a forecaster's draw is x' ~ p(x_{t+1} | x_t), x_t the sample source_index names: prepare
        # pairs them (simdiff.data.stores.synthetic)
        out["simdiff_draws"] = "next_state" if loaded.models.previous else "state"
        out["simdiff_filter"] = json.dumps(
            {
                **filt.spec(),
                "bounds_split": "train",
                "bounds": {
                    str(c): [float(bounds["minimum"].sel(channel=c)), float(bounds["maximum"].sel(channel=c))]
                    for c in bounds["channel"].values
                },
            }
        )
        return out

    job = AugmentJob(
        store,
        open_latents(run),
        loaded.models,
        sampler_spec(cfg, aug),
        filt,
        member_ids(aug.samples),
        str(aug.split),
        bool(aug.merge),
        int(cfg.seed),
        int(aug.max_rounds),
        int(aug.batch_size),
        attrs,
        per_source=int(aug.draws_per_source),
    )
    publish(job, target, config=loaded.config, ranks=loaded.fabric, force=bool(cfg.force),
            preemption=preemption_signal(cfg))
