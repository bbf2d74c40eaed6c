"""Conditional outputs as Gaussian cube files, read back by ase and by simdiff's reader."""

from __future__ import annotations

import numpy as np
import xarray as xr
from ase.io.cube import read_cube_data

from simdiff.data.sources.cube import read_cube
from simdiff.generate.cubes import write_cubes

BOHR_PER_ANGSTROM = 1 / 0.529177210903


def _output() -> xr.Dataset:
    rng = np.random.default_rng(0)
    z, y, x = (np.arange(n) * 0.5 - 2.0 for n in (5, 6, 7))
    rho = rng.random((2, 1, 5, 6, 7)).astype(np.float32)
    label = xr.Variable(("condition",), np.array([1]), {"label_names": ["H2", "H2O"]})
    return xr.Dataset(
        {"density": (("realization", "condition", "z", "y", "x"), rho)},
        coords={"realization": [0, 5], "condition_index": ("condition", [3]), "label": label,
                "atom_numbers": (("condition", "atom"), np.array([[8, 1, 1, 0]])),
                "atom_positions": (("condition", "atom", "cartesian"), np.array(
                    [[[0, 0, 0.2], [1.4, 1.1, -0.3], [-1.4, 1.1, -0.3], [np.nan] * 3]])),
                "z": z, "y": y, "x": x},
    )


def test_cube_files_round_trip_through_ase_and_simdiff(tmp_path):
    out = _output()
    geometry = {"attrs": {"origin_bohr": [-2.0, -2.0, -2.0], "voxel_bohr": (np.eye(3) * 0.5).tolist()}}
    files = write_cubes(out, tmp_path / "cubes", geometry)
    assert [f.name for f in files] == ["H2O_c3_m0.cube", "H2O_c3_m5.cube"]
    for m, f in enumerate(files):
        data, atoms = read_cube_data(str(f))
        expect = out["density"].isel(realization=m, condition=0).transpose("x", "y", "z").values
        np.testing.assert_allclose(data, expect, rtol=1e-6)
        assert list(atoms.numbers) == [8, 1, 1]
        np.testing.assert_allclose(atoms.positions * BOHR_PER_ANGSTROM, out["atom_positions"].values[0, :3],
                                   atol=1e-5)
        cube = read_cube(f)
        np.testing.assert_allclose(cube.header.origin, [-2.0, -2.0, -2.0])
        assert cube.header.counts == (7, 6, 5)


def test_a_second_write_replaces_the_folder_whole(tmp_path):
    out = _output()
    geometry = {"attrs": {"origin_bohr": [0, 0, 0], "voxel_bohr": (np.eye(3) * 0.5).tolist()}}
    (tmp_path / "cubes").mkdir()
    (tmp_path / "cubes" / "stale.cube").write_text("old")
    write_cubes(out, tmp_path / "cubes", geometry)
    assert sorted(p.name for p in (tmp_path / "cubes").iterdir()) == ["H2O_c3_m0.cube", "H2O_c3_m5.cube"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".cubes")]
