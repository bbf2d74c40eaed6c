"""Renormalisation of generated densities to a target count: an explicit, flagged post-processing step.

A generated electron density need not hold exactly the molecule's electrons (the model learns
the count only approximately). A chemist who needs charge conservation can ask
``generate.mode.renormalise=true``: each member ``rho`` of a variable modelled relative to a
reference field (the promolecule, the free atoms at the same geometry, which the store keeps and
which is known before any SCF) is multiplied by

    f = sum(rho_ref) / sum(rho)

over the valid voxels, so ``sum(f rho) dV`` equals the promolecule's count on the same grid
(within 0.2 % of the SCF density's on the built-in set). A positive factor keeps densities
non-negative and changes no shape. The output records it: a variable ``VAR_renormalisation
(realization, condition)`` holds each member's ``f`` (the member as drawn is the stored field
divided by it) and the global attribute ``simdiff_renormalised`` says what was done, so the
evaluation reports the count error before and after.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import xarray as xr

#: Suffix of the per-member factor variable: ``density`` -> ``density_renormalisation``.
RENORMALISATION = "_renormalisation"
#: The output attribute that flags the step.
ATTR = "simdiff_renormalised"
NOTE = ("each member of {names} multiplied by VAR_renormalisation so that its sum over the grid equals "
        "its reference field's (the promolecule's electron count on the same grid); the member as drawn is "
        "the stored field divided by the factor")


def factors(members: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(M,) factors that bring each member (M, ...) to the sum of ``reference`` (...) over the
    cells finite in both (NaN where a member sums to zero or less: nothing to scale)."""
    members = np.asarray(members, np.float64)
    reference = np.asarray(reference, np.float64)
    ok = np.isfinite(reference)[None] & np.isfinite(members)
    total = np.where(ok, members, 0.0).reshape(members.shape[0], -1).sum(axis=1)
    target = np.where(ok, reference[None], 0.0).reshape(members.shape[0], -1).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, target / total, np.nan)


def renormalise(block: xr.Dataset, references: dict[str, np.ndarray]) -> xr.Dataset:
    """``block`` (members ``(realization, ...)`` per variable) with each variable in ``references``
    scaled to its reference's sum, and its factors as ``VAR_renormalisation (realization)``."""
    out = block.copy()
    for name, ref in references.items():
        f = factors(block[name].values, ref)
        scale = np.where(np.isfinite(f), f, 1.0).astype(np.float32)
        shape = (-1, *([1] * (block[name].ndim - 1)))
        out[name] = block[name].copy(data=(block[name].values * scale.reshape(shape)).astype(np.float32))
        out[f"{name}{RENORMALISATION}"] = xr.DataArray(f.astype(np.float32), dims=("realization",))
    return out


def factor_variables(template: xr.Dataset, names: list[str]) -> xr.Dataset:
    """``template`` (a conditional output's) with an empty ``VAR_renormalisation (realization,
    condition)`` per name (one chunk per block, as the fields) and the ``simdiff_renormalised`` flag."""
    out = template.copy()
    shape = (template.sizes["realization"], template.sizes["condition"])
    for name in names:
        out[f"{name}{RENORMALISATION}"] = xr.DataArray(
            da.full(shape, np.nan, dtype=np.float32, chunks=(1, 1)), dims=("realization", "condition"),
            attrs={"long_name": f"factor each member of {name} was multiplied by (renormalisation)",
                   "units": "1"})
    out.attrs[ATTR] = NOTE.format(names=", ".join(names))
    return out
