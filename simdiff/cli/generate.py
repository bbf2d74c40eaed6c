"""The ``generate`` stage: trained autoencoder + diffusion model -> ``run_dir/forecast.zarr`` (or .nc).

``generate.mode=forecast``: for each init time of a split (every ``init_every``-th valid one, at
most ``max_inits``, or ``init_indices``), ``members`` members rolled out ``lead_steps`` steps
autoregressively in latent space, decoded per step. ``generate.mode=sample``: ``members`` draws
(unconditional, or with the labels/covariates of real samples of the split) -> ``samples.zarr``.

Ranks. Launched on ``generate.devices`` x ``generate.num_nodes`` processes (Lightning Fabric:
GPUs, or CPU processes), rank 0 creates the partial store, every rank generates and writes its
own share of the missing (member, init) blocks (no gather), and rank 0 publishes the store once
all are written. A killed run re-run with the same command generates only the missing blocks;
a complete output with the same config is skipped.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from simdiff.base.errors import DataError
from simdiff.base.provenance import config_yaml, sha256_path
from simdiff.cli.autoencoder import AE_DIR, build_net
from simdiff.cli.autoencoder import FINAL as AE_FINAL
from simdiff.cli.diffusion import DM_DIR, build_model, open_latents, static_fields
from simdiff.cli.diffusion import FINAL as DM_FINAL
from simdiff.cli.stage_dir import read_config
from simdiff.data.loading.loader import contiguous_runs, window_targets
from simdiff.data.stores.latents import LatentStore
from simdiff.data.stores.stats import denormalise
from simdiff.data.stores.training import SPLITS, TrainingStore
from simdiff.generate.residual import ResidualModel

log = logging.getLogger("simdiff")

CONDITIONS = ("time_features", "covariates", "label")


def output_path(cfg: DictConfig) -> Path:
    """``generate.out``, else ``run_dir/forecast.{zarr,nc}`` (``samples.*`` in sample mode)."""
    if cfg.generate.get("out"):
        return Path(cfg.generate.out)
    stem = "forecast" if cfg.generate.mode == "forecast" else "samples"
    return Path(cfg.run_dir) / f"{stem}.{'nc' if cfg.generate.format == 'netcdf' else 'zarr'}"


def member_ids(value: Any) -> list[int]:
    """``generate.members``: a count N (ids 0..N-1) or an explicit list of ids."""
    if isinstance(value, int):
        return list(range(value))
    return [int(m) for m in value]


def init_indices(gen: Any, latents: TrainingStore, window: int) -> list[int]:
    """The forecast inits: ``init_indices`` if given, else every ``init_every``-th valid init of ``split``.

    A valid init ``t`` has its ``window - 1`` conditioning states ``t - window + 2 .. t`` and its
    ``lead_steps`` verifying states ``t + 1 .. t + lead_steps`` in one block and the split, so
    every lead has its conditions (time features) and a truth to be scored against.
    """
    leads = int(gen.lead_steps)
    if gen.get("init_indices"):
        return [int(i) for i in gen.init_indices]
    if gen.split not in SPLITS:
        raise DataError(f"generate.split={gen.split!r} is not one of {sorted(SPLITS)}")
    span = max(window - 1, 1) + leads
    valid = window_targets(latents.array("split"), latents.array("block"), SPLITS[gen.split], span) - leads
    chosen = valid[:: max(int(gen.init_every), 1)][: int(gen.max_inits)]
    if not len(chosen):
        longest = _longest_run(latents.array("split"), latents.array("block"), SPLITS[gen.split])
        raise DataError(
            f"{latents.path}: the {gen.split!r} split has no init with {max(window - 1, 1)} state(s) "
            f"and generate.lead_steps={leads} later states in one contiguous block (its longest run "
            f"is {longest} samples); set generate.lead_steps <= {max(longest - max(window - 1, 1), 0)}, "
            f"choose another generate.split, or pass generate.init_indices"
        )
    return [int(i) for i in chosen]


def _longest_run(split: np.ndarray, block: np.ndarray, code: int) -> int:
    """The longest run of consecutive samples of one block in split ``code``."""
    lengths = np.bincount(contiguous_runs(split, block)[np.asarray(split) == code])
    return int(lengths.max()) if lengths.size else 0


def _checkpoints(run_dir: Path) -> dict[str, tuple[Path, str]]:
    """name -> (final checkpoint, the stage that writes it)."""
    return {"autoencoder": (run_dir / AE_DIR / AE_FINAL, "train-autoencoder"),
            "diffusion": (run_dir / DM_DIR / DM_FINAL, "train-diffusion")}


def require_checkpoints(run_dir: Path) -> None:
    """Fail with the stage to run when the autoencoder or the diffusion model is not trained."""
    for path, stage in _checkpoints(run_dir).values():
        if not path.is_file():
            raise DataError(f"{path}: missing; run `simdiff {stage} run_dir={run_dir}` first")


def checkpoint_checksums(run_dir: Path) -> dict[str, str]:
    """sha256 of the autoencoder's and the diffusion model's final checkpoints (provenance)."""
    return {name: sha256_path(path)[0] for name, (path, _) in _checkpoints(run_dir).items()}


def load_models(
    run_dir: Path, latents: LatentStore, device: torch.device, residual_samples: int = 0
) -> tuple[Any, Any, dict[str, Any]]:
    """The EMA diffusion model, the latent decoder and the diffusion config they were trained with.

    ``residual_samples > 0`` gives the decoder a residual model fitted on that many held-out
    samples (:func:`fit_decoder_residual`), so decoded members are samples of p(x | z).
    """
    from simdiff.generate.rollout import LatentDecoder
    from simdiff.lit.autoencoder import load_ema_weights
    from simdiff.lit.diffusion import load_ema_model

    require_checkpoints(run_dir)
    ae_saved = read_config(run_dir / AE_DIR / "config.yaml")
    ae = load_ema_weights(
        build_net(ae_saved["autoencoder"], ae_saved["data_signature"]),
        run_dir / AE_DIR / AE_FINAL,
        float(ae_saved["autoencoder"]["module"]["ema_decay"]),
    )
    dm_saved = read_config(run_dir / DM_DIR / "config.yaml")
    dm_cfg = dm_saved["diffusion"]
    from simdiff.data.loading.datamodule import SimdiffDataModule

    sizes = SimdiffDataModule(latents.path).condition_sizes
    n = len(dm_saved["latent_signature"]["channels"])
    static = static_fields(latents, list(dm_cfg["conditioning"].get("static") or []))
    model = build_model(
        dm_cfg, dm_saved["latent_signature"], sizes, static, torch.ones(n) if dm_cfg["residual"] else None
    )
    model = load_ema_model(model, run_dir / DM_DIR / DM_FINAL, float(dm_cfg["module"]["ema_decay"]))
    decoder = LatentDecoder(
        ae.to(device),
        torch.as_tensor(np.asarray(latents.shift, dtype=np.float32)),
        torch.as_tensor(np.asarray(latents.scale, dtype=np.float32)),
        tuple(ae_saved["data_signature"]["spatial_shape"]),
    )
    if residual_samples > 0:
        store = TrainingStore(run_dir / "data" / "train.zarr")
        decoder.residual = fit_decoder_residual(decoder, latents, store, residual_samples)
    return model.to(device), decoder, dm_cfg


def fit_decoder_residual(decoder: Any, latents: LatentStore, store: TrainingStore, samples: int,
                         batch_size: int = 16) -> ResidualModel:
    """The residual model of ``decoder`` fitted on ``x`` and ``D(E(x))`` of held-out samples.

    Uses up to ``samples`` samples of the val split, evenly spaced (the train split, with a
    warning, when val is empty), decoded from their stored latents exactly as members are. The
    spectral axes are y/x, plus the depth axis on voxel grids (a store with a lattice).
    """
    from simdiff.generate.residual import ResidualFit

    split, idx = "val", store.indices("val")
    if not len(idx):
        split, idx = "train", store.indices("train")
        log.warning("the val split of %s is empty; the decoder residual model is fitted on train "
                    "samples, which underestimates it", store.path)
    if len(idx) < 2:
        raise DataError(f"{store.path}: {len(idx)} {split} sample(s); the decoder residual model needs at "
                        "least 2: set generate.decoder_noise=false")
    idx = np.unique(idx[np.linspace(0, len(idx) - 1, min(int(samples), len(idx))).round().astype(int)])
    geometry = store.geometry()
    dims = [store.layout.y_dim, store.layout.x_dim]
    if geometry.lattice is not None and store.layout.depth_dim:
        dims.insert(0, store.layout.depth_dim)  # a voxel grid: depth is a spatial axis too
    fit = ResidualFit(store.array("mask"), [geometry.is_periodic(d) for d in dims])
    device = next(decoder.net.parameters()).device
    for start in range(0, len(idx), batch_size):
        rows = idx[start : start + batch_size]
        z = torch.from_numpy(np.asarray(latents.data.oindex[rows], dtype=np.float32)).to(device)
        x = np.asarray(store.data.oindex[rows], dtype=np.float32)
        d = decoder(z).float().cpu().numpy()
        fit.add(x - d, d)
    model = fit.finish()
    log.info("decoder residual model fitted on %d %s samples, noise rms/std %s", len(idx), split,
             residual_summary(model, store))
    return model


def residual_summary(model: ResidualModel, store: TrainingStore) -> dict[str, float]:
    """``VAR[@LEVEL]`` (the report's keys) -> the modelled residual rms in units of the variable's std."""
    from simdiff.evaluate.plots import format_level

    rms = model.rms()
    depth = store.layout.depth_dim
    levels = store.array(depth) if depth and rms.ndim > 1 else None
    out: dict[str, float] = {}
    for c, name in enumerate(store.variables):
        if levels is None:
            out[name] = round(float(np.mean(rms[c])), 4)
        else:
            for j, lev in enumerate(levels):
                out[f"{name}@{format_level(lev)}"] = round(float(rms[c][j]), 4)
    return out


def _physical(
    fields: np.ndarray, members: list[int], dims: tuple[str, ...], source: xr.Dataset
) -> xr.Dataset:
    """Normalised fields (B, [L,] C, [D], Y, X) -> physical Dataset per variable, masked cells NaN."""
    data = xr.DataArray(fields, dims=dims, coords={"channel": source["channel"]})
    ds = xr.Dataset(
        {"data": data, "mean": source["mean"], "std": source["std"], "mask": source["mask"]},
        attrs=source.attrs,
    )
    return denormalise(ds).assign_coords(realization=("realization", np.asarray(members, dtype=np.int32)))


def generate_stage(cfg: DictConfig) -> None:
    """Generate the ensemble (or samples) and publish it; see the module docstring."""
    from lightning.fabric import Fabric
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from simdiff.diffusion.schedules import karras_sigmas
    from simdiff.generate.output import (
        create_partial,
        finalize,
        is_complete,
        missing,
        output_attrs,
        write_block,
    )
    from simdiff.generate.rollout import SamplerSpec, draw_samples, member_batches, rollout
    from simdiff.generate.template import forecast_template, sample_template

    gen = cfg.generate
    run_dir = Path(cfg.run_dir)
    target = output_path(cfg)
    if gen.mode not in ("forecast", "sample"):
        raise DataError(f"generate.mode={gen.mode!r}: use forecast or sample")
    fabric = Fabric(
        accelerator=gen.accelerator,
        devices=gen.devices,
        num_nodes=gen.num_nodes,
        strategy=gen.strategy,
        precision="32-true",
    )
    fabric.launch()
    store = TrainingStore(run_dir / "data" / "train.zarr")
    latents = open_latents(run_dir)
    model, decoder, dm_cfg = load_models(
        run_dir, latents, fabric.device, int(gen.decoder_noise_samples) if gen.decoder_noise else 0
    )
    previous = int(dm_cfg["conditioning"]["previous"])
    members = member_ids(gen.members)
    if gen.mode == "sample" and previous:
        raise DataError(
            f"{run_dir / DM_DIR}: the model forecasts from {previous} previous state(s), so it "
            "cannot draw samples without an initial state; use generate.mode=forecast, or train "
            "an unconditional model (diffusion.conditioning.previous=0)"
        )
    checksums = checkpoint_checksums(run_dir)
    plain = OmegaConf.to_container(gen, resolve=True)
    for key in ("accelerator", "devices", "num_nodes", "strategy", "batch_size", "out"):
        plain.pop(key, None)  # how it runs, not what it makes
    config = config_yaml({"generate": plain, "seed": int(cfg.seed), "checkpoints": checksums})
    if gen.mode == "forecast":
        inits = init_indices(gen, latents, previous + 1)
        template = forecast_template(
            store,
            members,
            inits,
            list(range(1, int(gen.lead_steps) + 1)),
            chunks=dict(gen.get("chunks") or {}),
        )
    else:
        inits = []
        template = sample_template(store, members, chunks=dict(gen.get("chunks") or {}))
    if fabric.global_rank == 0:
        if is_complete(target) and _same_config(target, config) and not cfg.force:
            log.info("generate: %s is complete with the same config; skipping", target)
            fabric.barrier()
            return
        store_sha = sha256_path(store.path)[0]  # whole store, once, on rank 0
        attrs = output_attrs(
            config=config,
            checksums={**checksums, "training_store": store_sha},
            seed=int(cfg.seed),
            title=f"simdiff {gen.mode} from {store.path}",
            command=" ".join(sys.argv),
        )
        if decoder.residual is not None:
            rms = residual_summary(decoder.residual, store)
            attrs["simdiff_decoder_residual_rms_over_std"] = json.dumps(rms)
        create_partial(target, template, attrs, force=bool(cfg.force))
    fabric.barrier()
    if is_complete(target) and _same_config(target, config) and not cfg.force:
        return
    todo = missing(target)
    fabric.barrier()  # every rank has read the same list before any rank writes
    by_init: dict[int, list[int]] = {}
    for m, i in todo:
        by_init.setdefault(i, []).append(m)
    blocks = [(i, batch) for i, ms in sorted(by_init.items()) for batch in member_batches(ms, gen.batch_size)]
    mine = blocks[fabric.global_rank :: fabric.world_size]
    sampler = instantiate(gen.sampler)
    spec = SamplerSpec(
        sampler,
        karras_sigmas(int(gen.steps), float(gen.sigma_min), float(gen.sigma_max), float(gen.rho)),
        float(gen.guidance),
        tuple(gen.guided),
        bool(gen.batch_invariant),
    )
    source = store.dataset()
    sdims = tuple(store.layout.spatial_dims)
    lat_data = latents.data
    cond_arrays = _condition_arrays(latents, dm_cfg)  # read once, not per block
    pool = latents.indices(gen.split) if gen.mode == "sample" else None
    log.info(
        "generate: %d (member, init) blocks to write (%d done before), %d on this rank of %d, to %s",
        len(todo),
        len(members) * max(len(inits), 1) - len(todo),
        sum(len(b) for _, b in mine),
        fabric.world_size,
        target,
    )
    done = 0
    t0 = time.perf_counter()
    with Progress(
        TextColumn("generate"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=fabric.global_rank != 0,
    ) as bar:
        task = bar.add_task("members", total=sum(len(b) for _, b in mine))
        for init, batch in mine:
            if gen.mode == "forecast":
                window = (
                    torch.from_numpy(np.asarray(lat_data[init - previous + 1 : init + 1]))
                    if previous
                    else torch.zeros((0, *lat_data.shape[1:]))
                )
                conds = _lead_conditions(cond_arrays, latents.path, init, int(gen.lead_steps))
                fields, _ = rollout(
                    model,
                    decoder,
                    spec,
                    window=window,
                    conditions=conds,
                    members=batch,
                    init=init,
                    leads=int(gen.lead_steps),
                    seed=int(cfg.seed),
                )
                block = _physical(fields, batch, ("realization", "lead_time", "channel", *sdims), source)
                write_block(target, block, init=init)
            else:
                conds = _sample_conditions(cond_arrays, pool, batch)
                fields = draw_samples(
                    model,
                    decoder,
                    spec,
                    latent_shape=tuple(lat_data.shape[1:]),
                    conditions=conds,
                    members=batch,
                    seed=int(cfg.seed),
                )
                write_block(target, _physical(fields, batch, ("realization", "channel", *sdims), source))
            done += len(batch)
            bar.advance(task, len(batch))
    wall = time.perf_counter() - t0
    log.info(
        "generate: rank %d wrote %d members in %.1f s (%.2f members/s)",
        fabric.global_rank,
        done,
        wall,
        done / wall if wall > 0 else 0.0,
    )
    fabric.barrier()
    if fabric.global_rank == 0:
        finalize(target, force=True)
        log.info("generate: published %s", target)


def _same_config(target: Path, config: str) -> bool:
    import hashlib

    ds = xr.open_zarr(target) if target.suffix == ".zarr" else xr.open_dataset(target)
    with ds:
        return ds.attrs.get("simdiff_config_sha256") == hashlib.sha256(config.encode()).hexdigest()


def _condition_arrays(latents: TrainingStore, dm_cfg: dict[str, Any]) -> dict[str, np.ndarray]:
    """The store's conditions the model uses (time features, covariates, label), read once."""
    return {
        name: latents.array(name)
        for name in CONDITIONS
        if latents.has(name) and dm_cfg["conditioning"].get(name)
    }


def _lead_conditions(
    arrays: dict[str, np.ndarray], path: Path, init: int, leads: int
) -> dict[str, torch.Tensor]:
    """Per lead, the conditions of the valid sample ``init + k`` (time features, covariates, label)."""
    out = {}
    idx = np.arange(init + 1, init + leads + 1)
    for name, values in arrays.items():
        if idx[-1] >= len(values):
            raise DataError(
                f"{path}: condition {name!r} is needed at sample {int(idx[-1])} (init {init} "
                f"+ {leads} leads) but the store ends at {len(values) - 1}; choose earlier inits "
                f"or fewer generate.lead_steps"
            )
        out[name] = torch.from_numpy(np.asarray(values[idx]))
    return out


def _sample_conditions(
    arrays: dict[str, np.ndarray], pool: np.ndarray, batch: list[int]
) -> dict[str, torch.Tensor]:
    """Sample mode: the conditions of the real samples ``pool`` (a split's indices), cycled by draw id."""
    rows = pool[np.asarray(batch) % len(pool)]
    return {name: torch.from_numpy(np.asarray(values[rows])) for name, values in arrays.items()}
