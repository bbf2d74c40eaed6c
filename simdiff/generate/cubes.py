"""Generated densities as Gaussian cube files: one per (conditioning sample, member).

A conditional output on a voxel grid (``VAR (realization, condition, z, y, x)``, with the
conditioning molecule's ``atom_numbers``/``atom_positions`` per condition) becomes a folder of
cube files that ase, VMD or any quantum-chemistry viewer opens: the molecule's atoms (bohr, in
the frame the store states them), the store's origin and voxel vectors, and the member's
density with cube axis 1 = ``x``, 2 = ``y``, 3 = ``z`` (``x`` slowest, as cube files order
their values). Names: ``{molecule}_c{condition index}_m{member}.cube``; the molecule is the
label's name where the store has ``label_names``, else ``sample``.

The folder appears whole or not at all: files are written into a temporary folder beside it,
which is then renamed onto it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from simdiff.base.atomic import scratch_dir
from simdiff.base.errors import DataError
from simdiff.data.sources.cube import Cube, CubeHeader, write_cube

SPATIAL = ("z", "y", "x")


def cube_grid(geometry: Mapping[str, Any], coords: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(origin (3,), voxel (3, 3))`` in bohr from a store's geometry attrs, else from ``coords``."""
    attrs = dict(geometry.get("attrs", {}))
    if "voxel_bohr" in attrs and "origin_bohr" in attrs:
        return np.asarray(attrs["origin_bohr"], float), np.asarray(attrs["voxel_bohr"], float)
    steps = [float(np.diff(np.asarray(coords[d], float)).mean()) for d in ("x", "y", "z")]
    return np.array([float(coords[d][0]) for d in ("x", "y", "z")]), np.diag(steps)


def cube_name(label_names: list[str] | None, label: int | None, index: int, member: int) -> str:
    """``{molecule}_c{index}_m{member}.cube``."""
    molecule = label_names[label] if label_names is not None and label is not None else "sample"
    return f"{molecule}_c{index}_m{member}.cube"


def write_cubes(output: xr.Dataset, directory: str | Path, geometry: Mapping[str, Any],
                *, variable: str | None = None) -> list[Path]:
    """Write every member of every condition of ``output`` as a cube file under ``directory``.

    Args:
        output: a conditional output (``simdiff.generate.template.conditional_template``) on a
            ``z, y, x`` grid with ``atom_numbers``/``atom_positions`` per condition.
        directory: the folder to create (replaced whole if it exists).
        geometry: the training store's ``geometry`` attrs (origin and voxel vectors).
        variable: the variable to write (default: the only one).

    Returns:
        The files written, in (condition, member) order.
    """
    names = [str(v) for v in output.data_vars if set(SPATIAL) <= set(output[v].dims)]  # fields, not factors
    variable = variable or (names[0] if len(names) == 1 else None)
    if variable is None or variable not in output:
        raise DataError(f"cube files hold one variable; the output has {names}: pass variable=")
    field = output[variable]
    if tuple(field.dims[-3:]) != SPATIAL or "condition" not in field.dims:
        raise DataError(f"cube files need a conditional output on a z, y, x grid; {variable!r} has dims "
                        f"{field.dims}")
    if "atom_numbers" not in output.coords or "atom_positions" not in output.coords:
        raise DataError("cube files carry the molecule's atoms; this output has no "
                        "atom_numbers/atom_positions")
    directory = Path(directory)
    origin, voxel = cube_grid(geometry, {d: output[d].values for d in SPATIAL})
    numbers = np.asarray(output["atom_numbers"].values)
    positions = np.asarray(output["atom_positions"].values, dtype=np.float64)
    origins = np.asarray(output["origin"].values, float) if "origin" in output.coords else None
    labels = output["label"].values if "label" in output.coords else None
    label_names = output["label"].attrs.get("label_names") if labels is not None else None
    indices = output["condition_index"].values
    units = field.attrs.get("units", "")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = scratch_dir(directory)
    written = []
    try:
        for c in range(output.sizes["condition"]):
            keep = numbers[c] > 0
            header = CubeHeader(
                comments=(f"simdiff generated {variable}", f"condition {int(indices[c])} {units}".strip()),
                origin=origin if origins is None else origins[c],
                counts=(output.sizes["x"], output.sizes["y"], output.sizes["z"]),
                voxel=voxel,
                atomic_numbers=numbers[c][keep].astype(np.int64),
                charges=numbers[c][keep].astype(np.float64),
                positions=positions[c][keep],
            )
            block = field.isel(condition=c).transpose("realization", "x", "y", "z").values
            for m, member in enumerate(output["realization"].values):
                label = None if labels is None else int(labels[c])
                name = cube_name(label_names, label, int(indices[c]), int(member))
                write_cube(tmp / name, Cube(header, np.asarray(block[m], float)[..., None]))
                written.append(directory / name)
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return written
