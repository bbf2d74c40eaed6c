"""The ``augment`` stage: trained models -> ``run_dir/augmented.zarr`` (or .nc), synthetic samples
in the source's schema, filtered by physical bounds (:mod:`simdiff.generate.augment`).

Rows. The store holds ``len(split)`` real samples first when ``augment.merge`` (de-normalised
from the training store, ``synthetic = False``), then one row per synthetic id. A synthetic row
is drawn in rounds: a candidate the filter rejects is redrawn with the next round's keys, up to
``augment.max_rounds`` candidates; rejection counts per reason go to the log and, summed, to
the ``simdiff_rejected`` attribute.

Ranks, resume, publish: as ``generate`` (Lightning Fabric). Rank 0 computes the training range
and creates the partial store beside the target; every rank writes its own share of the
unwritten rows; rank 0 publishes by rename once all are written. A killed run re-run with the
same command draws only the missing rows. Rows still rejected after ``max_rounds`` stop the run
with a message (the rows written are kept: re-run with a larger ``augment.max_rounds``, which
resumes, or a wider filter, which starts over).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from simdiff.base.errors import DataError
from simdiff.base.provenance import config_yaml, sha256_path
from simdiff.cli.diffusion import open_latents
from simdiff.cli.generate import (
    CONDITIONS,
    _same_config,
    checkpoint_checksums,
    load_models,
    member_ids,
    require_checkpoints,
)
from simdiff.data.loading.loader import window_targets
from simdiff.data.stores.latents import LatentStore
from simdiff.data.stores.training import SPLITS, TrainingStore
from simdiff.generate.augment import (
    REASONS,
    augment_template,
    choose_sources,
    draw_candidates,
    open_rows,
    physical,
    tally_rejections,
    training_range,
    write_rows,
)

log = logging.getLogger("simdiff")

#: Keys that say how the stage runs, not what it makes (left out of the config hash, so a
#: re-run with more rounds or other devices resumes).
RUN_KEYS = ("accelerator", "devices", "num_nodes", "strategy", "batch_size", "out", "max_rounds")


def output_path(cfg: DictConfig) -> Path:
    """``augment.out``, else ``run_dir/augmented.{zarr,nc}``."""
    if cfg.augment.get("out"):
        return Path(cfg.augment.out)
    return Path(cfg.run_dir) / f"augmented.{'nc' if cfg.augment.format == 'netcdf' else 'zarr'}"


def source_pool(latents: TrainingStore, split: str, previous: int) -> np.ndarray:
    """The real samples a draw may start from: indices into the store.

    A forecaster's candidates are states ``t`` whose ``previous`` states and target ``t + 1`` lie
    in one block of ``split`` (the draw takes the conditions of ``t + 1``); an unconditional
    model's are all samples of ``split``.
    """
    if split not in SPLITS:
        raise DataError(f"augment.split={split!r} is not one of {sorted(SPLITS)}")
    if previous:
        pool = window_targets(latents.array("split"), latents.array("block"), SPLITS[split], previous + 1) - 1
    else:
        pool = latents.indices(split)
    if not len(pool):
        raise DataError(f"{latents.path}: the {split!r} split has no sample to condition draws on "
                        f"(a forecaster needs {previous} previous state(s) and the next one in one block); "
                        "choose another augment.split")
    return pool.astype(np.int64)


def condition_templates(latents: TrainingStore, names: list[str]) -> dict[str, xr.DataArray]:
    """One sample's value of each condition, with dims and coords (for the output template)."""
    ds = latents.dataset()
    sdim = latents.layout.sample_dim
    return {n: ds[n].isel({sdim: 0}, drop=True).load() for n in names}


def augment_stage(cfg: DictConfig) -> None:
    """Draw, filter and publish the augmented dataset; see the module docstring."""
    from lightning.fabric import Fabric
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from simdiff.diffusion.schedules import karras_sigmas
    from simdiff.generate.output import create_partial, finalize, is_complete, output_attrs, partial_path
    from simdiff.generate.rollout import SamplerSpec, member_batches

    aug = cfg.augment
    run_dir = Path(cfg.run_dir)
    target = output_path(cfg)
    if aug.format not in ("zarr", "netcdf"):
        raise DataError(f"augment.format={aug.format!r}: use zarr or netcdf")
    store = TrainingStore(run_dir / "data" / "train.zarr")
    latents = open_latents(run_dir)  # fail before launching ranks
    require_checkpoints(run_dir)
    filt = instantiate(aug.filter)
    filt.check_variables(store.variables, str(store.path))
    fabric = Fabric(accelerator=aug.accelerator, devices=aug.devices, num_nodes=aug.num_nodes,
                    strategy=aug.strategy, precision="32-true")
    fabric.launch()
    model, decoder, dm_cfg = load_models(
        run_dir, latents, fabric.device, int(aug.decoder_noise_samples) if aug.decoder_noise else 0
    )
    previous = int(dm_cfg["conditioning"]["previous"])
    ids = member_ids(aug.samples)
    used = [n for n in CONDITIONS if latents.has(n) and dm_cfg["conditioning"].get(n)]
    pool = source_pool(latents, str(aug.split), previous) if (previous or used) else np.zeros(0, np.int64)
    real = store.indices(str(aug.split)) if aug.merge else np.zeros(0, np.int64)
    checksums = checkpoint_checksums(run_dir)
    plain = OmegaConf.to_container(aug, resolve=True)
    for key in RUN_KEYS:
        plain.pop(key, None)
    config = config_yaml({"augment": plain, "seed": int(cfg.seed), "checkpoints": checksums})
    template = augment_template(store, len(real), ids, condition_templates(latents, used))
    if fabric.global_rank == 0:
        if is_complete(target) and _same_config(target, config) and not cfg.force:
            log.info("augment: %s is complete with the same config; skipping", target)
            fabric.barrier()
            return
        bounds = training_range(store, "train")
        store_sha = sha256_path(store.path)[0]
        attrs = output_attrs(config=config, checksums={**checksums, "training_store": store_sha},
                             seed=int(cfg.seed), title=f"simdiff augment of {store.path}",
                             command=" ".join(sys.argv))
        attrs["simdiff_synthetic"] = 1
        attrs["simdiff_filter"] = json.dumps({
            **filt.spec(), "bounds_split": "train",
            "bounds": {str(c): [float(bounds["minimum"].sel(channel=c)),
                                float(bounds["maximum"].sel(channel=c))] for c in bounds["channel"].values}})
        create_partial(target, template, attrs, force=bool(cfg.force))
    fabric.barrier()
    if is_complete(target) and _same_config(target, config) and not cfg.force:
        return
    import zarr

    filter_attrs = json.loads(zarr.open_group(str(partial_path(target)), mode="r").attrs["simdiff_filter"])
    bounds = xr.Dataset({"minimum": ("channel", [filter_attrs["bounds"][v][0] for v in store.variables]),
                         "maximum": ("channel", [filter_attrs["bounds"][v][1] for v in store.variables])},
                        coords={"channel": store.variables})
    todo = open_rows(target)
    fabric.barrier()  # every rank has read the same list before any rank writes
    n_real = len(real)
    batches = [("real", b) for b in member_batches([p for p in todo if p < n_real], aug.batch_size)]
    batches += [("synthetic", b) for b in member_batches([p for p in todo if p >= n_real], aug.batch_size)]
    mine = batches[fabric.global_rank :: fabric.world_size]
    sigmas = karras_sigmas(int(aug.steps), float(aug.sigma_min), float(aug.sigma_max), float(aug.rho))
    spec = SamplerSpec(instantiate(aug.sampler), sigmas, float(aug.guidance), tuple(aug.guided),
                       bool(aug.batch_invariant))
    ctx = _Context(store=store, latents=latents, used=used, previous=previous, pool=pool, seed=int(cfg.seed),
                   ids=ids, n_real=n_real, real=real, filt=filt, bounds=bounds)
    log.info("augment: %d rows to write (%d real, %d synthetic; %d done before), %d on rank %d of %d, to %s",
             len(todo), sum(p < n_real for p in todo), sum(p >= n_real for p in todo),
             n_real + len(ids) - len(todo), sum(len(b) for _, b in mine), fabric.global_rank,
             fabric.world_size, target)
    rejected = dict.fromkeys(REASONS, 0)
    failed: list[int] = []
    t0 = time.perf_counter()
    with Progress(TextColumn("augment"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  disable=fabric.global_rank != 0) as bar:
        task = bar.add_task("rows", total=sum(len(b) for _, b in mine))
        for kind, rows in mine:
            if kind == "real":
                write_rows(target, _real_rows(ctx, rows))
                bar.advance(task, len(rows))
                continue
            for _ in _synthetic_rows(ctx, rows, model, decoder, spec, int(aug.max_rounds), target,
                                     rejected, failed):
                bar.advance(task, 1)
    wall = time.perf_counter() - t0
    log.info("augment: rank %d wrote %d rows in %.1f s; rejected candidates %s", fabric.global_rank,
             sum(len(b) for _, b in mine) - len(failed), wall,
             ", ".join(f"{k} {v}" for k, v in rejected.items()))
    fabric.barrier()
    if fabric.global_rank != 0:
        return
    left = open_rows(target)
    if left:
        raise DataError(
            f"{partial_path(target)}: {len(left)} synthetic sample(s) (ids "
            f"{[ids[p - n_real] for p in left[:10]]}) failed the physical-bounds filter in all "
            f"{aug.max_rounds} rounds (this rank's rejections: {rejected}). Fix: re-run with a larger "
            "augment.max_rounds (resumes the rows written), or widen augment.filter.range_margin "
            "(starts over); a model that needs many rounds may be under-trained"
        )
    tally = tally_rejections(target)
    log.info("augment: filter rejected %d candidate(s) in all (%s)", tally["total"],
             ", ".join(f"{k} {v}" for k, v in tally.items() if k != "total"))
    finalize(target, force=True)
    log.info("augment: published %s (%d real + %d synthetic samples)", target, n_real, len(ids))


@dataclass(frozen=True)
class _Context:
    """What the row writers share (one stage run)."""

    store: TrainingStore
    latents: LatentStore
    used: list[str]
    previous: int
    pool: np.ndarray
    seed: int
    ids: list[int]
    n_real: int
    real: np.ndarray
    filt: Any
    bounds: xr.Dataset


def _conditions_at(ctx: _Context, index: np.ndarray) -> dict[str, np.ndarray]:
    return {n: np.asarray(ctx.latents.array(n)[index]) for n in ctx.used}


def _real_rows(ctx: _Context, rows: list[int]) -> dict[int, dict[str, Any]]:
    """Merged real samples: the training store's fields in physical units, with their conditions."""
    index = ctx.real[np.asarray(rows)]
    fields = np.stack([np.asarray(ctx.store.data[int(i)]) for i in index])
    phys = physical(fields, ctx.store)
    conds = _conditions_at(ctx, index)
    out = {}
    for j, pos in enumerate(rows):
        values: dict[str, Any] = {v: phys[v].values[j] for v in ctx.store.variables}
        values.update(synthetic=False, sample_id=-1, source_index=int(index[j]), draws=0)
        values.update({n: c[j] for n, c in conds.items()})
        out[pos] = values
    return out


def _synthetic_rows(ctx, rows, model, decoder, spec, max_rounds, target, rejected, failed):
    """Draw, filter and write the synthetic rows ``rows``; yields once per row settled."""
    sdim = ctx.store.layout.sample_dim
    mask = ctx.store.dataset()["mask"].load()
    transforms = ctx.store.transforms
    lat = ctx.latents.data
    counts = {p: np.zeros(len(REASONS), dtype=np.int32) for p in rows}
    pending = list(rows)
    for r in range(max_rounds):
        if not pending:
            break
        ids = [ctx.ids[p - ctx.n_real] for p in pending]
        sources = choose_sources(ctx.pool, ids, r, ctx.seed)
        window = None
        if ctx.previous:
            states = [np.asarray(lat[s - ctx.previous + 1 : s + 1]) for s in sources]
            window = torch.from_numpy(np.stack(states))
        cond_index = sources + 1 if ctx.previous else sources
        conds = _conditions_at(ctx, cond_index) if ctx.used else {}
        fields = draw_candidates(model, decoder, spec, latent_shape=tuple(lat.shape[1:]), window=window,
                                 conditions={n: torch.from_numpy(v) for n, v in conds.items()},
                                 ids=ids, round_=r, seed=ctx.seed)
        phys = physical(fields, ctx.store)
        bad = ctx.filt.reasons(phys, ctx.bounds, mask, transforms, sdim).values
        keep: dict[int, dict[str, Any]] = {}
        still = []
        for j, pos in enumerate(pending):
            if bad[j].any():
                counts[pos] += bad[j]
                for k, reason in enumerate(REASONS):
                    rejected[reason] += int(bad[j, k])
                still.append(pos)
                continue
            values: dict[str, Any] = {v: phys[v].values[j] for v in ctx.store.variables}
            values.update(synthetic=True, sample_id=ids[j], source_index=int(sources[j]), draws=r + 1,
                          rejections=counts[pos])
            values.update({n: c[j] for n, c in conds.items()})
            keep[pos] = values
        write_rows(target, keep)
        if still:
            why = ", ".join(f"{k} {int(bad[:, i].sum())}" for i, k in enumerate(REASONS) if bad[:, i].any())
            log.info("augment: round %d: %d of %d candidate(s) rejected (%s)", r + 1, len(still),
                     len(pending), why)
        yield from keep
        pending = still
    if pending:
        write_rows(target, {p: {"rejections": counts[p], "draws": max_rounds} for p in pending}, done=False)
        failed.extend(pending)
