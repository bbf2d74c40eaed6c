"""CubeSource: one or many Gaussian cube files as a Field ``(sample, z, y, x)``.

Layout of the Field (everything in bohr):

* Variables have dims ``(sample, z, y, x)``: cube axis 1 -> ``x``, axis 2 -> ``y``, axis 3 ->
  ``z``, transposed so ``x`` is fastest. A plain cube gives one variable (``variable``,
  default ``density``); a cube with a DSET_IDS record (negative atom count) gives one
  variable per dataset, ``{dataset_prefix}{id}`` (``mo_6``, ``mo_7``, ...); a cube with
  ``N_val > 1`` values per voxel gives ``{variable}_0``, ``{variable}_1``, ...
* Coordinates ``x``, ``y``, ``z`` are ``index * |voxel vector|`` in bohr: the distance along
  each cube axis from the cube origin. On non-orthogonal cells they are not Cartesian; the
  origin and the voxel vectors are in ``Geometry.attrs`` (``origin_bohr``, ``voxel_bohr``).
* ``sample`` is the file index; the non-dim coordinate ``source_file`` names the file.
* Geometry: weights = voxel volume |det(v_1, v_2, v_3)| (bohr^3) everywhere; mask False
  where every file has a NaN (with ``mask_any_nan``: where any file has one; as in
  ClimateSource, ``prepare`` refuses NaN left in valid cells); lattice = the full cell
  edges ``n_i * v_i`` labelled by axis ``x, y, z``.
* Periodicity: ``periodic=None`` infers it from the file. A CRYSTAL cube writes the cell
  parameters ``a b c alpha beta gamma`` (bohr, degrees) as its second comment line; when
  they match the voxel vectors the cell is periodic in all three axes, otherwise the
  cube is a finite box (non-periodic). CRYSTAL samples the closed cell (``n_i`` points
  spanning ``a_i = (n_i - 1) |v_i|``, the last plane repeating the first); for a periodic
  Field the repeated closing planes are dropped after checking they equal the opening
  planes, so the lattice is the true cell. ``periodic=True``/``False`` overrides the
  inference (False keeps every plane and treats the grid as a finite box).
* Atoms are per-sample conditions: ``atom_numbers (sample, atom)`` int64 padded with 0,
  ``atom_positions (sample, atom, cartesian)`` bohr in the file's Cartesian frame padded
  with NaN, ``n_atoms (sample)``, and ``origin (sample, cartesian)`` the cube origin.

Several files form the sample dim; they must share grid shape, voxel vectors and datasets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from simdiff.base.errors import DataError
from simdiff.data.field import Field
from simdiff.data.geometry import Geometry, lattice_array
from simdiff.data.sources.cube import CubeHeader, read_cube
from simdiff.data.sources.cube import read_cube_header as _read_header
from simdiff.data.sources.paths import expand_source
from simdiff.data.transforms import Transform

AXES = ("x", "y", "z")
"""Grid dims of cube axes 1, 2, 3."""



def crystal_cell(header: CubeHeader) -> tuple[np.ndarray, bool] | None:
    """The periodic cell a CRYSTAL cube states in its second comment line, if it does.

    Returns:
        ``(cell, closed)``: cell (axis=3, cartesian=3) edges in bohr, and whether the grid
        samples the closed cell (``n_i`` points, last plane = first). None when the comment
        is not six numbers ``a b c alpha beta gamma`` agreeing with the voxel vectors.
    """
    tokens = header.comments[1].split()
    if len(tokens) != 6:
        return None
    try:
        a, b, c, alpha, beta, gamma = (float(t) for t in tokens)
    except ValueError:
        return None
    v = header.voxel
    steps = np.linalg.norm(v, axis=1)
    counts = np.asarray(header.counts, dtype=float)

    def angle(i: int, j: int) -> float:
        return float(np.degrees(np.arccos(np.dot(v[i], v[j]) / (steps[i] * steps[j]))))

    if not np.allclose([angle(1, 2), angle(0, 2), angle(0, 1)], [alpha, beta, gamma], atol=0.05):
        return None
    for closed, n in ((False, counts), (True, counts - 1)):
        if np.allclose(n * steps, [a, b, c], rtol=1e-4):
            return v * n[:, None], closed
    return None


def checked_transforms(transforms: Mapping[str, Transform] | None) -> dict[str, Transform]:
    """``transforms`` as a dict, after checking every value is a Transform."""
    out = dict(transforms or {})
    for name, t in out.items():
        if not isinstance(t, Transform):
            raise DataError(
                f"data.transforms[{name!r}] is a {type(t).__name__}, not a Transform; pass objects such as "
                "simdiff.data.transforms.Log1p(scale=...). From Hydra, instantiate with _convert_='partial' "
                "so dataclass transforms are not wrapped back into configs"
            )
    return out


def _load(path: str, shape: tuple[int, ...]) -> np.ndarray:
    cube = read_cube(path)
    if cube.data.shape != shape:
        raise DataError(
            f"{path}: the file changed since its header was read (shape {cube.data.shape} != {shape})"
        )
    return cube.data


class CubeSource:
    """A FieldSource over Gaussian cube files (see the module docstring for the layout).

    Args:
        source: a cube file, a glob, or a list of files/globs; files sort within a glob.
        variables: variables to keep (default all); unknown names raise with the list.
        transforms: per-variable transforms applied before normalisation (e.g. Log1p).
        periodic: True/False to force; None infers it from the header (CRYSTAL cell line).
        max_samples: keep only the first files (e.g. ``debug=tiny``).
        variable: the variable name of a plain single-dataset cube.
        dataset_prefix: prefix of the variables of a DSET_IDS cube (``mo_`` -> ``mo_6``).
        units: units attribute of the values (cube files do not state them), e.g. ``bohr-3``.
        mask_any_nan: mask voxels NaN in *any* file, not only in every file.
    """

    def __init__(
        self,
        source: str | Sequence[str],
        variables: Sequence[str] | None = None,
        transforms: Mapping[str, Transform] | None = None,
        periodic: bool | None = None,
        max_samples: int | None = None,
        variable: str = "density",
        dataset_prefix: str = "mo_",
        units: str | None = None,
        mask_any_nan: bool = False,
    ) -> None:
        self.source = source
        self.variables = list(variables) if variables is not None else None
        self.transforms: dict[str, Transform] = checked_transforms(transforms)
        self.periodic = periodic
        if max_samples is not None and max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {max_samples}")
        self.max_samples = max_samples
        self.variable = variable
        self.dataset_prefix = dataset_prefix
        self.units = units
        self.mask_any_nan = mask_any_nan

    def _names(self, h: CubeHeader) -> list[str]:
        if h.dataset_ids is not None:
            return [f"{self.dataset_prefix}{i}" for i in h.dataset_ids]
        if h.n_values == 1:
            return [self.variable]
        return [f"{self.variable}_{k}" for k in range(h.n_values)]

    def _check_same_grid(self, first: CubeHeader, other: CubeHeader) -> None:
        def differ(what: str, a: Any, b: Any) -> DataError:
            return DataError(
                f"{other.path} and {first.path} disagree on {what}: {b} vs {a}; cube files of one "
                "source must share grid and datasets (split them into separate sources)"
            )

        if other.counts != first.counts:
            raise differ("the grid shape (n_1, n_2, n_3)", first.counts, other.counts)
        if not np.allclose(other.voxel, first.voxel, rtol=1e-6, atol=1e-9):
            raise differ("the voxel vectors (bohr)", first.voxel.tolist(), other.voxel.tolist())
        if self._names(other) != self._names(first):
            raise differ("the variables", self._names(first), self._names(other))

    def open(self) -> Field:
        """Parse the headers now and the values lazily (one dask chunk per file)."""
        paths = expand_source(self.source, accepts="Gaussian cube files")
        if self.max_samples is not None:
            paths = paths[: self.max_samples]
        headers = [_read_header(p) for p in paths]
        first = headers[0]
        for h in headers[1:]:
            self._check_same_grid(first, h)
        names = self._names(first)
        keep = self.variables if self.variables is not None else names
        for name in [*keep, *self.transforms]:
            if name not in names:
                raise DataError(
                    f"{first.path}: no variable {name!r}; available: {names} "
                    "(set data.variables / data.transforms to some of these)"
                )

        cells = [crystal_cell(h) for h in headers]
        for h, c in zip(headers[1:], cells[1:], strict=True):
            if (c is None) != (cells[0] is None) or (c is not None and c[1] != cells[0][1]):  # type: ignore[index]
                raise DataError(
                    f"{h.path} and {first.path} disagree on the periodic cell stated in the second "
                    "comment line; cube files of one source must share it"
                )
        periodic = cells[0] is not None if self.periodic is None else self.periodic
        closed = periodic and cells[0] is not None and cells[0][1]

        stack = da.stack(
            [
                da.from_delayed(dask.delayed(_load)(str(h.path), h.shape), shape=h.shape, dtype=float)
                for h in headers
            ]
        )  # (sample, n1, n2, n3, m)
        counts = np.asarray(first.counts)
        if closed:
            first_planes = [stack[:, 0], stack[:, :, 0], stack[:, :, :, 0]]
            last_planes = [stack[:, -1], stack[:, :, -1], stack[:, :, :, -1]]
            same = dask.compute(
                *[
                    da.allclose(a, b, rtol=1e-5, atol=1e-12)
                    for a, b in zip(first_planes, last_planes, strict=True)
                ]
            )
            if not all(same):
                raise DataError(
                    f"{first.path}: the comment line states a closed periodic cell (n_i points span "
                    "(n_i - 1) voxels) but the last grid plane differs from the first; pass "
                    "periodic=False to read it as a finite box"
                )
            stack = stack[:, :-1, :-1, :-1]
            counts = counts - 1
        n1, n2, n3 = (int(n) for n in counts)
        index = [names.index(v) for v in keep]
        stack = stack[..., index]
        nan = da.isnan(stack).any(axis=4)  # (sample, n1, n2, n3): NaN in any kept variable
        nan = nan.any(axis=0) if self.mask_any_nan else nan.all(axis=0)
        mask_zyx = ~np.asarray(nan.compute()).transpose(2, 1, 0)

        steps = np.linalg.norm(first.voxel, axis=1)
        coords: dict[str, Any] = {
            dim: xr.Variable(
                dim,
                np.arange(n) * step,
                {"units": "bohr", "long_name": f"distance along cube axis {k + 1} (index * voxel length)"},
            )
            for k, (dim, n, step) in enumerate(zip(AXES, (n1, n2, n3), steps, strict=True))
        }
        coords["sample"] = np.arange(len(paths))
        coords["source_file"] = ("sample", [str(p) for p in paths])
        data_vars = {}
        for k, name in enumerate(keep):
            attrs: dict[str, Any] = {"long_name": first.comments[1] or first.comments[0]}
            if self.units is not None:
                attrs["units"] = self.units
            if first.dataset_ids is not None:
                attrs["cube_dataset_id"] = int(first.dataset_ids[index[k]])
            data_vars[name] = (("sample", "z", "y", "x"), stack[..., k].transpose(0, 3, 2, 1), attrs)
        data = xr.Dataset(data_vars, coords=coords, attrs={"cube_comment": first.comments[0]})

        cell = first.voxel * counts[:, None].astype(float)
        spatial = {d: data[d] for d in ("z", "y", "x")}
        volume = first.voxel_volume
        geometry = Geometry(
            dims=("z", "y", "x"),
            periodic=frozenset(AXES) if periodic else frozenset(),
            weights=xr.DataArray(
                np.full((n3, n2, n1), volume), dims=("z", "y", "x"), coords=spatial, attrs={"units": "bohr3"}
            ),
            mask=xr.DataArray(mask_zyx, dims=("z", "y", "x"), coords=spatial),
            lattice=lattice_array(AXES, cell),
            attrs={
                "origin_bohr": first.origin.tolist(),
                "voxel_bohr": first.voxel.tolist(),
                "voxel_volume_bohr3": volume,
                "orthogonal": bool(np.allclose(first.voxel - np.diag(np.diag(first.voxel)), 0.0)),
                "closing_planes_dropped": bool(closed),
                "cube_axes": {"x": 1, "y": 2, "z": 3},
            },
        )
        return Field(
            data=data,
            geometry=geometry,
            conditions=atom_conditions(headers),
            sources=tuple(str(p) for p in paths),
        )


def atom_conditions(headers: Sequence[CubeHeader]) -> xr.Dataset:
    """Atoms of each file as padded arrays over ``(sample, atom, [cartesian])`` (bohr)."""
    n_max = max(h.n_atoms for h in headers)
    numbers = np.zeros((len(headers), n_max), dtype=np.int64)
    positions = np.full((len(headers), n_max, 3), np.nan)
    for s, h in enumerate(headers):
        numbers[s, : h.n_atoms] = h.atomic_numbers
        positions[s, : h.n_atoms] = h.positions
    return xr.Dataset(
        {
            "atom_numbers": (("sample", "atom"), numbers, {"long_name": "atomic number (0 = padding)"}),
            "atom_positions": (
                ("sample", "atom", "cartesian"),
                positions,
                {"units": "bohr", "long_name": "atom position (NaN = padding)"},
            ),
            "n_atoms": ("sample", np.array([h.n_atoms for h in headers], dtype=np.int64)),
            "origin": (("sample", "cartesian"), np.stack([h.origin for h in headers]), {"units": "bohr"}),
        },
        coords={"sample": np.arange(len(headers)), "cartesian": list(AXES)},
    )
