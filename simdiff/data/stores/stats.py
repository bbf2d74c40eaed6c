"""Out-of-core normalisation statistics, the checks that come with them, and (de)normalisation.

One dask pass over the data computes, per variable and per sample and level, the mean and the
sum of squared deviations of the transformed values over the valid cells, plus counts of
non-finite values and out-of-domain values at valid cells. The per-sample moments are combined
on the train split only (no leakage) with the pairwise update of Chan, Golub & LeVeque,
"Algorithms for computing the sample variance", The American Statistician 37(3), 1983, eq. 1.5b:

    M2 = sum_i M2_i + sum_i n_i (mean_i - mean)^2,     mean = sum_i n_i mean_i / N,

in float64, which avoids the cancellation of the one-pass E[x^2] - E[x]^2 form. The statistics
are population moments (ddof 0) over cells, unweighted: every valid cell counts once.

Normalised values are ``z = (T(x) - mean) / std`` at valid cells and 0 at masked cells;
:func:`denormalise` inverts this to physical units with NaN at masked cells.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

import dask
import dask.array as da
import numpy as np
import xarray as xr

from simdiff.base.errors import DataError
from simdiff.data.stores import profile as level_profile
from simdiff.data.stores.profile import Profile
from simdiff.data.transforms import Bounded, Identity, Transform, from_spec

A = TypeVar("A")

#: A variable whose std is below this fraction of |mean| is constant up to float32 rounding.
CONSTANT_RTOL = 1e-7

_MEAN, _M2, _NONFINITE, _INVALID = range(4)


def transform_of(transforms: Mapping[str, Transform], name: str) -> Transform:
    """The transform declared for ``name``, or Identity when none is."""
    return transforms.get(name, Identity())


def _sample_moments(
    raw: np.ndarray, mask: np.ndarray, transform: Transform, ref: np.ndarray | None = None,
    profile: Profile | None = None,
) -> np.ndarray:
    """Per sample and level: [mean, M2, #non-finite, #out-of-domain] over valid cells.

    raw: (k, D, Y, X); mask: (D, Y, X) bool; ref: (k, D, Y, X) the samples' reference fields
    (moments of ``T(raw) - T(ref)``, standardised by ``profile`` when given) or None. Returns
    float64 (k, 4, D). One sample at a time, so the float64 temporaries stay the size of one
    sample.
    """
    n = mask.sum(axis=(-2, -1)).astype(np.float64)  # (D,)
    out = np.zeros((raw.shape[0], 4, raw.shape[1]), dtype=np.float64)
    bounded = isinstance(transform, Bounded)
    for i, x in enumerate(raw):
        out[i, _NONFINITE] = (~np.isfinite(x) & mask).sum(axis=(-2, -1))
        if bounded:
            out[i, _INVALID] = (np.asarray(transform.invalid(x)) & mask).sum(axis=(-2, -1))  # type: ignore[attr-defined]
        # Masked cells may hold anything (NaN, fill values); they are discarded below.
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            t = transform.forward(x.astype(np.float64))
            if ref is not None:
                t = relative(transform, t, ref[i].astype(np.float64), profile)
            t = np.where(mask, t, 0.0)
            mean = t.sum(axis=(-2, -1)) / n
            t -= mean[:, None, None]
        t[~np.broadcast_to(mask, t.shape)] = 0.0
        out[i, _MEAN] = mean
        out[i, _M2] = np.einsum("dyx,dyx->d", t, t)
    return out


def _sample_blocks(var: xr.DataArray, block_samples: int) -> da.Array:
    """``var`` ``(S, [D], Y, X)`` as a dask array of whole-sample blocks, shaped ``(S, D', Y, X)``
    (``D' = 1`` without a depth axis)."""
    x = da.asarray(var.data).rechunk((block_samples, *(-1,) * (var.ndim - 1)))
    return x if x.ndim == 4 else x[:, None]


def _level_moments(
    raw: np.ndarray, mask: np.ndarray, transform: Transform, ref: np.ndarray, edges: np.ndarray
) -> np.ndarray:
    """Per sample: :func:`simdiff.data.stores.profile.bin_moments` of ``T(raw) - T(ref)`` by the
    level ``T(ref)``; float64 (k, 3, bins). Non-finite values are left to the moments pass."""
    out = np.zeros((raw.shape[0], 3, edges.size - 1), dtype=np.float64)
    for i, x in enumerate(raw):
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            level = transform.forward(ref[i].astype(np.float64))
            d = transform.forward(x.astype(np.float64)) - level
        valid = mask & np.isfinite(d) & np.isfinite(level)
        out[i] = level_profile.bin_moments(d, level, valid, edges)
    return out


def _level_profiles(
    data: xr.Dataset, mask3: np.ndarray, train: np.ndarray, transforms: Mapping[str, Transform],
    reference: xr.Dataset, bins: int, block_samples: int, origin: str,
) -> dict[str, Profile]:
    """The reference-level profile of every variable with a reference (two dask passes: the
    range of ``T(reference)`` over the train split's valid cells, then the binned moments)."""
    out = {}
    for name in referenced(data, reference):
        transform = transform_of(transforms, name)
        x = _sample_blocks(data[name], block_samples)
        ref = _reference_blocks(reference, name, x.chunks)
        assert ref is not None
        with np.errstate(invalid="ignore", divide="ignore"):
            level = transform.forward(ref[np.flatnonzero(train)].astype(np.float64))
            level = da.where(np.broadcast_to(mask3, level.shape[1:]), level, np.nan)
            lo, hi = dask.compute(da.nanmin(level), da.nanmax(level))
        if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
            raise DataError(f"{origin}: the reference field of {name!r} does not vary over the train split's "
                            f"valid cells (T(reference) from {lo} to {hi}); set prepare.reference_profile: 0")
        edges = np.linspace(float(lo), float(hi), bins + 1)
        moments = da.map_blocks(
            _level_moments, x, mask3, transform, ref, edges, dtype=np.float64,
            chunks=(x.chunks[0], (3,), (bins,)), drop_axis=3,
        ).compute()
        try:
            out[name] = level_profile.fit(moments[train].sum(axis=0), edges)
        except ValueError as e:
            raise DataError(f"{origin}: variable {name!r}: {e}; set prepare.reference_profile: 0") from e
    return out


def _first_bad_cell(data: xr.DataArray, mask: xr.DataArray, counts: np.ndarray, bad) -> str:
    """Describe the first (sample, cell) where ``bad(values) & mask``: labels and indices."""
    s = int(np.flatnonzero(counts.reshape(counts.shape[0], -1).sum(axis=1) > 0)[0])
    sample = data.isel({data.dims[0]: s}).values
    cell = tuple(int(i) for i in np.argwhere(bad(sample) & mask.values)[0])
    where = [f"{data.dims[0]}={_label(data, data.dims[0], s)} (index {s})"]
    where += [f"{d}={_label(data, d, i)}" for d, i in zip(data.dims[1:], cell, strict=True)]
    return ", ".join(where) + f"; cell index {cell}"


def _label(data: xr.DataArray, dim: str, i: int) -> str:
    return str(data[dim].values[i]) if dim in data.coords else str(i)


def compute_statistics(
    data: xr.Dataset,
    mask: xr.DataArray,
    split: xr.DataArray,
    transforms: Mapping[str, Transform],
    *,
    block_samples: int,
    origin: str = "the field",
    pool_depth: bool = False,
    reference: xr.Dataset | None = None,
    profile_bins: int = 0,
) -> xr.Dataset:
    """Mean and std of each transformed variable per level over the train split's valid cells.

    A variable with a per-sample reference field (``reference[name]``, e.g. a molecule's
    promolecular density) is modelled relative to it: its moments are those of
    ``T(x) - T(reference)`` (:func:`relative`); with ``profile_bins`` > 0, of that difference
    standardised by the reference's level (:mod:`simdiff.data.stores.profile`), whose profile
    the result then holds too.

    Pressure levels get their own statistics (z at 200 hPa and at 850 hPa differ by an order
    of magnitude); with ``pool_depth`` every level shares one mean and std, as a voxel grid's
    ``z`` axis needs (a per-slice normalisation would break rotation equivariance).

    Args:
        data: variables ``(S, [D], Y, X)`` (numpy or dask backed; read once, in blocks).
        mask: bool ``([D], Y, X)``, True where valid.
        split: int8 ``(S)`` split codes; statistics use code 0 (train) only.
        transforms: variable -> Transform applied before the moments (Identity if absent).
        block_samples: samples per dask block (memory per task ~ 4 x block x float64).
        origin: the source files, for error messages.
        pool_depth: one mean/std over all levels (broadcast over ``[D]`` in the result).
        reference: per-sample reference fields of some variables (physical units), or None.
        profile_bins: bins of the reference level for the profile; 0: none.

    Returns:
        Dataset with float64 ``mean`` and ``std`` over ``(channel, [D])``; with ``profile_bins``
        and a reference also ``profile_level/mean/scale (channel, profile_bin)``.

    Raises:
        DataError: NaN/inf at a valid cell (count, first index, fix), a value outside a
            transform's domain (count, first index), a variable constant on the train split,
            or a level with no valid cells.
    """
    names = [str(v) for v in data.data_vars]
    depth = mask.dims[:-2]
    mask3 = mask.values.reshape((-1, *mask.shape[-2:]))  # (D', Y, X), D' = 1 for 2D
    profiles: dict[str, Profile] = {}
    if profile_bins and reference is not None:
        profiles = _level_profiles(data, mask3, split.values == 0, transforms, reference, int(profile_bins),
                                   block_samples, origin)
    lazy = []
    for name in names:
        x = _sample_blocks(data[name], block_samples)  # (S, D', Y, X)
        ref = _reference_blocks(reference, name, x.chunks)
        lazy.append(
            da.map_blocks(
                _sample_moments,
                x,
                mask3,
                transform_of(transforms, name),
                *(() if ref is None else (ref, profiles.get(name))),
                dtype=np.float64,
                chunks=(x.chunks[0], (4,), (mask3.shape[0],)),
                drop_axis=3,
            )
        )
    moments = dask.compute(*lazy)

    train = split.values == 0
    n_i = mask3.sum(axis=(-2, -1)).astype(np.float64)  # valid cells per sample and level
    means, stds = [], []
    for name, m in zip(names, moments, strict=True):
        var = data[name]
        nonfinite = m[:, _NONFINITE]
        if nonfinite.sum() > 0:
            first = _first_bad_cell(var, mask, nonfinite, lambda v: ~np.isfinite(v))
            raise DataError(
                f"{origin}: variable {name!r} has {int(nonfinite.sum())} NaN/inf values at cells the "
                f"mask says are valid; the first at {first}. Fix: mask those cells (they belong "
                f"in the geometry mask, e.g. land) or fill them (e.g. ds[{name!r}].interpolate_na "
                f"or .fillna) before prepare"
            )
        invalid = m[:, _INVALID]
        if invalid.sum() > 0:
            t = transform_of(transforms, name)
            first = _first_bad_cell(var, mask, invalid, lambda v, t=t: np.asarray(t.invalid(v)))
            raise DataError(
                f"{origin}: variable {name!r} has {int(invalid.sum())} values outside the domain of "
                f"its transform {t!r} (e.g. negative values under log1p); the first at {first}. "
                f"Fix: correct the data, or declare no transform for {name!r} in the data config"
            )
        if np.any(n_i == 0):
            level = int(np.flatnonzero(n_i == 0)[0])
            raise DataError(
                f"{origin}: variable {name!r} has no valid cells at level index {level}; "
                f"drop that level (data.levels) or fix the mask"
            )
        mt = m[train]
        mean = mt[:, _MEAN].mean(axis=0)  # equal n_i per sample: the n_i-weighted mean
        m2 = mt[:, _M2].sum(axis=0) + (n_i * (mt[:, _MEAN] - mean) ** 2).sum(axis=0)
        count = n_i * train.sum()
        if pool_depth:  # one mean/std over every level (Chan et al. 1983 pairwise combination)
            pooled = (count * mean).sum() / count.sum()
            m2 = np.full_like(m2, m2.sum() + (count * (mean - pooled) ** 2).sum())
            mean, count = np.full_like(mean, pooled), np.full_like(count, count.sum())
        std = np.sqrt(m2 / count)
        const = ~(std > CONSTANT_RTOL * np.abs(mean))
        if np.any(const):
            level = int(np.flatnonzero(const)[0])
            at = f" at {depth[0]} index {level}" if depth else ""
            raise DataError(
                f"{origin}: variable {name!r} is constant on the train split{at} (mean {mean[level]:.6g}, "
                f"std {std[level]:.3g}); it cannot be normalised. Fix: drop it from data.variables"
                f"{' or drop that level' if depth else ''}"
            )
        means.append(mean)
        stds.append(std)

    shape = (len(names),) if not depth else (len(names), mask3.shape[0])
    coords = {"channel": np.array(names, dtype=object)}
    coords.update({d: mask[d] for d in depth if d in mask.coords})
    dims = ("channel", *depth)
    out = xr.Dataset(
        {
            "mean": (
                dims,
                np.reshape(means, shape),
                {"long_name": "mean of the transformed variable (train)"},
            ),
            "std": (dims, np.reshape(stds, shape), {"long_name": "std of the transformed variable (train)"}),
        },
        coords=coords,
    )
    if profiles:
        out = out.merge(level_profile.to_dataset(profiles, names))
    return out


def statistics(store: xr.Dataset) -> xr.Dataset:
    """What :func:`normalise` takes from a training store's Dataset: ``mean``, ``std`` and the
    reference-level profile where the store has one."""
    return store[[v for v in ("mean", "std", *level_profile.VARIABLES) if v in store]]


def referenced(data: xr.Dataset, reference: xr.Dataset | None) -> list[str]:
    """The variables of ``data`` that have a reference field (in ``data``'s order)."""
    return [] if reference is None else [str(n) for n in data.data_vars if n in reference.data_vars]


def _reference_blocks(reference: xr.Dataset | None, name: str, chunks: tuple) -> da.Array | None:
    """``reference[name]`` as float32 (as the store keeps it), chunked like its variable."""
    if reference is None or name not in reference.data_vars:
        return None
    ref = da.asarray(reference[name].data).astype(np.float32)
    ref = ref if ref.ndim == len(chunks) else ref[:, None]
    return ref.rechunk(chunks)


def relative(transform: Transform, t: A, ref: A, profile: Profile | None = None) -> A:
    """``t - T(ref)``: a transformed value relative to the transformed reference; standardised
    by the reference's level with a ``profile`` (:mod:`simdiff.data.stores.profile`)."""
    level = transform.forward(ref)
    d = t - level  # type: ignore[operator]
    return d if profile is None else profile.forward(d, level)  # type: ignore[return-value]


def _normalise_block(
    raw: np.ndarray, mask: np.ndarray, mean: np.ndarray, std: np.ndarray, transform: Transform,
    ref: np.ndarray | None = None, profile: Profile | None = None,
) -> np.ndarray:
    """(k, [D], Y, X) raw -> float32 ``(T(raw) [- T(ref)] - mean) / std``, 0 at masked cells."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # masked cells only
        t = transform.forward(raw)
        if ref is not None:
            t = relative(transform, t, ref.astype(np.float64), profile)
        z = (t - mean) / std
    return np.where(mask, z, 0).astype(np.float32)


def normalise(
    data: xr.Dataset,
    stats: xr.Dataset,
    mask: xr.DataArray,
    transforms: Mapping[str, Transform],
    *,
    block_samples: int,
    reference: xr.Dataset | None = None,
) -> xr.DataArray:
    """Lazy normalised array ``(S, channel, [D], Y, X)`` float32, 0 at masked cells.

    Uses the float32 mean/std exactly as they are stored, so :func:`denormalise` inverts it;
    a variable with a reference field is normalised relative to it (:func:`relative`), with the
    reference-level profile of ``stats`` where it has one.
    """
    names = [str(v) for v in data.data_vars]
    mean32 = stats["mean"].astype(np.float32)
    std32 = stats["std"].astype(np.float32)
    spatial = (1,) * 2
    parts = []
    for name in names:
        x = da.asarray(data[name].data)
        x = x.rechunk((block_samples, *(-1,) * (x.ndim - 1)))
        m = mean32.sel(channel=name).values.reshape((-1, *spatial) if mask.ndim == 3 else ())
        s = std32.sel(channel=name).values.reshape((-1, *spatial) if mask.ndim == 3 else ())
        ref = _reference_blocks(reference, name, x.chunks)
        parts.append(
            da.map_blocks(
                _normalise_block, x, mask.values, m, s, transform_of(transforms, name),
                *(() if ref is None else (ref, level_profile.from_dataset(stats, name))), dtype=np.float32,
            )
        )
    first = data[names[0]]
    dims = (first.dims[0], "channel", *first.dims[1:])
    coords = {k: v for k, v in first.coords.items() if set(v.dims) <= set(dims)}
    coords["channel"] = np.array(names, dtype=object)
    return xr.DataArray(da.stack(parts, axis=1), dims=dims, coords=coords, name="data")


def denormalise(store: xr.Dataset) -> xr.Dataset:
    """Physical-units Dataset from a training-store-shaped Dataset; NaN at masked cells.

    Args:
        store: a Dataset with ``data`` ``(S, channel, [D], Y, X)``, ``mean``/``std``
            ``(channel, [D])``, ``mask`` ``([D], Y, X)`` and the store attrs ``transforms``
            and ``variables`` (e.g. ``TrainingStore.dataset()``, or generated samples put in
            its place); and ``reference`` ``(S, reference_channel, [D], Y, X)`` where the
            store models variables relative to per-sample reference fields (its sample dims
            those of ``data``), with the store's reference-level profile where it has one.

    Returns:
        One variable per channel, dims ``(S, [D], Y, X)``, with the source's attrs.
    """
    specs = store.attrs.get("transforms", {})
    variables = store.attrs.get("variables", {})
    out = {}
    for c in store["channel"].values:
        name = str(c)
        z = store["data"].sel(channel=c, drop=True)
        t = z * store["std"].sel(channel=c, drop=True) + store["mean"].sel(channel=c, drop=True)
        transform = (from_spec(specs[name], source=str(store.encoding.get("source", "the store's attrs")),
                               key=f"transforms.{name}") if name in specs else Identity())
        if "reference" in store and name in store["reference_channel"].values:
            ref = store["reference"].sel(reference_channel=name, drop=True).astype(np.float64)
            level = transform.forward(ref)
            profile = level_profile.from_dataset(store, name)
            t = (t if profile is None else profile.inverse(t, level)) + level
        x = transform.inverse(t).where(store["mask"])
        x.attrs = dict(variables.get(name, {}))
        out[name] = x
    return xr.Dataset(out)


def to_physical(
    fields: np.ndarray, dims: tuple[str, ...], store: xr.Dataset, rows: np.ndarray | None = None
) -> xr.Dataset:
    """Normalised model output -> physical Dataset per variable (masked cells NaN), with the
    statistics of ``store`` (a training store's Dataset).

    Args:
        fields: ``(B, [L,] C, [D], Y, X)`` normalised fields.
        dims: their dims (``channel`` among them).
        store: ``mean``, ``std``, ``mask``, the attrs, and ``reference`` where the store models
            variables relative to per-sample reference fields.
        rows: the store sample each field belongs to, shaped like the dims before ``channel``
            (whose reference it is drawn against); needed only by a store with references.
    """
    data = xr.DataArray(fields, dims=dims, coords={"channel": store["channel"]})
    parts = {"data": data, **statistics(store).data_vars, "mask": store["mask"]}
    if "reference" in store:
        lead = dims[: dims.index("channel")]
        if rows is None or np.shape(rows) != data.shape[: len(lead)]:
            raise ValueError(f"the store models {list(store['reference_channel'].values)} relative to "
                             f"per-sample reference fields: give the store sample of each field (rows shaped "
                             f"{data.shape[: len(lead)]}, got {None if rows is None else np.shape(rows)})")
        parts["reference"] = _references_at(store, xr.DataArray(np.asarray(rows, dtype=np.int64), dims=lead))
    return denormalise(xr.Dataset(parts, attrs=store.attrs))


def _references_at(store: xr.Dataset, rows: np.ndarray | xr.DataArray) -> xr.DataArray:
    """``store["reference"]`` at store samples ``rows`` (an index array, or an indexer whose dims
    replace the sample dim), in memory, ``reference_channel`` its only coordinate."""
    ref = store["reference"]
    picked = ref.isel({ref.dims[0]: rows}).load()
    return picked.drop_vars([c for c in picked.coords if c != "reference_channel"])


def store_reference(store: xr.Dataset, rows: np.ndarray) -> xr.Dataset | None:
    """The reference fields of store samples ``rows`` as physical variables ``(sample, [D], Y, X)``
    (what ``normalise(..., reference=)`` takes), or None for a store without references."""
    if "reference" not in store:
        return None
    picked = _references_at(store, np.asarray(rows, dtype=np.int64))
    return xr.Dataset({str(c): picked.sel(reference_channel=c, drop=True)
                       for c in picked["reference_channel"].values})
