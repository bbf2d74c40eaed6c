"""The successor test: the true next state against the members drawn from its source."""

import numpy as np
import pytest
import xarray as xr

from simdiff.metrics.indistinguishability import successor_test


def _case(members: np.ndarray, truth: np.ndarray) -> tuple[xr.DataArray, xr.DataArray]:
    return (xr.DataArray(members, dims=("source", "member", "cell")),
            xr.DataArray(truth, dims=("source", "cell")))


def test_two_members_by_hand():
    # members at 0 and 2, truth at 1 (one feature): d(member, truth) = 1, d(member, member) = 2
    out = successor_test(*_case(np.array([[[0.0], [2.0]]]), np.array([[1.0]])))
    assert out.attrs["distance_ratio"] == pytest.approx(0.5)
    # mean distance to the others: member 0 -> (2 + 1)/2, member 2 -> (2 + 1)/2, truth -> 1: most central
    assert out["truth_rank"].item() == 0.0
    assert out.attrs["truth_most_central"] == 1.0
    # truth at 5: farthest from both members (5, 3 against 2): the outlier
    out = successor_test(*_case(np.array([[[0.0], [2.0]]]), np.array([[5.0]])))
    assert out["truth_rank"].item() == 1.0
    assert out.attrs["distance_ratio"] == pytest.approx(2.0)


def test_exchangeable_draws_pass_and_copies_and_tight_members_do_not():
    rng = np.random.default_rng(0)
    s, m, f = 300, 6, 40
    centre = rng.normal(size=(s, 1, f))
    fields = centre + rng.normal(size=(s, m + 1, f))  # m members and the truth, one distribution
    fair = successor_test(*_case(fields[:, :m], fields[:, m]))
    lo, hi = fair.attrs["distance_ratio_ci"]
    assert lo < 1.0 < hi
    lo, hi = fair.attrs["rank_mean_ci"]
    assert lo < 0.5 < hi
    assert fair.attrs["truth_most_central"] == pytest.approx(1 / (m + 1), abs=0.05)
    # copies: members are the truth plus a little noise -> the truth is the centre of its members
    truth = fields[:, m]
    copies = successor_test(*_case(truth[:, None] + 0.3 * rng.normal(size=(s, m, f)), truth))
    assert copies.attrs["distance_ratio_ci"][1] < 0.8
    assert copies.attrs["rank_mean"] < 0.1
    # under-dispersed members around a wrong centre: the truth is an outlier
    tight = successor_test(*_case(centre + 0.2 * rng.normal(size=(s, m, f)), truth))
    assert tight.attrs["distance_ratio_ci"][0] > 1.5
    assert tight.attrs["rank_mean"] > 0.9


def test_masked_features_are_left_out_and_one_member_is_refused():
    members = np.array([[[0.0, np.nan], [2.0, np.nan]]])
    out = successor_test(*_case(members, np.array([[1.0, 7.0]])))
    assert out.attrs["distance_ratio"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="at least 2"):
        successor_test(*_case(np.zeros((3, 1, 4)), np.zeros((3, 4))))
