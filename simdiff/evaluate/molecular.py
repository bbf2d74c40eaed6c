"""Scores of generated electron densities against their reference densities on the same grid.

Each generated member was drawn for one conditioning sample (a molecule and geometry); that
sample's density, computed by PySCF for the same molecule and geometry and sampled on the same
grid, is its reference. Everything is computed on that grid:

* **electron count** ``N = Σ ρ dV``: the member's against the reference's on the grid (a coarse
  grid misses part of the nuclear cusps, so the true count is not the yardstick); relative error
  ``|N - N_ref| / N_ref``, median and 90th percentile over all members;
* **negative fraction**: voxels with ``ρ < 0`` over all voxels of all members (0 by construction
  when the inverse transform is censored at 0);
* **radial profile**: ``ρ`` averaged over spherical shells (width one voxel) about the centre of
  charge ``Σ ρ r / Σ ρ``, each density about its own centre; its relative error is the
  shell-volume-weighted L1 distance over the reference's L1 norm, i.e. the fraction of charge
  at the wrong radius;
* **peak ratio**: ``max ρ / max ρ_ref``;
* **spectrum ratio**: the 3D power spectrum of ``ρ - mean`` averaged over shells of ``|k|``, the
  member's over the reference's; its geometric mean over the shells (1: the same
  roughness at every scale) and over the upper half of the wavenumbers;
* **memorisation**: each member's RMS distance to its nearest training density against its
  distance to its own reference; ``copies`` is the fraction of members nearer to a training
  density than the training densities' own median nearest-neighbour distance.

All metrics are per molecule (by label) and pooled. On the built-in set the report adds the
same scores for the **promolecule** (the superposition of free-atom densities at the same
geometry and grid, no SCF): the baseline a generated density has to beat.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def electron_counts(rho: np.ndarray, dv: float | np.ndarray) -> np.ndarray:
    """``Σ ρ dV`` over the last three axes."""
    return (np.asarray(rho, np.float64) * dv).sum(axis=(-3, -2, -1))


def centre_of_charge(rho: np.ndarray, axes: Sequence[np.ndarray]) -> np.ndarray:
    """``(z, y, x)`` centre ``Σ ρ r / Σ ρ`` of one density ``(Z, Y, X)`` on grid ``axes``."""
    rho = np.clip(np.asarray(rho, np.float64), 0, None)
    total = rho.sum()
    if total <= 0:
        return np.array([float(np.mean(a)) for a in axes])
    return np.array([
        (rho.sum(axis=tuple(j for j in range(3) if j != i)) * np.asarray(a, np.float64)).sum() / total
        for i, a in enumerate(axes)
    ])


def radial_profile(rho: np.ndarray, axes: Sequence[np.ndarray], width: float, n_bins: int,
                   centre: np.ndarray | None = None) -> np.ndarray:
    """Shell means of ``rho (Z, Y, X)`` about ``centre`` (default its centre of charge): (n_bins,)."""
    centre = centre_of_charge(rho, axes) if centre is None else centre
    grids = np.meshgrid(*[np.asarray(a, np.float64) - c for a, c in zip(axes, centre, strict=True)],
                        indexing="ij")
    r = np.sqrt(sum(g**2 for g in grids))
    k = np.minimum((r / width).astype(np.int64), n_bins - 1)
    sums = np.bincount(k.ravel(), weights=np.asarray(rho, np.float64).ravel(), minlength=n_bins)
    counts = np.bincount(k.ravel(), minlength=n_bins)
    return np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)


def radial_error(profile: np.ndarray, reference: np.ndarray, width: float) -> float:
    """Shell-volume-weighted L1 error of a radial profile relative to the reference's."""
    r = (np.arange(profile.size) + 0.5) * width
    shell = 4 * np.pi * r**2 * width
    ref = float((np.abs(reference) * shell).sum())
    return float((np.abs(profile - reference) * shell).sum() / ref) if ref > 0 else float("nan")


def power_spectrum(rho: np.ndarray, n_bins: int) -> np.ndarray:
    """Shell-averaged 3D power spectrum of ``rho - mean``: (n_bins,) over ``|k|`` in grid units."""
    x = np.asarray(rho, np.float64)
    p = np.abs(np.fft.fftn(x - x.mean())) ** 2
    ks = np.meshgrid(*[np.fft.fftfreq(n) * n for n in x.shape], indexing="ij")
    k = np.sqrt(sum(g**2 for g in ks))
    b = np.minimum(np.rint(k).astype(np.int64), n_bins - 1)
    sums = np.bincount(b.ravel(), weights=p.ravel(), minlength=n_bins)
    counts = np.bincount(b.ravel(), minlength=n_bins)
    return np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)


def _geomean_ratio(a: np.ndarray, b: np.ndarray) -> float:
    """Geometric mean of ``a / b`` over the shells where the reference ``b`` holds power above
    round-off (1e-12 of its largest shell)."""
    floor = 1e-12 * float(b.max()) if b.size else 0.0
    ok = (a > 0) & (b > floor)
    return float(np.exp(np.mean(np.log(a[ok] / b[ok])))) if ok.any() else float("nan")


def _summary(values: np.ndarray) -> dict[str, float]:
    v = np.asarray(values, np.float64)
    return {"median": float(np.median(v)), "p90": float(np.quantile(v, 0.9)), "max": float(v.max())}


def memorisation(members: np.ndarray, references: np.ndarray, train: np.ndarray) -> dict[str, Any]:
    """Nearest-training-density distances of ``members (M, C, ...)`` against their references.

    Args:
        members: (M, C, Z, Y, X) generated densities.
        references: (C, Z, Y, X) each condition's reference.
        train: (N, Z, Y, X) training densities (N >= 2).
    """
    flat_t = train.reshape(train.shape[0], -1).astype(np.float64)
    norms = (flat_t**2).sum(axis=1)

    def nearest(x: np.ndarray) -> np.ndarray:  # (K, V) -> (K,) RMS distance to the nearest train
        d2 = (x**2).sum(axis=1)[:, None] + norms[None, :] - 2 * x @ flat_t.T
        return np.sqrt(np.clip(d2, 0, None).min(axis=1) / x.shape[1])

    m = members.reshape(-1, members.shape[-3] * members.shape[-2] * members.shape[-1]).astype(np.float64)
    to_train = nearest(m)
    ref = np.broadcast_to(references[None], members.shape).reshape(m.shape)
    to_ref = np.sqrt(((m - ref) ** 2).mean(axis=1))
    d2 = norms[:, None] + norms[None, :] - 2 * flat_t @ flat_t.T
    np.fill_diagonal(d2, np.inf)
    train_nn = np.sqrt(np.clip(d2, 0, None).min(axis=1) / flat_t.shape[1])
    yardstick = float(np.median(train_nn))
    return {
        "nearest_train_rms": float(np.median(to_train)),
        "reference_rms": float(np.median(to_ref)),
        "train_nearest_neighbour_rms": yardstick,
        "copies": float(np.mean(to_train < yardstick)),
    }


def molecular_scores(
    members: np.ndarray,
    references: np.ndarray,
    axes: Sequence[np.ndarray],
    dv: float,
    *,
    labels: np.ndarray | None = None,
    label_names: Sequence[str] | None = None,
    train: np.ndarray | None = None,
    factors: np.ndarray | None = None,
) -> dict[str, Any]:
    """metrics.json's ``molecular`` entry.

    Args:
        members: (M, C, Z, Y, X) generated densities (M members per condition).
        references: (C, Z, Y, X) the reference density of each condition on the same grid.
        axes: z, y, x coordinates (bohr).
        dv: voxel volume (bohr^3).
        labels, label_names: each condition's molecule.
        train: (N, Z, Y, X) training densities for the memorisation check (optional).
        factors: (M, C) the factors generate renormalised each member by (``generate.mode.
            renormalise``), or None; then the count error of the members as drawn
            (``members / factors``) is reported too, as ``electron_count_relative_error_raw``.
    """
    members = np.asarray(members, np.float64)
    references = np.asarray(references, np.float64)
    n_mem, n_cond = members.shape[:2]
    width = float(np.mean([abs(np.diff(np.asarray(a, float)).mean()) for a in axes]))
    n_bins = int(np.ceil(np.sqrt(sum((np.ptp(a) / 2) ** 2 for a in axes)) / width)) + 1
    n_k = int(np.ceil(np.sqrt(sum((n / 2) ** 2 for n in references.shape[1:])))) + 1
    ref_count = electron_counts(references, dv)
    count = electron_counts(members, dv)
    count_err = np.abs(count - ref_count[None]) / ref_count[None]
    radial = np.zeros((n_mem, n_cond))
    peak = members.reshape(n_mem, n_cond, -1).max(axis=2) / references.reshape(n_cond, -1).max(axis=1)[None]
    spec, spec_hi = np.zeros((n_mem, n_cond)), np.zeros((n_mem, n_cond))
    profiles = {}
    for c in range(n_cond):
        ref_prof = radial_profile(references[c], axes, width, n_bins)
        ref_spec = power_spectrum(references[c], n_k)
        hi = slice(n_k // 2, None)
        profiles[c] = {"reference": ref_prof, "members": []}
        for m in range(n_mem):
            prof = radial_profile(members[m, c], axes, width, n_bins)
            profiles[c]["members"].append(prof)
            radial[m, c] = radial_error(prof, ref_prof, width)
            s = power_spectrum(members[m, c], n_k)
            spec[m, c] = _geomean_ratio(s[1:], ref_spec[1:])
            spec_hi[m, c] = _geomean_ratio(s[hi], ref_spec[hi])
    out: dict[str, Any] = {
        "members": int(n_mem),
        "conditions": int(n_cond),
        "electron_count_relative_error": _summary(count_err),
        "negative_fraction": float((members < 0).mean()),
        "radial_profile_relative_error": _summary(radial),
        "peak_ratio": _summary(peak),
        "spectrum_ratio": float(np.exp(np.nanmean(np.log(spec)))),
        "spectrum_ratio_high_k": float(np.exp(np.nanmean(np.log(spec_hi)))),
        "reference_electron_count": [float(v) for v in ref_count],
        "radial_bin_bohr": width,
    }
    if factors is not None:
        raw = count / np.asarray(factors, np.float64)
        out["renormalised"] = True
        out["electron_count_relative_error_raw"] = _summary(np.abs(raw - ref_count[None]) / ref_count[None])
    if labels is not None:
        per: dict[str, Any] = {}
        for lab in np.unique(labels):
            cols = np.flatnonzero(labels == lab)
            name = label_names[int(lab)] if label_names is not None else str(int(lab))
            per[name] = {
                "conditions": int(cols.size),
                "electron_count_relative_error": float(np.median(count_err[:, cols])),
                "radial_profile_relative_error": float(np.median(radial[:, cols])),
                "peak_ratio": float(np.median(peak[:, cols])),
                "reference_electron_count": float(np.median(ref_count[cols])),
            }
        out["by_molecule"] = per
    if train is not None and len(train) >= 2:
        out["memorisation"] = memorisation(members, references, np.asarray(train))
    out["_profiles"] = profiles  # for the figures; dropped before metrics.json
    return out
