"""Transforms: exact round trips on real data, and inverses that keep each variable's domain."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from simdiff.data.transforms import Clip, Identity, Log1p, domain_of, from_spec


def test_log1p_round_trip_keeps_exact_zeros_and_wet_values_through_float32(shared_data):
    """WFDE5 hourly precipitation: 76 % exact zeros, the rest >= 8.3e-6; normalised in float32."""
    pr = xr.open_dataset(shared_data / "climate" / "unifhy_wfde5_precipitation_flux.nc")["pr"].values
    x = pr[np.isfinite(pr)].astype(np.float64)
    t = Log1p(scale=1e-4, zero_below=4e-6)
    y = t.forward(x)
    mean, std = np.float32(y.mean()), np.float32(y.std())
    z = ((y - mean) / std).astype(np.float32)  # what the training store holds
    back = t.inverse(z.astype(np.float64) * std + mean)
    assert np.array_equal(back == 0, x == 0)  # every dry cell exactly 0, no wet cell lost
    wet = x > 0
    np.testing.assert_allclose(back[wet], x[wet], rtol=1e-5)


def test_log1p_inverse_is_non_negative_and_dry_below_the_threshold():
    t = Log1p(scale=1.0, zero_below=0.025)
    y = np.linspace(-5, 3, 1001)
    x = t.inverse(y)
    assert (x >= 0).all()
    assert np.array_equal(x == 0, y < np.log1p(0.025))  # dry exactly where the model is below the cut
    assert (x[x > 0] >= 0.025).all()
    assert domain_of(t) == (0.0, None)
    assert (Log1p(scale=2.0).inverse(y) >= 0).all()  # zero_below=0: only the censoring at 0
    with pytest.raises(ValueError, match="zero_below"):
        Log1p(zero_below=-1.0)


def test_clip_censors_onto_its_interval_and_flags_values_outside():
    c = Clip(min=0.0, max=1.0)
    x = np.array([-0.5, 0.0, 0.3, 1.0, 1.7, np.nan])
    np.testing.assert_array_equal(c.inverse(x)[:5], [0.0, 0.0, 0.3, 1.0, 1.0])
    assert np.isnan(c.inverse(x)[5])
    np.testing.assert_array_equal(c.invalid(x), [True, False, False, False, True, False])
    np.testing.assert_array_equal(Clip(min=0.0).invalid(x), [True, False, False, False, False, False])
    assert domain_of(c) == (0.0, 1.0) and domain_of(Identity()) == (None, None)
    with pytest.raises(ValueError, match="min < max"):
        Clip(min=1.0, max=0.0)


@pytest.mark.parametrize("t", [Identity(), Log1p(scale=1e-3, zero_below=1e-5), Clip(min=0.0)])
def test_spec_round_trip(t):
    assert from_spec(t.spec()) == t
