"""Power spectra of gridded fields: zonal, isotropic (radial shells) and windowed 1D.

Every spectrum is normalised so that Parseval's theorem reads as a mean square: summing
``E`` over all wavenumbers gives the mean of ``x**2`` over the valid cells that were
transformed (for the windowed spectrum, the taper-weighted mean of the detrended field).

Masked cells (NaN): the mean over the valid cells is removed, the anomaly is zero-filled,
the power is divided by the valid fraction, and ``k = 0`` gets the mean squared back; i.e.
``E(k > 0)`` is the periodogram of ``(x - mean) * m`` (``m`` the validity mask) per valid
cell. Reasons for this choice over "only transform rows without masked cells": on SST-like
fields nearly every latitude circle crosses land, so complete rows would leave little or
nothing to average; and in a reconstruction report truth and reconstruction share the mask,
so both spectra see the same mask-edge leakage and their ratio compares like with like. The
mean is removed first because zero-filling a field with a large mean (SST in kelvin) would
put the spectrum of the mask's own shape, scaled by ``mean**2``, at every wavenumber and
swamp the field's variance. The price: on masked fields ``E`` is the spectrum of the masked
anomaly, not of an (unknown) field behind the mask. Rows without masked cells get the plain
periodogram.

Wavenumbers:

* :func:`zonal_spectrum` and :func:`windowed_spectrum`: integer ``m`` = cycles per length of
  the transformed dim (zonal: per latitude circle), ``m = 0 .. n // 2``.
* :func:`isotropic_spectrum`: cycles per unit of the dims' coordinates (unit grid spacing
  when a dim has no uniform numeric coord), shells of width ``dk = 1 / min_i L_i`` (the
  coarsest fundamental, so no shell below the Nyquist limit is empty).

Each spectrum carries a bool coord ``resolved`` along ``wavenumber``: True for
``0 < k <= Nyquist`` of every transformed dim (isotropic shells beyond the Nyquist of the
shortest-resolved axis are kept so Parseval still holds, but marked False).

All functions are lazy on dask-backed input (``xr.apply_ufunc(dask="parallelized")``; the
transformed dims are rechunked to one chunk each).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Sequence

import numpy as np
import scipy.sparse
import xarray as xr

WAVENUMBER = "wavenumber"


def _one_sided_power(x: np.ndarray) -> np.ndarray:
    """``|a_m|^2`` folded onto ``m = 0 .. n // 2``: (..., n) -> (..., n // 2 + 1).

    ``a_m = (1/n) sum_j x_j exp(-2 pi i j m / n)``, so that ``sum_m E_m = mean_j x_j^2``
    (Parseval); the interior modes count twice (``m`` and ``-m``), ``0`` and ``n/2`` once.
    """
    n = x.shape[-1]
    power = np.abs(np.fft.rfft(x, axis=-1) / n) ** 2
    last = n // 2 if n % 2 == 0 else n // 2 + 1
    power[..., 1:last] *= 2.0
    return power


def _per_valid_cell(power: np.ndarray, n_valid: np.ndarray, n_total: int) -> np.ndarray:
    """Rescale power of a zero-filled field from per cell to per valid cell; NaN without valid cells."""
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(n_valid > 0, n_total / np.maximum(n_valid, 1), np.nan)
    return power * scale[..., None]


def _masked_anomaly(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows (..., n) -> zero-filled anomaly from the valid-cell mean, that mean, valid count."""
    valid = np.isfinite(x)
    n_valid = valid.sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        mu = np.where(valid, x, 0.0).sum(-1) / n_valid
    return np.where(valid, x - mu[..., None], 0.0), mu, n_valid


def _periodic_1d(x: np.ndarray) -> np.ndarray:
    """One-sided power of a periodic, possibly masked signal: (..., n) -> (..., n // 2 + 1)."""
    anomaly, mu, n_valid = _masked_anomaly(x)
    n = x.shape[-1]
    power = _one_sided_power(anomaly)
    power[..., 0] = mu**2 * n_valid / n  # the mean at k = 0, per cell before the rescaling
    return _per_valid_cell(power, n_valid, n)


def _hann(n: int) -> np.ndarray:
    """Hann taper sampled at cell centres, ``sin^2(pi (j + 1/2) / n)``: (n,), never exactly 0."""
    return np.sin(np.pi * (np.arange(n) + 0.5) / n) ** 2


def _windowed_1d(x: np.ndarray) -> np.ndarray:
    """Detrended, Hann-tapered power of a non-periodic signal: (..., n) -> (..., n // 2 + 1).

    The linear trend is a least-squares fit over the valid cells of each row; the power is
    divided by ``mean_j(w_j^2 m_j)`` so that ``sum_m E_m = sum_j w_j^2 m_j d_j^2 / sum_j w_j^2 m_j``
    (``d`` the detrended signal, ``w`` the taper, ``m`` the mask).
    """
    n = x.shape[-1]
    valid = np.isfinite(x)
    m = valid.astype(float)
    y = np.where(valid, x, 0.0)
    t = np.arange(n, dtype=float)
    s0, s1, s2 = m.sum(-1), (m * t).sum(-1), (m * t * t).sum(-1)
    sy, sty = (m * y).sum(-1), (m * t * y).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        det = s0 * s2 - s1 * s1
        slope = np.where(det > 0, (s0 * sty - s1 * sy) / det, np.nan)
        intercept = (sy - slope * s1) / s0
    d = (y - intercept[..., None] - slope[..., None] * t) * m
    w = _hann(n)
    power = _one_sided_power(w * d)
    norm = (w**2 * m).sum(-1) / n
    with np.errstate(divide="ignore", invalid="ignore"):
        return power / np.where(s0 >= 2, norm, np.nan)[..., None]


def _as_single_chunk(da: xr.DataArray, dims: Sequence[Hashable]) -> xr.DataArray:
    """Dask-backed input: one chunk along each transformed dim (no-op for numpy)."""
    return da.chunk({d: -1 for d in dims}) if da.chunks is not None else da


def _spectrum_attrs(da: xr.DataArray, kind: str) -> dict[str, str]:
    units = da.attrs.get("units")
    attrs = {"long_name": f"{kind} power spectrum of {da.name or 'field'} (mean square per bin)"}
    if units:
        attrs["units"] = f"({units})2"
    return attrs


def _fft_1d(
    da: xr.DataArray, dim: str, func: Callable[[np.ndarray], np.ndarray], kind: str
) -> xr.DataArray:
    if dim not in da.dims:
        raise ValueError(f"{kind} spectrum: dim {dim!r} not in {da.dims}")
    n = da.sizes[dim]
    out = xr.apply_ufunc(
        func,
        _as_single_chunk(da, [dim]).astype(np.float64),
        input_core_dims=[[dim]],
        output_core_dims=[[WAVENUMBER]],
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {WAVENUMBER: n // 2 + 1}},
    )
    m = np.arange(n // 2 + 1)
    wave_attrs = {"long_name": f"wavenumber along {dim} (cycles per {dim} length)", "units": "1"}
    out = out.assign_coords({WAVENUMBER: (WAVENUMBER, m, wave_attrs), "resolved": (WAVENUMBER, m > 0)})
    out.attrs = _spectrum_attrs(da, kind)
    return out.rename(da.name)


def zonal_spectrum(da: xr.DataArray, lon_dim: str = "lon") -> xr.DataArray:
    """Power per zonal wavenumber along a periodic dim: (..., lon, ...) -> (..., wavenumber).

    Every other dim is kept (average with :func:`field_spectrum` or ``.mean``). Per row,
    ``E.sum("wavenumber")`` equals the mean of ``da**2`` over the row's valid cells; rows with
    no valid cell are NaN. Works for any periodic dim (e.g. ``lon_dim="x"`` on a channel).
    """
    return _fft_1d(da, lon_dim, _periodic_1d, "zonal")


def windowed_spectrum(da: xr.DataArray, dim: str = "x") -> xr.DataArray:
    """Power per wavenumber along a non-periodic dim: (..., dim, ...) -> (..., wavenumber).

    The fallback for regional grids and finite boxes: each row is linearly detrended over its
    valid cells and tapered with a Hann window before the FFT (Harris 1978, Proc. IEEE 66(1));
    ``E.sum("wavenumber")`` is the taper-weighted mean square of the detrended row. Rows with
    fewer than two valid cells are NaN.
    """
    return _fft_1d(da, dim, _windowed_1d, "windowed (detrended, Hann)")


def _uniform_spacing(da: xr.DataArray, dim: Hashable) -> float:
    """Spacing of a uniform numeric coord along ``dim``, else 1 (grid units)."""
    if dim in da.coords and da.sizes[dim] > 1 and np.issubdtype(da[dim].dtype, np.number):
        c = np.asarray(da[dim].values, dtype=float)
        step = np.diff(c)
        if np.allclose(step, step[0], rtol=1e-6) and step[0] != 0:
            return float(abs(step[0]))
    return 1.0


def isotropic_spectrum(
    da: xr.DataArray, dims: Sequence[str] = ("y", "x"), spacing: dict[str, float] | None = None
) -> xr.DataArray:
    """Radial shell-binned power on a periodic 2D or 3D box: (..., *dims) -> (..., wavenumber).

    ``E(k_n) = sum_{|k - k_n| < dk/2} |a_k|^2`` with ``a_k`` the DFT coefficients divided by
    the number of cells, so ``E.sum("wavenumber")`` is the mean of ``da**2`` over the valid
    cells. ``k`` is in cycles per unit of the coords (``spacing`` overrides per dim); shells
    have width ``dk = 1 / min_i L_i``. Other dims are kept; fields with no valid cell are NaN.
    """
    dims = tuple(dims)
    if len(dims) not in (2, 3) or any(d not in da.dims for d in dims):
        raise ValueError(f"isotropic spectrum: dims {dims} must be 2 or 3 dims of {da.dims}")
    spacing = dict(spacing or {})
    sizes = [da.sizes[d] for d in dims]
    steps = [float(spacing.get(d, _uniform_spacing(da, d))) for d in dims]
    lengths = [n * h for n, h in zip(sizes, steps, strict=True)]
    dk = 1.0 / min(lengths)
    axes = np.meshgrid(*[np.fft.fftfreq(n, d=h) for n, h in zip(sizes, steps, strict=True)], indexing="ij")
    kmag = np.sqrt(sum(k**2 for k in axes))
    shell = np.rint(kmag / dk).astype(np.int64).ravel()
    n_shells = int(shell.max()) + 1
    n_cells = shell.size
    onehot = scipy.sparse.csr_matrix(
        (np.ones(n_cells), (np.arange(n_cells), shell)), shape=(n_cells, n_shells)
    )
    nyquist = min(1.0 / (2.0 * h) for h in steps)
    k = dk * np.arange(n_shells)

    def binned(x: np.ndarray) -> np.ndarray:
        lead = x.shape[: -len(dims)]
        anomaly, mu, n_valid = _masked_anomaly(x.reshape(-1, n_cells))
        axes_ = tuple(range(1, len(dims) + 1))
        power = np.abs(np.fft.fftn(anomaly.reshape(-1, *sizes), axes=axes_) / n_cells) ** 2
        power = power.reshape(-1, n_cells)
        power[:, 0] = mu**2 * n_valid / n_cells  # flat index 0 is k = 0
        e = np.asarray((onehot.T @ power.T).T)
        return _per_valid_cell(e, n_valid, n_cells).reshape(*lead, n_shells)

    out = xr.apply_ufunc(
        binned,
        _as_single_chunk(da, dims).astype(np.float64),
        input_core_dims=[list(dims)],
        output_core_dims=[[WAVENUMBER]],
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {WAVENUMBER: n_shells}},
    )
    wave_attrs = {"long_name": f"radial wavenumber over {dims} (cycles per unit of the coords)"}
    resolved = (k > 0) & (k <= nyquist * (1 + 1e-9))
    out = out.assign_coords({WAVENUMBER: (WAVENUMBER, k, wave_attrs), "resolved": (WAVENUMBER, resolved)})
    out.attrs = _spectrum_attrs(da, f"isotropic {len(dims)}D")
    return out.rename(da.name)


def field_spectrum(
    da: xr.DataArray,
    *,
    weights: xr.DataArray,
    periodic: Collection[str],
    keep: Sequence[str] = (),
) -> xr.DataArray:
    """The spectrum a field's geometry allows, averaged over samples and rows: -> (*keep, wavenumber).

    ``da`` has dims ``(S, [D], Y, X)``; ``weights`` ``([D], Y, X)``. The method follows the
    geometry:

    * ``Y`` and ``X`` periodic: :func:`isotropic_spectrum` over the periodic spatial dims not
      in ``keep`` (3D when ``D`` is a periodic spatial axis, else 2D per depth);
    * only one horizontal dim periodic (global lat/lon: ``lon``): :func:`zonal_spectrum`;
    * neither: :func:`windowed_spectrum` along ``X`` (regional grids, finite boxes).

    Transformed blocks (rows, planes, volumes) are averaged with the weight
    ``sum(weights * valid)`` over the block, so on lat/lon grids the zonal spectrum sums to the
    cos-lat weighted mean square over valid cells (Parseval). ``attrs["method"]`` names the
    method.
    """
    y_dim, x_dim = (str(d) for d in da.dims[-2:])
    space = [str(d) for d in da.dims[1:] if d not in keep]
    if y_dim in periodic and x_dim in periodic:
        reduced = [d for d in space if d in periodic]
        spec = isotropic_spectrum(da, reduced)
        method = f"isotropic over {tuple(reduced)}"
    elif x_dim in periodic or y_dim in periodic:
        along = x_dim if x_dim in periodic else y_dim
        reduced = [along]
        spec = zonal_spectrum(da, along)
        method = f"periodic 1D (zonal) along {along!r}"
    else:
        reduced = [x_dim]
        spec = windowed_spectrum(da, x_dim)
        method = f"1D along {x_dim!r}, linearly detrended and Hann-tapered (non-periodic)"
    block_weight = (weights * da.notnull()).sum(reduced)
    over = [d for d in spec.dims if d != WAVENUMBER and d not in keep]
    out = (spec.fillna(0.0) * block_weight).sum(over) / block_weight.sum(over)
    out.attrs = {**spec.attrs, "method": method + "; masked cells zero-filled"}
    return out.rename(da.name)


def spectrum_ratio_low(
    truth_spec: xr.DataArray, recon_spec: xr.DataArray, dim: str = WAVENUMBER
) -> xr.DataArray:
    """Mean of ``E_recon / E_truth`` over the lower half of the resolved wavenumbers (k = 0 excluded).

    ``(..., wavenumber)`` twice -> ``(...)``. Resolved bins come from the ``resolved`` coord
    (else every ``k > 0``); the lower half is the first ``max(1, K // 2)`` of the ``K``
    resolved bins. 1 means the reconstruction keeps the large-scale variance; below 1 it is
    too smooth. NaN propagates (e.g. a bin with no truth energy).
    """
    k_truth, k_recon = np.asarray(truth_spec[dim].values), np.asarray(recon_spec[dim].values)
    if k_truth.shape != k_recon.shape or not np.allclose(k_truth, k_recon):
        raise ValueError("spectrum_ratio_low: truth and reconstruction spectra have different wavenumbers")
    if "resolved" in truth_spec.coords:
        resolved = np.asarray(truth_spec["resolved"].values, dtype=bool)
    else:
        resolved = k_truth > 0
    idx = np.flatnonzero(resolved)
    if idx.size == 0:
        raise ValueError("spectrum_ratio_low: no resolved wavenumber above 0")
    low = idx[: max(1, idx.size // 2)]
    ratio = recon_spec.isel({dim: low}).drop_vars(dim) / truth_spec.isel({dim: low}).drop_vars(dim)
    out = ratio.mean(dim, skipna=False)
    return out.drop_vars("resolved", errors="ignore").rename("spectrum_ratio_low")
