"""Geometry: which dims wrap around, how much each cell weighs, and which cells are valid.

A Geometry is always derived from coordinates and metadata by an adapter (cos-lat weights
from ``lat``, periodic longitude from the grid spacing, voxel volume and lattice vectors
from a cube header), never typed by hand.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr


@dataclass(frozen=True)
class Geometry:
    """The spatial geometry shared by every variable of a Field.

    Attributes:
        dims: spatial dims in field order, ``([depth], y, x)``.
        periodic: the dims that wrap around (global longitude, periodic cells).
        weights: cell weights over ``dims`` (cos(lat) on lat/lon grids, voxel volume in
            bohr^3 for cubes); consumers normalise them as they need.
        mask: bool over ``dims``; True where the field is valid (False on land in SST).
        lattice: for cells, the full cell edge vectors in bohr as a DataArray with dims
            ``(axis, cartesian)``: ``axis`` labelled by the grid dim each edge runs along,
            ``cartesian`` by ``x, y, z``. None on geographic grids.
        attrs: small JSON-serialisable extras (e.g. ``origin_bohr``, ``voxel_volume_bohr3``).
    """

    dims: tuple[str, ...]
    periodic: frozenset[str]
    weights: xr.DataArray
    mask: xr.DataArray
    lattice: xr.DataArray | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, arr in (("weights", self.weights), ("mask", self.mask)):
            if tuple(arr.dims) != tuple(self.dims):
                raise ValueError(
                    f"Geometry.{name} has dims {tuple(arr.dims)}; expected {tuple(self.dims)}"
                )
        if self.mask.dtype != bool:
            raise ValueError(f"Geometry.mask must be bool, got {self.mask.dtype}")
        unknown = set(self.periodic) - set(self.dims)
        if unknown:
            raise ValueError(f"Geometry.periodic names dims {sorted(unknown)} not in {self.dims}")

    def is_periodic(self, dim: str) -> bool:
        """True when ``dim`` wraps around."""
        return dim in self.periodic

    @property
    def valid_fraction(self) -> float:
        """Fraction of cells that are valid."""
        return float(self.mask.mean())

    def to_attrs(self) -> dict[str, Any]:
        """JSON-serialisable description (weights and mask are stored as arrays)."""
        out: dict[str, Any] = {
            "dims": list(self.dims),
            "periodic": sorted(self.periodic),
            "attrs": self.attrs,
        }
        if self.lattice is not None:
            out["lattice_bohr"] = {
                "axis": [str(a) for a in self.lattice["axis"].values],
                "vectors": np.asarray(self.lattice.values, dtype=float).tolist(),
            }
        return json.loads(json.dumps(out))

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any], weights: xr.DataArray, mask: xr.DataArray) -> Geometry:
        """Rebuild a Geometry from :meth:`to_attrs` plus the stored weight and mask arrays."""
        lattice = None
        if "lattice_bohr" in attrs:
            lat = attrs["lattice_bohr"]
            lattice = lattice_array(lat["axis"], np.asarray(lat["vectors"], dtype=float))
        return cls(
            dims=tuple(attrs["dims"]),
            periodic=frozenset(attrs["periodic"]),
            weights=weights,
            mask=mask.astype(bool),
            lattice=lattice,
            attrs=dict(attrs.get("attrs", {})),
        )


def lattice_array(axes: list[str] | tuple[str, ...], vectors: np.ndarray) -> xr.DataArray:
    """Label (n_axes, 3) cell edge vectors (bohr) by grid axis and cartesian component."""
    vectors = np.asarray(vectors, dtype=float)
    if vectors.shape != (len(axes), 3):
        raise ValueError(f"lattice vectors have shape {vectors.shape}; expected ({len(axes)}, 3)")
    return xr.DataArray(
        vectors,
        dims=("axis", "cartesian"),
        coords={"axis": list(axes), "cartesian": ["x", "y", "z"]},
        attrs={"units": "bohr"},
    )
