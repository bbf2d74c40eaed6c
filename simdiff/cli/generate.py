"""``simdiff generate``: the generation mode of the config (``generate/mode=forecast|sample|
conditional``, :mod:`simdiff.runs.modes`) -> ``run_dir/forecast.zarr``, ``samples.zarr`` or
``conditional.zarr`` (or .nc); conditional draws on a voxel grid with atoms also become Gaussian
cube files in ``run_dir/cubes/`` (:mod:`simdiff.generate.cubes`).

Launched on ``generate.devices`` x ``generate.num_nodes`` processes (Lightning Fabric: GPUs, or
CPU processes); :func:`simdiff.runs.outputs.publish` shares the blocks among the ranks, resumes
a killed run and skips a complete output made with the same config.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from simdiff.base.errors import DataError
from simdiff.base.provenance import config_yaml, sha256_path
from simdiff.cli.nodes import build, plain_node, preemption_signal, ranks, sampler_spec
from simdiff.data.stores.atoms import has_atoms
from simdiff.data.stores.training import TrainingStore
from simdiff.generate.cubes import write_cubes
from simdiff.generate.output import open_output, output_attrs
from simdiff.runs.completion import Identity, trained
from simdiff.runs.layout import SUFFIX, RunDir
from simdiff.runs.models import (
    checkpoint_checksums,
    load_models,
    open_latents,
    require_checkpoints,
    residual_summary,
)
from simdiff.runs.modes import GenerateJob, Generation
from simdiff.runs.outputs import publish

log = logging.getLogger("simdiff")

#: generate keys that say how the stage runs, not what it makes (left out of the output's identity).
RUN_KEYS = ("accelerator", "devices", "num_nodes", "strategy", "batch_size", "out")


def member_ids(value: Any, key: str = "generate.members") -> list[int]:
    """``generate.members`` / ``augment.samples``: a count N (ids 0..N-1) or an explicit list of ids.

    Anything else (a count < 1, a negative or repeated id, text) is refused (DataError naming ``key``).
    """
    fix = f"give a count N >= 1 (ids 0..N-1) or a list of distinct ids >= 0, e.g. {key}=[17]"
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise DataError(f"{key}={value}: {fix}")
        return list(range(value))
    try:
        if isinstance(value, str | bytes | bool | float) or value is None:
            raise TypeError
        ids = [m if isinstance(m, int) and not isinstance(m, bool) else int(str(m)) for m in value]
    except (TypeError, ValueError):
        raise DataError(f"{key}={value!r}: {fix}") from None
    if not ids or min(ids) < 0 or len(set(ids)) != len(ids):
        raise DataError(f"{key}={ids}: {fix}")
    return ids


def check_output_node(key: str, node: DictConfig) -> None:
    """Refuse (DataError) a generating stage's ``format``/``out``/``batch_size``/``member_group``/
    ``rollout_noise`` it cannot write with."""
    fmt = node.get("format")
    if fmt not in SUFFIX:
        raise DataError(f"{key}.format={fmt!r}: use zarr or netcdf")
    out = node.get("out")
    if out and Path(str(out)).suffix not in SUFFIX.values():
        raise DataError(f"{key}.out={out}: the output must end in .zarr (a zarr store) or .nc (netCDF)")
    batch = node.get("batch_size")
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise DataError(f"{key}.batch_size={batch!r}: give a count >= 1")
    group = node.get("member_group", 1)
    if not isinstance(group, int) or isinstance(group, bool) or group < 1:
        raise DataError(f"{key}.member_group={group!r}: give a count >= 1 (draws computed together; "
                        "1: one at a time)")
    noise = node.get("rollout_noise", 0.0)
    if isinstance(noise, bool) or not isinstance(noise, int | float) or not math.isfinite(noise) or noise < 0:
        raise DataError(f"{key}.rollout_noise={noise!r}: give a number >= 0 (the inflation of a forecast's "
                        "own states, in units of the one-step tendency's std; 0: off)")


def output_path(cfg: DictConfig, mode: Any) -> Path:
    """``generate.out``, else ``run_dir/forecast.{zarr,nc}`` (``samples.*`` in sample mode)."""
    check_output_node("generate", cfg.generate)
    if cfg.generate.get("out"):
        return Path(cfg.generate.out)
    return RunDir(cfg.run_dir).output(mode.kind, str(cfg.generate.format))


def model_inputs(run: RunDir) -> dict[str, Path]:
    """What a generating stage reads: the stores and both trained models."""
    return {"training store": run.store, "latents": run.latents, **trained(run, "autoencoder", "diffusion")}


def writes_cubes(mode: Any, store: TrainingStore) -> bool:
    """Whether generate also writes cube files: a conditional mode asking for them, on a voxel
    grid whose store has atoms."""
    return bool(getattr(mode, "cubes", False)) and has_atoms(store) and store.layout.depth_dim is not None


def identity(cfg: DictConfig) -> Identity:
    """generate depends on its node (less how it runs), the seed, the stores and the models."""
    run = RunDir(cfg.run_dir)
    member_ids(cfg.generate.members)  # refuse bad values before anything runs
    preemption_signal(cfg)
    config = {"generate": plain_node(cfg.generate, drop=RUN_KEYS), "sampler": plain_node(cfg.sampler),
              "seed": int(cfg.seed)}
    mode = build(cfg.generate.mode)
    outputs = [output_path(cfg, mode)]
    if run.store.exists() and writes_cubes(mode, TrainingStore(run.store)):
        outputs.append(run.cubes)
    return Identity(config, model_inputs(run), outputs)


@dataclass
class Loaded:
    """A generating stage's ranks, models and output identity (generate and augment share it)."""

    fabric: Any
    models: Any
    checksums: dict[str, str]
    config: str  # the YAML whose sha256 the output carries

    def attrs(self, store: TrainingStore, seed: int, title: str) -> dict[str, Any]:
        """The output's global attributes (rank 0: hashes the training store)."""
        return output_attrs(
            config=self.config,
            checksums={**self.checksums, "training_store": sha256_path(store.path)[0]},
            seed=seed,
            title=title,
            command=" ".join(sys.argv),
        )


def launch(cfg: DictConfig, key: str, run_keys: tuple[str, ...]) -> Loaded:
    """Launch the ranks of stage ``key`` (generate or augment) and load the run's models on them."""
    node = cfg[key]
    run = RunDir(cfg.run_dir)
    latents = open_latents(run)  # fail before launching ranks
    require_checkpoints(run)
    fabric = ranks(node)
    models = load_models(
        run, latents, fabric.device, int(node.decoder_noise_samples) if node.decoder_noise else 0
    )
    checksums = checkpoint_checksums(run)
    config = config_yaml(
        {key: plain_node(node, drop=run_keys), "sampler": plain_node(cfg.sampler), "seed": int(cfg.seed),
         "checkpoints": checksums}
    )
    return Loaded(fabric, models, checksums, config)


def generate_stage(cfg: DictConfig) -> None:
    """Generate the ensemble (or samples) and publish it."""
    gen = cfg.generate
    run = RunDir(cfg.run_dir)
    mode = build(gen.mode)
    target = output_path(cfg, mode)
    loaded = launch(cfg, "generate", RUN_KEYS)
    store, models = TrainingStore(run.store), loaded.models
    generation = Generation(
        store,
        open_latents(run),
        models,
        sampler_spec(cfg, gen),
        member_ids(gen.members),
        int(cfg.seed),
        int(gen.batch_size),
        dict(gen.get("chunks") or {}),
    )

    def attrs() -> dict[str, Any]:
        out = loaded.attrs(store, int(cfg.seed), f"simdiff {mode.kind} from {store.path}")
        if models.decoder.residual is not None:
            out["simdiff_decoder_residual_rms_over_std"] = json.dumps(
                residual_summary(models.decoder.residual, store)
            )
        return out

    publish(
        GenerateJob(mode, generation, attrs),
        target,
        config=loaded.config,
        ranks=loaded.fabric,
        force=bool(cfg.force),
        preemption=preemption_signal(cfg),
    )
    if loaded.fabric.global_rank == 0 and writes_cubes(mode, store):
        with open_output(target) as out:
            files = write_cubes(out, run.cubes, store.attrs["geometry"])
        log.info("generate: wrote %d cube files to %s", len(files), run.cubes)
