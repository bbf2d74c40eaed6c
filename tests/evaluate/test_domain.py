"""Domain checks: below-domain fraction, dry fraction and wet quantiles against closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from simdiff.evaluate.domain import domain_checks


def _case(rng, shape, dry):
    wet = rng.lognormal(0.0, 1.0, size=shape)
    return np.where(rng.random(shape) < dry, 0.0, wet)


@pytest.mark.parametrize("chunked", [False, True])
def test_domain_checks_recover_known_fractions_and_quantiles(chunked):
    rng = np.random.default_rng(0)
    dims = ("init_time", "lead_time", "y", "x")
    obs = xr.DataArray(_case(rng, (4, 3, 40, 50), dry=0.6), dims=dims)
    obs[:, :, :5] = np.nan  # masked rows count nowhere
    members = _case(rng, (8, 4, 3, 40, 50), dry=0.3)
    members[0, 0, 0, 10, 10] = -0.2  # one value below the domain
    fc = xr.DataArray(members, dims=("realization", *dims))
    if chunked:
        fc = fc.chunk({"realization": 1, "init_time": 1, "y": 7})  # as a zarr forecast, unevenly
    weights = xr.DataArray(np.ones((40, 50)), dims=("y", "x"))
    out = domain_checks(fc, obs, weights, 0.0)
    n = 8 * 4 * 3 * 35 * 50
    assert out["below_fraction"] == pytest.approx(1 / n)
    valid = np.isfinite(obs.values)
    assert out["dry_fraction"]["truth"] == pytest.approx((obs.values[valid] == 0).mean())
    assert out["dry_fraction"]["members"] == pytest.approx((members[:, valid] == 0).mean())
    assert out["dry_fraction"]["truth"] == pytest.approx(0.6, abs=0.01)
    q = out["wet_quantiles"]
    wet_t = obs.values[valid][obs.values[valid] > 0]
    wet_m = members[:, valid][members[:, valid] > 0]
    np.testing.assert_allclose(q["truth"], np.quantile(wet_t, q["q"]), rtol=0.01)
    np.testing.assert_allclose(q["members"], np.quantile(wet_m, q["q"]), rtol=0.01)
    # lognormal(0, 1): the median of the wet values is 1, the 90 % quantile exp(1.2816)
    np.testing.assert_allclose(q["truth"][:2], [1.0, np.exp(1.2816)], rtol=0.05)


def test_domain_checks_weight_cells_and_flag_the_upper_bound():
    dims = ("init_time", "lead_time", "lat", "lon")
    obs = xr.DataArray(np.zeros((1, 1, 2, 3)), dims=dims)
    obs[0, 0, 1] = 1.0  # the second latitude row is wet
    fc = xr.DataArray(np.stack([obs.values, np.full((1, 1, 2, 3), 2.0)]), dims=("realization", *dims))
    weights = xr.DataArray([[3.0] * 3, [1.0] * 3], dims=("lat", "lon"))
    out = domain_checks(fc, obs, weights, 0.0, 1.5)
    assert out["dry_fraction"]["truth"] == pytest.approx(0.75)  # 3 / (3 + 1) by weight
    assert out["dry_fraction"]["members"] == pytest.approx(0.375)
    assert out["above_fraction"] == pytest.approx(0.5)
    assert out["below_fraction"] == 0.0
