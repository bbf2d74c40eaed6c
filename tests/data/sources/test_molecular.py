"""CubeSource: cube files as a canonical Field (sample, z, y, x) with geometry and atoms."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from simdiff.base.errors import DataError
from simdiff.data.field import Field, FieldSource
from simdiff.data.sources.cube import Cube, read_cube, write_cube
from simdiff.data.sources.molecular import CubeSource
from simdiff.data.transforms import Log1p


def _mol(shared_data: Path) -> Path:
    return shared_data / "molecular"


def test_nh3_field_layout(shared_data: Path) -> None:
    path = _mol(shared_data) / "cclib_nh3.cube"
    source = CubeSource(str(path), transforms={"density": Log1p(1e-3)}, units="bohr-3")
    assert isinstance(source, FieldSource)
    field = source.open()
    assert isinstance(field, Field)
    assert field.dims == ("sample", "z", "y", "x") and field.variables == ["density"]
    assert field.data["density"].chunks is not None  # lazy, dask-backed
    assert field.data.sizes == {"sample": 1, "z": 112, "y": 48, "x": 54}
    cube = read_cube(path)
    rho = field.data["density"].isel(sample=0).values
    rng = np.random.default_rng(0)
    for i, j, k in zip(
        rng.integers(54, size=20), rng.integers(48, size=20), rng.integers(112, size=20), strict=True
    ):
        assert rho[k, j, i] == cube.data[i, j, k, 0]  # axis1 -> x, axis3 -> z
    np.testing.assert_allclose(np.diff(field.data["x"].values), 0.2)
    np.testing.assert_allclose(np.diff(field.data["z"].values), 0.1)
    geo = field.geometry
    assert geo.periodic == frozenset() and bool(geo.mask.all())
    np.testing.assert_allclose(geo.weights.values, 0.004)
    assert float((field.data["density"].isel(sample=0) * geo.weights).sum()) == pytest.approx(9.97, abs=0.01)
    np.testing.assert_allclose(geo.lattice.sel(axis="z").values, [0, 0, 11.2])
    np.testing.assert_array_equal(field.conditions["atom_numbers"].values, [[7, 1, 1, 1]])
    np.testing.assert_allclose(field.conditions["atom_positions"].values[0], cube.header.positions)
    assert field.data["density"].attrs["units"] == "bohr-3"


def test_multi_dataset_channels(shared_data: Path) -> None:
    path = _mol(shared_data) / "edge_cases" / "h5cube_grid20mo6-8.cube"
    field = CubeSource(str(path)).open()
    assert field.variables == ["mo_6", "mo_7", "mo_8"]
    assert all(field.data[v].shape == (1, 20, 20, 20) for v in field.variables)
    assert field.data["mo_7"].attrs["cube_dataset_id"] == 7
    one = CubeSource(str(path), variables=["mo_7"]).open()
    np.testing.assert_array_equal(one.data["mo_7"].values, field.data["mo_7"].values)
    with pytest.raises(DataError, match=r"no variable 'density'; available: \['mo_6', 'mo_7', 'mo_8'\]"):
        CubeSource(str(path), variables=["density"]).open()
    with pytest.raises(DataError, match=r"no variable 'rho'"):
        CubeSource(str(path), transforms={"rho": Log1p()}).open()


def test_periodic_cell_from_crystal_header(shared_data: Path) -> None:
    path = _mol(shared_data) / "aiida-crystal17_mgo_sto3g_DENS_CUBE.cube"
    field = CubeSource(str(path)).open()
    geo = field.geometry
    assert geo.periodic == frozenset({"x", "y", "z"})
    assert geo.attrs["closing_planes_dropped"] and not geo.attrs["orthogonal"]
    assert field.data.sizes["x"] == 19  # the 20th plane repeats the first
    a = float(read_cube(path).header.comments[1].split()[0])  # cell parameter a (bohr)
    np.testing.assert_allclose(np.linalg.norm(geo.lattice.values, axis=1), a, rtol=1e-5)
    # FCC primitive cell of MgO: edges at 60 degrees, volume a^3 / sqrt(2)
    cell_volume = abs(np.linalg.det(geo.lattice.values))
    assert cell_volume == pytest.approx(a**3 / np.sqrt(2), rel=1e-4)
    assert float(geo.weights.sum()) == pytest.approx(cell_volume, rel=1e-9)
    finite = CubeSource(str(path), periodic=False).open()
    assert finite.geometry.periodic == frozenset() and finite.data.sizes["x"] == 20
    assert CubeSource(str(_mol(shared_data) / "cclib_nh3.cube"), periodic=True).open().geometry.periodic == {
        "x",
        "y",
        "z",
    }


def _variant(src: Path, out: Path, scale: float) -> Path:
    cube = read_cube(src)
    return write_cube(out, Cube(cube.header, cube.data * scale))


def test_many_files_form_the_sample_dim(shared_data: Path, tmp_path: Path) -> None:
    src = _mol(shared_data) / "h5cube_grid20.cube"
    for k in range(3):
        _variant(src, tmp_path / f"spin_{k}.cube", scale=k + 1.0)
    field = CubeSource(str(tmp_path / "spin_*.cube"), variable="spin_density").open()
    assert field.n_samples == 3 and field.variables == ["spin_density"]
    assert [Path(p).name for p in field.data["source_file"].values] == [
        "spin_0.cube",
        "spin_1.cube",
        "spin_2.cube",
    ]
    totals = (field.data["spin_density"] * field.geometry.weights).sum(("z", "y", "x")).values
    np.testing.assert_allclose(totals / totals[0], [1, 2, 3], rtol=1e-6)
    assert field.conditions["atom_numbers"].shape == (3, 16)
    assert CubeSource(str(tmp_path / "spin_*.cube"), max_samples=2).open().n_samples == 2


def test_files_that_disagree_name_both(shared_data: Path, tmp_path: Path) -> None:
    a = _mol(shared_data) / "h5cube_grid20.cube"
    b = _mol(shared_data) / "h5cube_grid25mo.cube"
    with pytest.raises(
        DataError, match=r"h5cube_grid25mo\.cube and .*h5cube_grid20\.cube disagree on the grid"
    ):
        CubeSource([str(a), str(b)]).open()
    cube = read_cube(a)
    moved = Cube(replace(cube.header, voxel=cube.header.voxel * 1.01), cube.data)
    c = write_cube(tmp_path / "moved.cube", moved)
    with pytest.raises(DataError, match=r"moved\.cube and .*grid20\.cube disagree on the voxel vectors"):
        CubeSource([str(a), str(c)]).open()


def test_empty_glob_and_missing_file(tmp_path: Path) -> None:
    pattern = str(tmp_path / "nothing_*.cube")
    with pytest.raises(DataError, match=r"the glob '.*nothing_\*\.cube' matches no files"):
        CubeSource(pattern).open()
    with pytest.raises(DataError, match=r"absent\.cube: file not found"):
        CubeSource(str(tmp_path / "absent.cube")).open()


def test_nan_voxels_are_masked(shared_data: Path, tmp_path: Path) -> None:
    cube = read_cube(_mol(shared_data) / "h5cube_grid20.cube")
    for k, voxels in enumerate([[(3, 4, 5), (1, 1, 1)], [(3, 4, 5)]]):
        data = cube.data.copy()
        for i, j, l in voxels:
            data[i, j, l, 0] = np.nan
        write_cube(tmp_path / f"nan_{k}.cube", Cube(cube.header, data))
    pattern = str(tmp_path / "nan_*.cube")
    every = CubeSource(pattern).open().geometry.mask  # NaN in every file: (3, 4, 5) only
    assert not bool(every.isel(z=5, y=4, x=3)) and int((~every).sum()) == 1
    anywhere = CubeSource(pattern, mask_any_nan=True).open().geometry.mask
    assert not bool(anywhere.isel(z=1, y=1, x=1)) and int((~anywhere).sum()) == 2


def test_malformed_file_through_the_source(shared_data: Path) -> None:
    with pytest.raises(DataError, match=r"cclib_water_mp2\.cube: line 7"):
        CubeSource(str(_mol(shared_data) / "edge_cases" / "cclib_water_mp2.cube")).open()


def _preset(name: str, **root: object) -> object:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parents[3] / "conf"
    cfg = OmegaConf.merge(
        OmegaConf.create({k: str(v) for k, v in root.items()}),
        OmegaConf.load(conf / "debug" / "tiny.yaml"),
        {"data": OmegaConf.load(conf / "data" / name)},
    )
    return instantiate(cfg.data, _convert_="partial")  # what the CLI must do


def test_nh3_preset_opens(shared_data: Path, tmp_path: Path) -> None:
    source = _preset("nh3_cube.yaml", shared_data=shared_data, cache_dir=tmp_path)
    assert isinstance(source, CubeSource)
    assert isinstance(source.transforms["density"], Log1p)
    field = source.open()
    assert field.variables == ["density"] and field.n_samples == 1


def test_transforms_must_be_transforms(shared_data: Path) -> None:
    with pytest.raises(DataError, match=r"transforms\['density'\] is a dict, not a Transform"):
        CubeSource(str(_mol(shared_data) / "cclib_nh3.cube"), transforms={"density": {"scale": 1.0}})  # type: ignore[dict-item]


def test_cubes_preset_takes_a_glob(shared_data: Path, tmp_path: Path) -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parents[3] / "conf"
    cfg = OmegaConf.merge(
        {"shared_data": str(shared_data), "cache_dir": str(tmp_path)},
        {"data": OmegaConf.load(conf / "data" / "cubes.yaml")},
        {"data": {"source": str(_mol(shared_data) / "edge_cases" / "h5cube_grid20mo6-8.cube")}},
    )
    field = instantiate(cfg.data, _convert_="partial").open()
    assert field.variables == ["mo_6", "mo_7", "mo_8"]


def test_the_documented_transforms_override_works_as_written(shared_data: Path) -> None:
    """datasets/cubes/README.md: `data=cubes data.source=... data.transforms='{density:{...}}'`
    (no '+'; Hydra's struct mode refused it while the preset said `transforms: {}`)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    readme = (Path(__file__).resolve().parents[3] / "datasets" / "cubes" / "README.md").read_text()
    value = "{density:{_target_:simdiff.data.transforms.Log1p,scale:1.0e-3}}"
    assert f"`data.transforms='{value}'`" in readme
    override = f"data.transforms={value}"
    conf = Path(__file__).resolve().parents[3] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        source = f"data.source={shared_data}/molecular/cclib_nh3.cube"
        cfg = compose("config", overrides=["data=cubes", source, override])
    source = instantiate(cfg.data, _convert_="object")  # as `simdiff prepare` does
    assert source.transforms == {"density": Log1p(scale=1.0e-3)}
    assert source.open().variables == ["density"]
