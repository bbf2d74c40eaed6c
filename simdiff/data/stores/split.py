"""Contiguous train/val/test blocks in sample order, and the block ids forecasting windows respect.

Climate samples are correlated in time, so a random split leaks: tomorrow's field sits in
train while today's sits in test. The split is therefore contiguous in sample order: the first
``train`` fraction, then ``val``, then ``test``. A *block* is a maximal run of samples with one
split and no gap in time; a forecasting window (x_t, x_{t+1}, ...) never crosses a block.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from simdiff.base.errors import DataError
from simdiff.data.stores.training import SPLITS

#: A step counts as a gap when it is longer than this multiple of the median step. 1.5 tolerates
#: calendar months (28-31 days) and clock jitter, and catches every missing step (>= 2 x median).
GAP_FACTOR = 1.5


def split_sizes(
    n: int, fractions: tuple[float, float, float], *, origin: str = "the field"
) -> tuple[int, ...]:
    """Sample counts ``(n_train, n_val, n_test)`` of contiguous blocks for ``n`` samples.

    Boundaries are ``round(n * cumsum(fractions))``. A split with a positive fraction gets at
    least one sample; a split with fraction 0 is empty.
    """
    f = np.asarray(fractions, dtype=float)
    if f.shape != (3,) or np.any(f < 0) or not np.isclose(f.sum(), 1.0):
        raise DataError(
            f"split fractions (train, val, test) must be >= 0 and sum to 1, got {tuple(fractions)}"
        )
    edges = np.rint(np.cumsum(f) * n).astype(int)
    edges[-1] = n
    sizes = np.diff(np.concatenate([[0], edges]))
    short = [name for name, fr, k in zip(SPLITS, f, sizes, strict=True) if fr > 0 and k < 1]
    if short:
        needed = int(np.ceil(1.0 / f[f > 0].min()))
        raise DataError(
            f"{origin}: {n} samples are too few for the split fractions {tuple(fractions)}: "
            f"{', '.join(short)} would be empty; provide at least {needed} samples or change "
            f"prepare.split.train/val/test"
        )
    return tuple(int(k) for k in sizes)


def split_labels(
    sample: xr.DataArray,
    fractions: tuple[float, float, float],
    *,
    origin: str = "the field",
    synthetic: np.ndarray | None = None,
    head: np.ndarray | None = None,
) -> xr.DataArray:
    """Split code per sample: int8 over the sample dim, 0 train, 1 val, 2 test (CF flags).

    Args:
        sample: the sample coordinate ``(S)`` (only its length and dim are used).
        fractions: ``(train, val, test)``, summing to 1.
        synthetic: ``(S)`` bool, True for generated samples: they all go to train, and the
            fractions split the real samples, in their order (a model is never validated or
            tested on what a model made).
        head: ``(S)`` bool, True for a copy of a real state heading a (state, synthetic next
            state) pair (:mod:`simdiff.data.stores.synthetic`): train as well.
    """
    fake = np.zeros(sample.size, bool) if synthetic is None else np.asarray(synthetic, dtype=bool)
    if head is not None:
        fake = fake | np.asarray(head, dtype=bool)
    sizes = split_sizes(int((~fake).sum()), fractions, origin=origin)
    codes = np.zeros(sample.size, dtype=np.int8)
    codes[~fake] = np.repeat(np.array(list(SPLITS.values()), dtype=np.int8), sizes)
    return xr.DataArray(
        codes,
        dims=sample.dims,
        coords={sample.dims[0]: sample} if sample.dims[0] in sample.coords else None,
        name="split",
        attrs={
            "flag_values": np.array(list(SPLITS.values()), dtype=np.int8),
            "flag_meanings": " ".join(SPLITS),
            "long_name": "train/val/test split (contiguous blocks in sample order)",
        },
    )


def _elapsed(sample: xr.DataArray) -> np.ndarray | None:
    """Sample positions as float (seconds for datetimes, cftime; the values for numbers), or None."""
    values = sample.values
    if np.issubdtype(values.dtype, np.datetime64):
        return (values - values[0]) / np.timedelta64(1, "s")
    if np.issubdtype(values.dtype, np.number):
        return values.astype(float)
    if values.dtype == object and values.size and hasattr(values[0], "calendar"):  # cftime dates
        return np.array([(v - values[0]).total_seconds() for v in values], dtype=float)
    return None


def block_ids(
    split: xr.DataArray,
    *,
    origin: str = "the field",
    synthetic: np.ndarray | None = None,
    head: np.ndarray | None = None,
) -> xr.DataArray:
    """Contiguous-run ids: int32 over the sample dim, a new id at every split change and gap,
    and one block per synthetic sample (``synthetic``: (S) bool; no forecasting window runs
    from one generated sample into the next, or between real and generated samples), or per
    pair: a synthetic sample right after its ``head`` (a copy of its source state) shares its
    block.

    A gap is a step of the sample coordinate longer than ``GAP_FACTOR`` times the median step
    (e.g. a missing day in daily data). Gaps are only looked for where the sample dim has a
    time-like or numeric coordinate; it must then be strictly increasing.

    Args:
        split: split codes ``(S)`` from :func:`split_labels`, carrying the sample coordinate.
    """
    dim = split.dims[0]
    codes = split.values
    new = np.zeros(codes.shape, dtype=bool)
    new[1:] = codes[1:] != codes[:-1]
    t = _elapsed(split[dim]) if dim in split.coords else None
    if t is not None and t.size > 1:
        step = np.diff(t)
        if np.any(step <= 0):
            i = int(np.flatnonzero(step <= 0)[0])
            raise DataError(
                f"{origin}: coordinate {dim!r} is not strictly increasing at index {i + 1} "
                f"({split[dim].values[i]} -> {split[dim].values[i + 1]}); sort by {dim} and drop "
                f"duplicates (ds.sortby({dim!r}).drop_duplicates({dim!r})) before prepare"
            )
        new[1:] |= step > GAP_FACTOR * np.median(step)
    if synthetic is not None:
        fake = np.asarray(synthetic, dtype=bool)
        heads = np.zeros_like(fake) if head is None else np.asarray(head, dtype=bool)
        apart = fake | heads
        new[1:] |= (apart[1:] | apart[:-1]) & ~(fake[1:] & heads[:-1])
    blocks = np.cumsum(new).astype(np.int32)
    return xr.DataArray(
        blocks,
        dims=split.dims,
        coords=split.coords,
        name="block",
        attrs={"long_name": "contiguous run id (new at each split change and time gap)"},
    )
