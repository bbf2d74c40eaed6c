"""Renormalisation to a reference count (simdiff.generate.renormalise): closed form, flags, edge cases."""

from __future__ import annotations

import numpy as np
import xarray as xr

from simdiff.generate.renormalise import ATTR, factor_variables, factors, renormalise


def test_factors_bring_each_member_to_the_reference_sum_over_the_cells_valid_in_both():
    ref = np.array([[1.0, 2.0], [3.0, np.nan]])  # sum over valid cells: 6
    members = np.array([[[2.0, 4.0], [6.0, 100.0]],    # sum 12 on the reference's valid cells -> 0.5
                        [[1.0, 1.0], [1.0, np.nan]],   # 3 -> 2
                        [[0.0, 0.0], [0.0, 0.0]]])     # nothing to scale -> NaN
    np.testing.assert_allclose(factors(members, ref), [0.5, 2.0, np.nan])


def test_renormalise_scales_only_the_referenced_variables_and_keeps_the_factors():
    rng = np.random.default_rng(0)
    rho = rng.gamma(2.0, 1.0, (3, 4, 5, 6)).astype(np.float32)
    other = rng.standard_normal((3, 4, 5, 6)).astype(np.float32)
    dims = ("realization", "z", "y", "x")
    block = xr.Dataset({"density": (dims, rho), "spin": (dims, other)}, coords={"realization": [4, 7, 9]})
    ref = rng.gamma(2.0, 1.0, (4, 5, 6))
    out = renormalise(block, {"density": ref})
    np.testing.assert_allclose(out["density"].values.sum(axis=(1, 2, 3)), ref.sum(), rtol=1e-5)
    assert (out["density"].values >= 0).all()
    np.testing.assert_array_equal(out["spin"].values, other)
    f = out["density_renormalisation"]
    assert f.dims == ("realization",) and f.dtype == np.float32
    np.testing.assert_allclose(out["density"].values / f.values[:, None, None, None], rho, rtol=1e-6)


def test_the_template_gains_an_empty_factor_per_member_and_condition_and_the_flag():
    template = xr.Dataset({"density": (("realization", "condition", "z"), np.zeros((2, 3, 4)))})
    out = factor_variables(template, ["density"])
    v = out["density_renormalisation"]
    assert v.dims == ("realization", "condition") and v.data.chunksize == (1, 1)
    assert np.isnan(v.values).all() and "density" in out.attrs[ATTR]
