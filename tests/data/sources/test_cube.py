"""Gaussian cube reader/writer: cross-checked against ASE, closed-form integrals, round trips."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from simdiff.base.errors import DataError
from simdiff.data.sources.cube import ANGSTROM_PER_BOHR, Cube, read_cube, read_cube_header, write_cube

GOOD = [
    "cclib_nh3.cube",
    "h5cube_grid20.cube",
    "h5cube_grid25mo.cube",
    "chemtools_h2o_dimer_pbe_sto3g-dens.cube",
    "aiida-crystal17_mgo_sto3g_DENS_CUBE.cube",
]


@pytest.mark.parametrize("name", GOOD)
def test_matches_ase(shared_data: Path, name: str) -> None:
    from ase.io.cube import read_cube_data
    from ase.units import Bohr

    path = shared_data / "molecular" / name
    cube = read_cube(path)
    ref, atoms = read_cube_data(str(path))  # ASE: values as written, lengths in angstrom
    assert cube.data.shape == (*ref.shape, 1)
    np.testing.assert_array_equal(cube.data[..., 0], ref)
    np.testing.assert_allclose(cube.header.positions, atoms.positions / Bohr, rtol=1e-8, atol=1e-9)
    np.testing.assert_array_equal(cube.header.atomic_numbers, atoms.numbers)
    np.testing.assert_allclose(cube.header.cell, atoms.cell.array / Bohr, rtol=1e-8)


def test_nh3_integrates_to_its_electron_count(shared_data: Path) -> None:
    cube = read_cube(shared_data / "molecular" / "cclib_nh3.cube")
    assert cube.header.voxel_volume == pytest.approx(0.2 * 0.2 * 0.1)
    # README: sum(rho) dV = 9.97 e for NH3 (10 electrons; the grid clips a little tail)
    assert cube.data.sum() * cube.header.voxel_volume == pytest.approx(9.97, abs=0.01)


def test_multi_dataset_orbitals_are_orthonormal(shared_data: Path) -> None:
    cube = read_cube(shared_data / "molecular" / "edge_cases" / "h5cube_grid20mo6-8.cube")
    assert cube.header.dataset_ids == (6, 7, 8)
    assert cube.data.shape == (20, 20, 20, 3)
    dv = cube.header.voxel_volume
    gram = np.einsum("ijka,ijkb->ab", cube.data, cube.data) * dv
    # three MOs of one molecule on a coarse 20^3 grid: <i|j> = delta_ij up to grid error
    np.testing.assert_allclose(gram, np.eye(3), atol=0.05)
    # datasets stored block after block (the wrong layout) would not be orthonormal
    wrong = cube.data.reshape(3, 20, 20, 20)
    assert not np.allclose(np.einsum("aijk,bijk->ab", wrong, wrong) * dv, np.eye(3), atol=0.05)


def test_malformed_file_names_file_and_line(shared_data: Path) -> None:
    path = shared_data / "molecular" / "edge_cases" / "cclib_water_mp2.cube"
    with pytest.raises(DataError, match=r"cclib_water_mp2\.cube: line 7: .*atom line") as info:
        read_cube(path)
    assert "atom 1 of 3" in str(info.value)


@pytest.mark.parametrize("angstrom", [False, True])
def test_round_trip(shared_data: Path, tmp_path: Path, angstrom: bool) -> None:
    cube = read_cube(shared_data / "molecular" / "edge_cases" / "h5cube_grid20mo6-8.cube")
    out = write_cube(tmp_path / "copy.cube", cube, angstrom=angstrom)
    back = read_cube(out)
    assert back.header.angstrom is angstrom
    assert back.header.dataset_ids == cube.header.dataset_ids
    assert back.header.counts == cube.header.counts
    np.testing.assert_allclose(back.data, cube.data, rtol=1e-6, atol=1e-300)
    # 6 decimals in the file: 1e-6 (bohr or angstrom) per length
    np.testing.assert_allclose(back.header.voxel, cube.header.voxel, atol=2e-6)
    np.testing.assert_allclose(back.header.positions, cube.header.positions, atol=2e-6)
    np.testing.assert_allclose(back.header.origin, cube.header.origin, atol=2e-6)
    assert not list(tmp_path.glob(".*tmp"))  # nothing left half-written


def test_angstrom_file_is_converted(tmp_path: Path) -> None:
    text = [
        "angstrom cube",
        "unit test",
        "    1    0.529177   0.000000   0.000000",
        "   -2    0.529177   0.000000   0.000000",
        "   -2    0.000000   1.058354   0.000000",
        "   -2    0.000000   0.000000   0.264589",
        "    1    1.000000   0.000000   0.529177   0.000000",
        "1 2 3 4",
        "5 6 7 8",
    ]
    path = tmp_path / "a.cube"
    path.write_text("\n".join(text) + "\n")
    cube = read_cube(path)
    np.testing.assert_allclose(cube.header.origin, [1.0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(np.diag(cube.header.voxel), [1.0, 2.0, 0.5], atol=1e-6)
    np.testing.assert_allclose(cube.header.positions, [[0, 1.0, 0]], atol=1e-6)
    assert cube.header.voxel_volume == pytest.approx(1.0, rel=1e-5)
    assert cube.data[1, 0, 1, 0] == 6.0  # axis 3 fastest
    assert 1.0 / ANGSTROM_PER_BOHR == pytest.approx(1.8897261246, rel=1e-10)


def _write(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "bad.cube"
    path.write_text("\n".join(lines) + "\n")
    return path


HEADER = ["c1", "c2", "    1  0 0 0", "    2  1 0 0", "    2  0 1 0", "    2  0 0 1", "    1  1.0  0 0 0"]


def test_truncated_data(tmp_path: Path) -> None:
    path = _write(tmp_path, [*HEADER, "1 2 3 4", "5 6 7"])
    with pytest.raises(DataError, match=r"bad\.cube: found 7 voxel values from line 8.*2\*2\*2\*1 = 8"):
        read_cube(path)


def test_bad_token_names_its_line(tmp_path: Path) -> None:
    path = _write(tmp_path, [*HEADER, "1 2 3 4", "5 x 7 8"])
    with pytest.raises(DataError, match=r"bad\.cube: line 9: found '5 x 7 8'"):
        read_cube(path)


def test_mixed_unit_signs_rejected(tmp_path: Path) -> None:
    lines = list(HEADER)
    lines[4] = "   -2  0 1 0"
    with pytest.raises(DataError, match=r"line 4: .*one sign"):
        read_cube(_write(tmp_path, [*lines, "1 2 3 4 5 6 7 8"]))


def test_missing_dset_ids(tmp_path: Path) -> None:
    lines = list(HEADER)
    lines[2] = "   -1  0 0 0"
    with pytest.raises(DataError, match=r"line 8: .*DSET_IDS"):
        read_cube(_write(tmp_path, [*lines, "1.5 2 3 4 5 6 7 8"]))


def test_header_only_matches_full_read(shared_data: Path) -> None:
    path = shared_data / "molecular" / "edge_cases" / "h5cube_grid20mo6-8.cube"
    header = read_cube_header(path)
    full = read_cube(path).header
    assert header.shape == full.shape and header.data_line == full.data_line == 15
    np.testing.assert_array_equal(header.positions, full.positions)


def test_n_val_cube_round_trip(tmp_path: Path) -> None:
    base = read_cube(_write(tmp_path, [*HEADER, "1 2 3 4 5 6 7 8"]))
    two = Cube(replace(base.header, n_values=2), np.arange(16.0).reshape(2, 2, 2, 2))
    back = read_cube(write_cube(tmp_path / "two.cube", two))
    assert back.header.n_values == 2 and back.header.dataset_ids is None
    np.testing.assert_array_equal(back.data, two.data)
