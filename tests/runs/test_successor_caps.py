"""The successor test's memory bound: evenly spaced sources, at most SUCCESSOR_VALUES values a side."""

from simdiff.runs.evaluation import SUCCESSOR_VALUES, _affordable, _evenly


def test_sources_are_capped_by_the_values_they_load_and_spread_evenly():
    assert _affordable(2, 4 * 64 * 64) * 2 * 4 * 64 * 64 <= SUCCESSOR_VALUES  # QG: 1525 sources
    assert _affordable(10, 721 * 1440) == 20  # a global 0.25 degree grid: the floor of 20
    picked = _evenly(443, 47)
    assert len(picked) == 47 and picked[0] == 0 and picked[-1] == 442
    assert list(_evenly(5, 47)) == [0, 1, 2, 3, 4]
