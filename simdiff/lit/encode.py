"""Batched loops that run a trained autoencoder over a training store, in sample order.

Reads whole store chunks (never sample by sample), runs the network in eval mode without
gradients, and returns labelled arrays: latents (the posterior means) and reconstructions.

An autoencoder of windows of ``k`` consecutive states (``autoencoder.window``,
:mod:`simdiff.nets.window`) encodes, for every sample ``t``, the window ``t-k+1 .. t`` ending at
it; where that window leaves ``t``'s run (a block within one split: its first ``k-1`` samples)
the run's first window stands in, and :func:`simdiff.data.loading.loader.valid_windows` marks the
latent unusable. A state is reconstructed from the window that holds it when its run is encoded
window by window (:func:`simdiff.nets.window.window_starts`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import xarray as xr

from simdiff.data.loading.loader import contiguous_runs
from simdiff.data.stores.training import TrainingStore
from simdiff.nets.autoencoder import Autoencoder
from simdiff.nets.window import stack_window, unstack_window, window_starts, windowed_shape

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


def store_runs(store: TrainingStore) -> np.ndarray:
    """(S,) contiguous-run id per sample: a block within one split (windows never cross one)."""
    return contiguous_runs(store.array("split"), store.array("block"))


def encode_starts(run: np.ndarray, window: int) -> np.ndarray:
    """(S,) the first state of the window each sample's latent encodes: ``t-k+1``, or its run's
    first window where that leaves the run (clipped to the store for a run shorter than ``k``)."""
    t = np.arange(len(run))
    first = np.r_[0, np.flatnonzero(np.diff(run) != 0) + 1]
    r0 = first[np.searchsorted(first, t, side="right") - 1]
    return np.clip(np.maximum(t - window + 1, r0), 0, max(len(run) - window, 0))


def _windows(store: TrainingStore, starts: np.ndarray, window: int, batch_size: int
             ) -> Iterator[tuple[slice, np.ndarray]]:
    """(positions in ``starts``, float32 (b, k, C, [D], Y, X)): the windows beginning at ``starts``,
    each batch read as one range of the store."""
    data = store.data
    for lo in range(0, len(starts), batch_size):
        s = starts[lo : lo + batch_size]
        a, b = int(s.min()), int(s.max()) + window
        block = np.asarray(data[a:b])
        yield slice(lo, lo + len(s)), block[(s - a)[:, None] + np.arange(window)[None, :]]


@torch.no_grad()
def encode_store(
    net: Autoencoder,
    store: TrainingStore,
    *,
    indices: Sequence[int] | np.ndarray | None = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    window: int = 1,
) -> xr.DataArray:
    """Latent means of the store's samples (with ``window`` > 1: of the window ending at each,
    see the module docstring).

    Returns:
        float32 DataArray ``(sample_dim, latent_channel, [latent_depth], latent_y, latent_x)``
        with the sample coordinate of the store.
    """
    idx = _indices(store, indices)
    net = net.eval().to(device)
    if window > 1:
        has_depth = store.layout.depth_dim is not None
        out = np.empty((len(idx), *net.latent_shape(windowed_shape(store.data.shape[2:], window))),
                       dtype=np.float32)
        starts = encode_starts(store_runs(store), window)[idx]
        for pos, states in _windows(store, starts, window, batch_size):
            x = stack_window(torch.from_numpy(states).to(device), has_depth)
            out[pos] = net.encode(x).float().cpu().numpy()
    else:
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
    window: int = 1,
) -> xr.DataArray:
    """Reconstructions (normalised units, as the store's ``data``) of the store's samples (with
    ``window`` > 1: each from the window that holds it, see the module docstring).

    Returns:
        float32 DataArray labelled like the store's ``data`` ``(S, channel, [D], Y, X)``,
        restricted to ``indices``.
    """
    idx = _indices(store, indices)
    net = net.eval().to(device)
    shape = tuple(store.data.shape[2:])
    out = np.empty((len(idx), *store.data.shape[1:]), dtype=np.float32)
    if window > 1:
        has_depth = store.layout.depth_dim is not None
        starts = window_starts(store_runs(store), idx, window)
        unique, which = np.unique(starts, return_inverse=True)
        stacked = windowed_shape(shape, window)
        recon = np.empty((len(unique), window, *store.data.shape[1:]), dtype=np.float32)
        for pos, states in _windows(store, unique, window, batch_size):
            z = net.encode(stack_window(torch.from_numpy(states).to(device), has_depth))
            decoded = unstack_window(net.decode(z, tuple(stacked)), window, has_depth)
            recon[pos] = decoded.float().cpu().numpy()
        out[:] = recon[which, idx - starts]
    else:
        for pos, block in _batches(store, idx, batch_size):
            z = net.encode(torch.from_numpy(block).to(device))
            out[pos] = net.decode(z, shape).float().cpu().numpy()
    template = store.dataset()["data"].isel({store.layout.sample_dim: idx})
    return template.copy(data=out)
