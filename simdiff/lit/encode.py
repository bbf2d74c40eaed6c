"""Batched loops that run a trained autoencoder over a training store, in sample order.

Reads whole store chunks (never sample by sample), runs the network in eval mode without
gradients, and returns labelled arrays: latents (the posterior means) and reconstructions.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import xarray as xr

from simdiff.data.stores.training import TrainingStore
from simdiff.nets.autoencoder import Autoencoder

LATENT_DIMS_3D = ("latent_depth", "latent_y", "latent_x")
LATENT_DIMS_2D = ("latent_y", "latent_x")


def _batches(
    store: TrainingStore, indices: np.ndarray, batch_size: int
) -> Iterator[tuple[slice, np.ndarray]]:
    """(positions in ``indices``, float32 (b, C, [D], Y, X)) in order, reading ranges at once."""
    data = store.data
    for start in range(0, len(indices), batch_size):
        idx = indices[start : start + batch_size]
        if np.all(np.diff(idx) == 1):
            block = np.asarray(data[int(idx[0]) : int(idx[-1]) + 1])
        else:
            block = np.asarray(data.get_orthogonal_selection((idx,)))
        yield slice(start, start + len(idx)), block


def _indices(store: TrainingStore, indices: Sequence[int] | np.ndarray | None) -> np.ndarray:
    return np.arange(store.n_samples) if indices is None else np.asarray(indices, dtype=np.int64)


@torch.no_grad()
def encode_store(
    net: Autoencoder,
    store: TrainingStore,
    *,
    indices: Sequence[int] | np.ndarray | None = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> xr.DataArray:
    """Latent means of the store's samples.

    Returns:
        float32 DataArray ``(sample_dim, latent_channel, [latent_depth], latent_y, latent_x)``
        with the sample coordinate of the store.
    """
    idx = _indices(store, indices)
    net = net.eval().to(device)
    out = np.empty((len(idx), *net.latent_shape(store.data.shape[2:])), dtype=np.float32)
    for pos, block in _batches(store, idx, batch_size):
        out[pos] = net.encode(torch.from_numpy(block).to(device)).float().cpu().numpy()
    sdim = store.layout.sample_dim
    dims = (sdim, "latent_channel", *(LATENT_DIMS_3D if net.ndim == 3 else LATENT_DIMS_2D))
    coords = {"latent_channel": np.arange(out.shape[1])}
    if sdim in store.group:
        coords[sdim] = store.dataset()[sdim].values[idx]
    return xr.DataArray(out, dims=dims, coords=coords, name="latents")


@torch.no_grad()
def reconstruct_store(
    net: Autoencoder,
    store: TrainingStore,
    *,
    indices: Sequence[int] | np.ndarray | None = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> xr.DataArray:
    """Reconstructions (normalised units, as the store's ``data``) of the store's samples.

    Returns:
        float32 DataArray labelled like the store's ``data`` ``(S, channel, [D], Y, X)``,
        restricted to ``indices``.
    """
    idx = _indices(store, indices)
    net = net.eval().to(device)
    shape = tuple(store.data.shape[2:])
    out = np.empty((len(idx), *store.data.shape[1:]), dtype=np.float32)
    for pos, block in _batches(store, idx, batch_size):
        z = net.encode(torch.from_numpy(block).to(device))
        out[pos] = net.decode(z, shape).float().cpu().numpy()
    template = store.dataset()["data"].isel({store.layout.sample_dim: idx})
    return template.copy(data=out)
