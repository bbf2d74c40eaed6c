"""Synthetic samples in a training store: kept in train, and paired with their source states.

``simdiff augment`` writes a store whose samples carry ``synthetic`` flags and, for a forecasting
model, draws of the *next* state ``x' ~ p(x_{t+1} | x_t)`` with ``source_index`` naming the real
state ``x_t`` they were drawn from (attr ``simdiff_draws = "next_state"``). A forecaster learns
from such a sample only as the pair ``(x_t, x')``. With the source states in the same store
(``augment.merge=true`` writes the real training samples first), :func:`arrange` orders the
samples as the real ones in their order, then for each synthetic sample a copy of its source
state followed by the sample itself; :func:`split_labels` and :func:`block_ids` of
:mod:`simdiff.data.stores.split` then keep every pair in train as a block of two, so each pair
is exactly one forecasting window, and a window never runs from a real trajectory into a
generated sample. A source state thus appears twice in train (once in its trajectory, once
heading its pair).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import xarray as xr

from simdiff.data.field import Field


@dataclass(frozen=True)
class Arranged:
    """A field in training order with its per-sample roles.

    Attributes:
        field: the samples, in their new order (the sample coordinate renumbered 0..n-1 when
            states were copied to head pairs), with their ``synthetic`` flags.
        head: ``(n)`` True for a copy of a real state heading a pair.
        pairs: the number of (state, next state) pairs.
    """

    field: Field
    head: np.ndarray
    pairs: int

    @property
    def synthetic(self) -> np.ndarray:
        """``(n)`` True for a generated sample (the field's flags)."""
        assert self.field.synthetic is not None
        return np.asarray(self.field.synthetic.values, dtype=bool)


def arrange(field: Field) -> Arranged | None:
    """``field`` ordered for training (see the module docstring); None for a field with no
    synthetic samples."""
    if field.synthetic is None:
        return None
    fake = np.asarray(field.synthetic.values, dtype=bool)
    n = fake.size
    source = (np.full(n, -1, np.int64) if field.pair_source is None
              else np.asarray(field.pair_source.values, dtype=np.int64))
    if not (source >= 0).any():
        return Arranged(field, np.zeros(n, bool), 0)
    order: list[int] = [int(i) for i in np.flatnonzero(~fake)]
    head: list[bool] = [False] * len(order)
    for k in np.flatnonzero(fake):
        if source[k] >= 0:
            order.append(int(source[k]))
            head.append(True)
        order.append(int(k))
        head.append(False)
    idx = np.asarray(order)
    sdim = field.sample_dim
    data = field.data.isel({sdim: idx})
    conditions = field.conditions.isel({sdim: idx}) if field.conditions.data_vars else field.conditions
    renumber = {sdim: np.arange(idx.size)}
    data = data.assign_coords(renumber)
    if sdim in conditions.coords:
        conditions = conditions.assign_coords(renumber)
    reference = field.reference
    if reference is not None:
        reference = reference.isel({sdim: idx})
        reference = reference.assign_coords(renumber) if sdim in reference.coords else reference
    flags = xr.DataArray(fake[idx], dims=(sdim,))
    out = replace(field, data=data, conditions=conditions, synthetic=flags, pair_source=None,
                  reference=reference)
    return Arranged(out, np.asarray(head), int((source >= 0).sum()))
