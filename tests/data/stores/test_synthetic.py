"""Synthetic samples of a merged augmented store: kept in train, paired with their source states."""

from __future__ import annotations

import numpy as np
import xarray as xr

from simdiff.data.field import Field
from simdiff.data.geometry import Geometry
from simdiff.data.loading.loader import window_targets
from simdiff.data.stores.split import block_ids, split_labels
from simdiff.data.stores.synthetic import arrange


def merged(pair_source: list[int] | None) -> Field:
    """6 real samples (values 0..5) then 3 synthetic ones (values 100 + source)."""
    values = np.array([0, 1, 2, 3, 4, 5, 102, 105, 100], dtype=float)
    data = xr.Dataset({"q": (("time", "y", "x"), values[:, None, None] * np.ones((9, 2, 3)))},
                      coords={"time": np.arange(9)})
    geometry = Geometry(("y", "x"), periodic=frozenset(),
                        weights=xr.DataArray(np.ones((2, 3)), dims=("y", "x")),
                        mask=xr.DataArray(np.ones((2, 3), bool), dims=("y", "x")))
    flags = xr.DataArray(np.array([False] * 6 + [True] * 3), dims="time")
    source = None if pair_source is None else xr.DataArray(np.array(pair_source), dims="time")
    return Field(data=data, geometry=geometry, synthetic=flags, pair_source=source)


def test_pairs_follow_a_copy_of_their_source_state_and_are_one_window_each() -> None:
    out = arrange(merged([-1] * 6 + [2, 5, -1]))  # the third synthetic sample has no source
    assert out is not None and out.pairs == 2
    q = out.field.data["q"].values[:, 0, 0]
    assert q.tolist() == [0, 1, 2, 3, 4, 5, 2, 102, 5, 105, 100]
    assert out.synthetic.tolist() == [False] * 6 + [False, True, False, True, True]
    assert out.head.tolist() == [False] * 6 + [True, False, True, False, False]
    assert out.field.data["time"].values.tolist() == list(range(11))  # renumbered
    sample = out.field.data["time"]
    split = split_labels(sample, (4 / 6, 1 / 6, 1 / 6), synthetic=out.synthetic, head=out.head)
    assert split.values.tolist() == [0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0]
    block = block_ids(split, synthetic=out.synthetic, head=out.head).values
    assert block.tolist() == [0, 0, 0, 0, 1, 2, 3, 3, 4, 4, 5]
    # forecasting windows (x_t, x_{t+1}) in train: the real trajectory's, then each pair's
    targets = window_targets(split.values, block, 0, 2)
    assert targets.tolist() == [1, 2, 3, 7, 9]
    assert [(q[t - 1], q[t]) for t in targets[-2:]] == [(2, 102), (5, 105)]


def test_without_sources_each_synthetic_sample_is_alone_and_nothing_moves() -> None:
    field = merged(None)
    out = arrange(field)
    assert out is not None and out.pairs == 0 and out.field is field
    assert arrange(Field(data=field.data, geometry=field.geometry)) is None
