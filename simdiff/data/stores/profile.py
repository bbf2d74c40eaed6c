"""A variable relative to a reference field, standardised by the reference's level.

A variable modelled relative to a per-sample reference field (a molecule's density relative to
its promolecule, :mod:`simdiff.data.stores.stats`) is the difference ``d = T(x) - T(r)`` of
transformed values. How large ``d`` is depends on how dense the reference is: next to a nucleus
the density is the free atom's to a fraction of a per cent, in the bonding region it differs by
tens of per cent. One mean and std for the volume give a model's error of one normalised size
the same relative size everywhere, so the same error moves far more charge at a nuclear cusp
(where one voxel of a coarse grid can hold a third of the grid's electrons) than in the bonding
region, and the electron count of a decoded density follows the few cusp voxels.

The profile standardises ``d`` by the reference's level ``t = T(r)``:

    u = (d - m(t)) / s(t),

with ``m`` and ``s`` the mean and std of ``d`` over the train split's valid cells whose ``t``
falls in each of ``bins`` equal-width bins of ``t`` (piecewise linear between the centres of the
bins that hold at least :data:`MIN_CELLS` cells, constant past the end ones). ``s`` is replaced
by its running maximum from the dense end down, ``s(t) = max_{t' >= t} s_bin(t')``: the scale
only shrinks towards dense references, so the sparse far field keeps the largest scale and its
``d`` stays small in ``u``, as it was under one std. (Each bin's own std instead, 7 times smaller
in the far field, which does hold charge in an ionic molecule: LiH's free-atom Li 2s puts 0.3 e
beyond 5 bohr where the molecule has 0.06 e, was tried on the built-in molecules: the autoencoder's
count error was unchanged, 0.44 % / 1.90 % median / p90, and the members' no better, 2.68 % /
7.07 %: datasets/molecules/README.md.) The volume's mean and std then normalise ``u`` as they
normalised ``d`` before, and every inverse (``denormalise``) adds ``m(t) + s(t) u`` back before
the reference, exactly.

Statistics are in float64 and stored as such (``profile_level``, ``profile_mean``,
``profile_scale`` over ``(channel, profile_bin)``; NaN for a channel without a reference and
past a channel's last used bin), so a store's own normalisation and its inverse agree to
float64 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import xarray as xr

#: A level bin enters the profile only with at least this many train cells.
MIN_CELLS = 100
#: The stored arrays of a profile, in order: bin centres of ``t``, mean and scale of ``d``.
VARIABLES = ("profile_level", "profile_mean", "profile_scale")

A = TypeVar("A")


def _interp(x: A, xp: np.ndarray, fp: np.ndarray) -> A:
    """``np.interp`` elementwise, on numpy arrays or (lazy) DataArrays."""
    if isinstance(x, xr.DataArray):
        return xr.apply_ufunc(np.interp, x, kwargs={"xp": xp, "fp": fp}, dask="parallelized",
                              output_dtypes=[np.float64])  # type: ignore[return-value]
    return np.interp(x, xp, fp)  # type: ignore[return-value]


@dataclass(frozen=True)
class Profile:
    """The mean and scale of a relative variable by reference level.

    Attributes:
        level: (K,) increasing bin centres of ``t = T(reference)``.
        mean: (K,) mean of ``d`` per bin.
        scale: (K,) positive, non-increasing: the running maximum from the dense end of the
            std of ``d`` per bin.
    """

    level: np.ndarray
    mean: np.ndarray
    scale: np.ndarray

    def __post_init__(self) -> None:
        lv, m, s = (np.asarray(a, dtype=np.float64) for a in (self.level, self.mean, self.scale))
        if lv.ndim != 1 or lv.size < 1 or m.shape != lv.shape or s.shape != lv.shape:
            raise ValueError(f"Profile: level, mean and scale must be equal 1D arrays, got shapes "
                             f"{lv.shape}, {m.shape}, {s.shape}")
        if not (np.all(np.isfinite(lv)) and np.all(np.isfinite(m)) and np.all(s > 0)):
            raise ValueError("Profile: levels and means must be finite and scales positive")
        if np.any(np.diff(lv) <= 0):
            raise ValueError(f"Profile: levels must increase, got {lv.tolist()}")
        for name, a in (("level", lv), ("mean", m), ("scale", s)):
            object.__setattr__(self, name, a)

    def forward(self, d: A, t: A) -> A:
        """``(d - m(t)) / s(t)``."""
        return (d - _interp(t, self.level, self.mean)) / _interp(t, self.level, self.scale)  # type: ignore[operator]

    def inverse(self, u: A, t: A) -> A:
        """``m(t) + s(t) u``: :meth:`forward` undone."""
        return _interp(t, self.level, self.mean) + _interp(t, self.level, self.scale) * u  # type: ignore[operator]


def bin_moments(d: np.ndarray, t: np.ndarray, valid: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Per bin of ``t`` (``len(edges) - 1`` equal bins, the ends closed): [cells, Σd, Σd²] of
    ``d`` over ``valid`` cells; float64 ``(3, bins)``."""
    bins = edges.size - 1
    k = np.clip(np.searchsorted(edges, t[valid], side="right") - 1, 0, bins - 1)
    dv = d[valid].astype(np.float64)
    return np.stack([np.bincount(k, minlength=bins).astype(np.float64),
                     np.bincount(k, weights=dv, minlength=bins),
                     np.bincount(k, weights=dv * dv, minlength=bins)])


def fit(moments: np.ndarray, edges: np.ndarray) -> Profile:
    """The profile of summed :func:`bin_moments` (``(3, bins)``) over ``edges``.

    Raises:
        ValueError: fewer than one bin with :data:`MIN_CELLS` cells, or no spread in ``d``.
    """
    n, s1, s2 = (np.asarray(a, dtype=np.float64) for a in moments)
    used = n >= MIN_CELLS
    if not used.any():
        raise ValueError(f"no reference-level bin holds {MIN_CELLS} train cells ({int(n.sum())} in all)")
    centres = 0.5 * (edges[:-1] + edges[1:])
    mean = s1[used] / n[used]
    std = np.sqrt(np.maximum(s2[used] / n[used] - mean**2, 0.0))
    scale = np.maximum.accumulate(std[::-1])[::-1]
    if not scale[0] > 0:
        raise ValueError("the variable does not vary relative to its reference on the train split")
    scale = np.maximum(scale, 1e-6 * scale[0])
    return Profile(centres[used], mean, scale)


def to_dataset(profiles: dict[str, Profile], channels: list[str]) -> xr.Dataset:
    """``profile_level/mean/scale (channel, profile_bin)`` float64, NaN where unused."""
    bins = max(p.level.size for p in profiles.values())
    out = {v: np.full((len(channels), bins), np.nan) for v in VARIABLES}
    for i, name in enumerate(channels):
        if name in profiles:
            p = profiles[name]
            for v, a in zip(VARIABLES, (p.level, p.mean, p.scale), strict=True):
                out[v][i, : a.size] = a
    attrs = {
        "profile_level": "bin centre of the transformed reference, T(reference)",
        "profile_mean": "mean of T(x) - T(reference) in the bin (train)",
        "profile_scale": "std of T(x) - T(reference) in the bin, its running maximum from the dense end "
                         "(train)",
    }
    return xr.Dataset({v: (("channel", "profile_bin"), out[v], {"long_name": attrs[v]}) for v in VARIABLES},
                      coords={"channel": np.array(channels, dtype=object)})


def from_dataset(ds: xr.Dataset, name: str) -> Profile | None:
    """The profile of channel ``name`` in a statistics or store Dataset, or None."""
    if VARIABLES[0] not in ds:
        return None
    rows = [np.asarray(ds[v].sel(channel=name).values, dtype=np.float64) for v in VARIABLES]
    keep = np.isfinite(rows[0])
    if not keep.any():
        return None
    return Profile(*(r[keep] for r in rows))
