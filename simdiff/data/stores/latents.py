"""The latent store ``run_dir/latents.zarr``: its schema, its atomic writer and its reader.

The latent store has the training store's schema (:mod:`simdiff.data.stores.training`), so the same
loader and DataModule serve the diffusion model (``loader.store=${run_dir}/latents.zarr``)::

  data         float32 (S, channel, [latent_depth], latent_y, latent_x)
               the autoencoder's latent means, standardised per latent channel:
               (mu - mean) / std, so every channel has zero mean, unit variance on train.
  mean, std    float32 (channel, [latent_depth])  the per-channel latent shift and scale
               (constant along latent_depth): mu = data * std + mean.
  mask         bool    ([d], h, w)  all True (latents have no invalid cells).
  weights      float32 ([d], h, w)  the cell weights averaged over each latent cell's footprint.
  split, block, time_features, label, covariates, and the sample coordinate:
               copied from train.zarr.

  coords: ``channel`` = "latent0", "latent1", ...

  attrs:
    simdiff_store = "latents", format_version = 1
    layout        = {"sample_dim", "depth_dim" ("latent_depth" or null), "y_dim", "x_dim"}
    variables     = {"latentK": {"long_name"}};  transforms = {}
    geometry      = latent Geometry.to_attrs() (periodic where the source axis is)
    autoencoder   = {"checkpoint", "checkpoint_sha256", "config" (YAML text), "input_shape",
                     "input_dims", "latent_shape", "factors", "compression_ratio"}
    source_store  = {"path", "variables", "layout"}
    provenance    = {"simdiff_version", "created"}

Published by an atomic rename; a half-written store never sits at the final path.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from zarr.codecs import BloscCodec

import simdiff
from simdiff.base.atomic import scratch_dir
from simdiff.base.errors import DataError
from simdiff.data.stores.atoms import ELECTRON_SCALE, has_atoms, molecular_conditions
from simdiff.data.stores.chunking import samples_per_chunk
from simdiff.data.stores.training import FORMAT_VERSION, TrainingStore

LATENT_KIND = "latents"
CONDITION_NAMES = ("time_features", "label", "covariates")


def footprint_weights(weights: np.ndarray, factors: Sequence[int], periodic: Sequence[bool]) -> np.ndarray:
    """Mean of ``weights`` ([D], Y, X) over each latent cell's footprint of ``factors`` cells.

    Axes are first padded to a multiple of their factor as the autoencoder pads them
    (wrapped on periodic axes, edge-repeated on the others). Returns ([d], h, w).
    """
    pads = [(0, (-n) % f) for n, f in zip(weights.shape, factors, strict=True)]
    w = weights
    for axis, (pad, wrap) in enumerate(zip(pads, periodic, strict=True)):
        if pad[1]:
            width = [(0, 0)] * w.ndim
            width[axis] = pad
            w = np.pad(w, width, mode="wrap" if wrap else "edge")
    shape = []
    for n, f in zip(w.shape, factors, strict=True):
        shape += [n // f, f]
    return w.reshape(shape).mean(axis=tuple(range(1, 2 * w.ndim, 2))).astype(np.float32)


def latent_scale(latents: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (ddof 0, float64) of ``latents`` (S, c, ...) over train samples."""
    x = np.moveaxis(latents[train].astype(np.float64), 1, 0).reshape(latents.shape[1], -1)
    mean, std = x.mean(axis=1), x.std(axis=1)
    if np.any(std == 0):
        raise DataError(f"latent channels {np.flatnonzero(std == 0).tolist()} are constant on train")
    return mean, std


def write_latent_store(
    latents: xr.DataArray,
    source: TrainingStore,
    path: str | Path,
    *,
    factors: Sequence[int],
    periodic: Sequence[bool],
    autoencoder: Mapping[str, Any],
    atom_subcells: int = 1,
    valid: np.ndarray | None = None,
    weights: np.ndarray | None = None,
) -> Path:
    """Write the latent store at ``path`` (must not exist), atomically.

    Args:
        latents: latent means ``(S, latent_channel, [latent_depth], latent_y, latent_x)``,
            one per sample of ``source`` in order.
        source: the training store the latents were encoded from.
        factors: total downsampling factor per spatial axis ``([D], Y, X)``.
        periodic: per spatial axis of the source, True where it wraps.
        autoencoder: the ``autoencoder`` attr (checkpoint, sha256, config, shapes).
        valid: (S,) bool, the latents that encode what they stand for (an autoencoder of windows
            of states: the windows inside one run); the standardisation uses the valid train
            latents only. None: all.
        weights: the cell weights of what the autoencoder encodes (a window's), when not the
            source's ``weights``.

    Returns:
        ``path``.
    """
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists; remove it first or write to a new path")
    if latents.shape[0] != source.n_samples:
        raise ValueError(f"{latents.shape[0]} latents for a store of {source.n_samples} samples")
    src = source.dataset()
    lay = source.layout
    sdim = lay.sample_dim
    split = source.array("split")
    values = np.asarray(latents.values, dtype=np.float32)
    mean, std = latent_scale(values, (split == 0) & (True if valid is None else np.asarray(valid, bool)))
    c = values.shape[1]
    bshape = (1, c) + (1,) * (values.ndim - 2)
    normed = ((values - mean.reshape(bshape)) / std.reshape(bshape)).astype(np.float32)

    spatial = tuple(latents.dims[2:])
    depth_dim = spatial[0] if len(spatial) == 3 else None
    names = [f"latent{k}" for k in range(c)]
    stat_dims = ("channel", *(spatial[:1] if depth_dim else ()))
    stat_shape = (c, *(values.shape[2:3] if depth_dim else ()))
    cells = source.array("weights") if weights is None else weights
    weights = footprint_weights(np.asarray(cells, dtype=np.float64), factors, periodic)
    ds = xr.Dataset(
        {
            "data": ((sdim, "channel", *spatial), normed,
                     {"long_name": "latent means standardised per channel: (mu - mean) / std"}),
            "mask": (spatial, np.ones(values.shape[2:], dtype=bool), {"long_name": "True where valid"}),
            "weights": (spatial, weights, {"long_name": "cell weights averaged over each latent footprint"}),
            "mean": (stat_dims, np.broadcast_to(mean.reshape(c, *(1,) * (len(stat_shape) - 1)),
                                                stat_shape).astype(np.float32),
                     {"long_name": "per-channel latent shift (train)"}),
            "std": (stat_dims, np.broadcast_to(std.reshape(c, *(1,) * (len(stat_shape) - 1)),
                                               stat_shape).astype(np.float32),
                    {"long_name": "per-channel latent scale (train)"}),
            "split": ((sdim,), split, dict(src["split"].attrs)),
            "block": ((sdim,), source.array("block"), dict(src["block"].attrs)),
        },
        coords={"channel": np.array(names, dtype=object)},
    )
    if sdim in src.coords:
        ds = ds.assign_coords({sdim: src[sdim].variable.copy(deep=False)})
    for name in CONDITION_NAMES:
        if name in src:
            cond = src[name].load()
            ds[name] = cond.variable.copy(deep=False)
            for d in cond.dims[1:]:
                if d in src.coords:
                    ds = ds.assign_coords({d: src[d].variable.copy(deep=False)})
    if has_atoms(source) and depth_dim is not None:
        ds = _with_molecular_conditions(ds, source, spatial, values.shape[2:], factors, atom_subcells)
    geometry = {
        "dims": list(spatial),
        "periodic": sorted(d for d, p in zip(spatial, periodic, strict=True) if p),
        "attrs": {"source_dims": list(lay.spatial_dims), "factors": [int(f) for f in factors]},
    }
    ds.attrs = {
        "simdiff_store": LATENT_KIND,
        "format_version": FORMAT_VERSION,
        "layout": {"sample_dim": sdim, "depth_dim": depth_dim, "y_dim": spatial[-2], "x_dim": spatial[-1]},
        "variables": {n: {"long_name": f"latent channel {k}"} for k, n in enumerate(names)},
        "transforms": {},
        "geometry": geometry,
        "autoencoder": dict(autoencoder),
        "source_store": {"path": str(source.path.resolve()), "variables": source.variables,
                         "layout": dict(source.attrs["layout"])},
        "provenance": {"simdiff_version": simdiff.__version__,
                       "created": datetime.now(UTC).isoformat(timespec="seconds")},
    }
    sample_bytes = 4 * int(np.prod(values.shape[1:]))
    k = min(samples_per_chunk(sample_bytes, 1.0), values.shape[0])
    for v in ds.variables.values():
        v.encoding = {}
    encoding = {"data": {"chunks": (k, *values.shape[1:]),
                         "compressors": (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),)}}
    tmp = scratch_dir(path)
    try:
        # every chunk on disk, even one equal to the fill value: an absent chunk of data is damage
        ds.to_zarr(tmp / path.name, mode="w-", zarr_format=3, consolidated=False, encoding=encoding,
                   write_empty_chunks=True)
        os.replace(tmp / path.name, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _with_molecular_conditions(ds: xr.Dataset, source: TrainingStore, spatial: Sequence[str],
                               shape: Sequence[int], factors: Sequence[int], subcells: int) -> xr.Dataset:
    """``ds`` with the ``atoms`` condition and ``n_electrons / 10`` appended to the covariates."""
    conds = molecular_conditions(source, shape, factors, subcells)
    dims, atoms, attrs = conds["atoms"]
    ds["atoms"] = ((dims[0], dims[1], *spatial), atoms, attrs)
    sdim = dims[0]
    electrons = (conds["n_electrons"][1] / ELECTRON_SCALE).astype(np.float32)[:, None]
    name = np.array([f"n_electrons/{ELECTRON_SCALE:g}"], dtype=object)
    if "covariates" in ds:
        cdim = ds["covariates"].dims[1]
        old = ds["covariates"]
        names = np.concatenate([np.asarray(ds[cdim].values, dtype=object) if cdim in ds.coords
                                else np.array([f"covariate{k}" for k in range(old.shape[1])], dtype=object),
                                name])
        ds = ds.drop_vars([v for v in ("covariates", cdim) if v in ds.variables])
        ds["covariates"] = ((sdim, cdim), np.concatenate([old.values.astype(np.float32), electrons], axis=1),
                            dict(old.attrs))
        ds = ds.assign_coords({cdim: names})
    else:
        ds["covariates"] = ((sdim, "covariate"), electrons, {"long_name": "scalar conditions"})
        ds = ds.assign_coords(covariate=name)
    return ds


class LatentStore(TrainingStore):
    """Read access to a latent store: the training-store reader plus the latent scale.

    Args:
        path: the ``latents.zarr`` directory.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        if self.attrs.get("simdiff_store") != LATENT_KIND:
            raise DataError(f"{self.path}: not a simdiff latent store; run `simdiff encode run_dir=...`")

    @property
    def autoencoder(self) -> dict[str, Any]:
        """The autoencoder attr: checkpoint, sha256, config, shapes, compression ratio."""
        return dict(self.attrs["autoencoder"])

    @property
    def window(self) -> int:
        """Consecutive states each latent encodes (``autoencoder.window``): latent ``t`` is of the
        states ``t-k+1 .. t``, and the next window's latent is ``k`` samples on."""
        return int(self.attrs["autoencoder"].get("window", 1))

    @property
    def scale(self) -> np.ndarray:
        """Per-channel latent scale (c,)."""
        return self._per_channel("std")

    @property
    def shift(self) -> np.ndarray:
        """Per-channel latent mean (c,)."""
        return self._per_channel("mean")

    def _per_channel(self, name: str) -> np.ndarray:
        a = self.array(name)
        return a.reshape(a.shape[0], -1)[:, 0]

    def latent_means(self) -> xr.DataArray:
        """The unscaled latent means ``mu = data * std + mean`` (S, channel, [d], h, w), lazy."""
        ds = self.dataset()
        return ds["data"] * ds["std"] + ds["mean"]
