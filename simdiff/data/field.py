"""Field: the canonical form every adapter returns (DESIGN.md section 4).

A Field is an ``xr.Dataset`` whose data variables all have the dims
``(sample_dim, [depth_dim], y_dim, x_dim)`` in that order, a Geometry over the spatial
dims, and per-sample conditioning arrays.

* ``sample_dim``: ``time`` for climate, ``sample`` for molecules.
* ``depth_dim``: ``level``, ``z``, or None for 2D fields.
* ``y_dim``/``x_dim``: ``lat``/``lon`` on geographic grids, ``y``/``x`` otherwise.

Units, standard names and long names of the source variables stay in their attrs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import xarray as xr

from simdiff.data.geometry import Geometry

SAMPLE_DIMS = ("time", "sample")
DEPTH_DIMS = ("level", "z")
# Depth dims that are a spatial axis of one volume (voxel grids), not distinct physical levels:
# they share one normalisation across the axis, and 3D convolutions treat them like y and x.
SPATIAL_DEPTH_DIMS = ("z",)
HORIZONTAL_DIMS = (("lat", "lon"), ("y", "x"))


@dataclass(frozen=True)
class Field:
    """A dataset in canonical form plus its geometry and conditioning arrays.

    Attributes:
        data: variables with dims ``(sample_dim, [depth_dim], y_dim, x_dim)``.
        geometry: periodicity, cell weights and validity mask over the spatial dims.
        conditions: per-sample arrays over ``sample_dim`` (e.g. ``time_features``
            (time, time_feature), ``label`` (sample), covariates). May be empty.
        sources: the files (or simulator caches) the data came from, for provenance.
        synthetic: ``(sample_dim)`` bool, True for a sample ``simdiff augment`` made (its
            ``synthetic`` variable), or None (all real). ``prepare`` keeps synthetic samples
            in the train split, each in its own block.
        pair_source: ``(sample_dim)`` int, for a synthetic draw of a next state the position
            (in this field) of the real state it was drawn from, else -1; or None.
            ``prepare`` writes each such sample right after a copy of its source state, as a
            (state, next state) pair (:mod:`simdiff.data.stores.synthetic`).
        reference: per-sample reference fields of some variables (same name, same dims), or
            None. A variable with one is modelled relative to it, ``T(x) - T(reference)``
            (:func:`simdiff.data.stores.stats.relative`): a molecule's density relative to its
            promolecule (the free atoms at the same geometry), which carries the nuclear cusps
            a smooth autoencoder cannot. The training store keeps it beside ``data``.
    """

    data: xr.Dataset
    geometry: Geometry
    conditions: xr.Dataset = field(default_factory=xr.Dataset)
    sources: tuple[str, ...] = ()
    synthetic: xr.DataArray | None = None
    pair_source: xr.DataArray | None = None
    reference: xr.Dataset | None = None

    def __post_init__(self) -> None:
        if not self.data.data_vars:
            raise ValueError("Field.data has no variables")
        dims = None
        for name, var in self.data.data_vars.items():
            if dims is None:
                dims = tuple(var.dims)
            elif tuple(var.dims) != dims:
                raise ValueError(
                    f"Field variables disagree on dims: {name!r} has {tuple(var.dims)}, "
                    f"the first variable has {dims}; select levels so all share one layout"
                )
        assert dims is not None
        if dims[0] not in SAMPLE_DIMS:
            raise ValueError(f"Field's first dim must be one of {SAMPLE_DIMS}, got {dims}")
        if len(dims) not in (3, 4):
            raise ValueError(f"Field variables must be (sample, [depth], y, x), got {dims}")
        if len(dims) == 4 and dims[1] not in DEPTH_DIMS:
            raise ValueError(f"Field depth dim must be one of {DEPTH_DIMS}, got {dims[1]!r}")
        if dims[-2:] not in HORIZONTAL_DIMS:
            raise ValueError(f"Field horizontal dims must be one of {HORIZONTAL_DIMS}, got {dims[-2:]}")
        if self.geometry.dims != dims[1:]:
            raise ValueError(f"Geometry dims {self.geometry.dims} do not match field dims {dims[1:]}")
        for name, var in self.conditions.data_vars.items():
            if var.dims[:1] != (dims[0],):
                raise ValueError(f"condition {name!r} has dims {var.dims}; must start with {dims[0]!r}")
        if self.synthetic is not None and (tuple(self.synthetic.dims) != (dims[0],)
                                           or self.synthetic.dtype != bool):
            raise ValueError(f"Field.synthetic must be bool over ({dims[0]!r},), got "
                             f"{self.synthetic.dtype} over {tuple(self.synthetic.dims)}")

        for name, var in (self.reference.data_vars.items() if self.reference is not None else ()):
            if name not in self.data.data_vars or tuple(var.dims) != dims:
                raise ValueError(f"Field.reference[{name!r}] must be a reference for a variable of the same "
                                 f"dims {dims}; got dims {tuple(var.dims)}, variables "
                                 f"{list(self.data.data_vars)}")

    @property
    def dims(self) -> tuple[str, ...]:
        """``(sample_dim, [depth_dim], y_dim, x_dim)``."""
        return tuple(next(iter(self.data.data_vars.values())).dims)

    @property
    def sample_dim(self) -> str:
        return self.dims[0]

    @property
    def depth_dim(self) -> str | None:
        return self.dims[1] if len(self.dims) == 4 else None

    @property
    def spatial_dims(self) -> tuple[str, ...]:
        """``([depth_dim], y_dim, x_dim)``."""
        return self.dims[1:]

    @property
    def variables(self) -> list[str]:
        return [str(v) for v in self.data.data_vars]

    @property
    def n_samples(self) -> int:
        return int(self.data.sizes[self.sample_dim])


@runtime_checkable
class FieldSource(Protocol):
    """A dataset card: something that opens a Field (an adapter over files, or a simulator).

    ``transforms`` maps variable names to the transform applied before normalisation
    (e.g. log1p for precipitation); variables not named are left as they are.
    """

    transforms: Mapping[str, object]

    def open(self) -> Field:
        """Open the data lazily (dask-backed where it comes from files)."""
        ...
