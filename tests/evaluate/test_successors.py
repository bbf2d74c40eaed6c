"""The memorisation verdict of next-state draws: grouping by source, standardising, the verdict."""

import numpy as np
import pytest
import xarray as xr

from simdiff.evaluate.successors import Standardiser, by_source, successor_memorisation


def _fields(values: np.ndarray, dims: tuple[str, ...]) -> xr.Dataset:
    return xr.Dataset({"q": (dims, values)}, coords={"level": [1, 2]})


def test_by_source_groups_the_draws_of_each_source_and_skips_single_draws():
    draws = xr.Dataset({"q": (("time", "y"), np.arange(14.0)[:, None] * np.ones((1, 3)))},
                       coords={"time": np.arange(14)})
    source = np.array([5, 5, 5, 9, 9, 9, 9, 2, -1, 7, 7, 7, 7, 7])
    grouped, sources = by_source(draws, "time", source)
    assert sources.tolist() == [5, 7, 9]
    assert grouped.sizes == {"source": 3, "member": 3, "y": 3}
    # the first three draws of each source, in store order
    assert grouped["q"].isel(y=0).values.tolist() == [[0, 1, 2], [9, 10, 11], [3, 4, 5]]
    none, empty = by_source(draws, "time", np.arange(14))
    assert empty.size == 0 and none.sizes["time"] == 0


def test_standardised_distances_are_weighted_rms_in_standard_deviations():
    rng = np.random.default_rng(0)
    train = _fields(rng.normal(3.0, 2.0, size=(500, 2, 4, 4)), ("time", "level", "y", "x"))
    weights = xr.DataArray(np.ones((4, 4)), dims=("y", "x"))
    standardised = Standardiser.fit(train, weights, "time")
    a = standardised(train.isel(time=[0]))
    b = standardised(train.isel(time=[0]) + 2.0)  # about +1 std everywhere
    per_level = 2.0 / train["q"].std(["time", "y", "x"]).values  # standardised per level
    expected = np.sqrt(np.mean(per_level**2))  # the RMS over the equally weighted cells
    assert float(np.sqrt(((b - a) ** 2).sum())) == pytest.approx(expected, rel=1e-9)


def _draws(rng, s, m, f, copy):
    centre = rng.normal(size=(s, 1, f))
    truth = centre[:, 0] + rng.normal(size=(s, f))
    if copy:
        members = truth[:, None] + 0.2 * rng.normal(size=(s, m, f))
    else:
        members = centre + rng.normal(size=(s, m, f))
    return (xr.DataArray(members, dims=("source", "member", "cell")),
            xr.DataArray(truth, dims=("source", "cell")))


def test_the_verdict_tells_copying_from_fair_draws_by_the_held_out_reference():
    rng = np.random.default_rng(1)
    held = _draws(rng, 200, 4, 30, copy=False)
    copied = successor_memorisation(*_draws(rng, 200, 4, 30, copy=True), *held)
    assert copied["copying"] and copied["verdict"].startswith("memorisation")
    fair = successor_memorisation(*_draws(rng, 200, 4, 30, copy=False), *held)
    assert not fair["copying"] and fair["verdict"].startswith("no sign of memorisation")
    assert "one more member" in fair["verdict"]
    alone = successor_memorisation(*_draws(rng, 200, 4, 30, copy=True))
    assert not alone["copying"] and alone["verdict"].startswith("undecided")
    assert alone["held_out"] is None
