"""MoleculeDensities: PySCF densities conserve charge, rotate with the molecule, cache, reproduce."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from simdiff.base.errors import DataError
from simdiff.data.field import FieldSource
from simdiff.data.sources.simulators.molecules import (
    MoleculeDensities,
    density_on_grid,
    g2_molecule,
    grid_axis,
    promolecule_on_grid,
    random_rotation,
)

TINY = {
    "grid": 12,
    "box_bohr": 12.0,
    "margin_bohr": 3.0,
    "basis": "sto-3g",
    "xc_grid_level": 1,
    "progress": False,
}


def test_h2_density_integrates_to_two_electrons() -> None:
    numbers, pos, _, spin = g2_molecule("H2")
    axis = grid_axis(24, 12.0)
    rho = density_on_grid(numbers, pos, axis, "sto-3g", "pbe", spin=spin)
    h = 12.0 / 24
    # The STO-3G density is a sum of Gaussians; by Poisson summation the grid sum of a Gaussian
    # of width s has relative error ~2 exp(-2 pi^2 s^2 / h^2) per axis. The tightest H product
    # (exponent 2 * 3.425) has s^2 = 0.073 bohr^2: 6e-3 of that term's small share of the
    # charge at h = 0.5 bohr. The box face (6 bohr) clips erfc(sqrt(0.338) * 6) ~ 1e-6 of the
    # most diffuse term. Together well under 2e-3 e (measured 3e-4).
    assert rho.sum() * h**3 == pytest.approx(2.0, abs=2e-3)
    assert rho.min() >= 0


def test_promolecule_holds_the_electrons_and_the_cusps_of_the_molecule() -> None:
    """The superposition of free-atom densities (no SCF) integrates to the electron count where
    the grid resolves it (H2, as above), and on the built-in grid it carries the molecule's
    cusp voxels: for water at 32^3 / 16 bohr its grid sum and peak match the SCF density's."""
    numbers, pos, _, spin = g2_molecule("H2")
    axis = grid_axis(24, 12.0)
    pro = promolecule_on_grid(numbers, pos, (axis, axis, axis), "sto-3g")
    assert pro.sum() * 0.5**3 == pytest.approx(2.0, abs=2e-3) and pro.min() >= 0
    numbers, pos, _, spin = g2_molecule("H2O")
    axis = grid_axis(32, 16.0)
    rho = density_on_grid(numbers, pos, axis, "sto-3g", "pbe", spin=spin, xc_grid_level=1)
    pro = promolecule_on_grid(numbers, pos, (axis, axis, axis), "sto-3g")
    assert pro.sum() == pytest.approx(rho.sum(), rel=0.01)
    assert pro.max() == pytest.approx(rho.max(), rel=0.05)  # measured 3 %
    assert np.unravel_index(pro.argmax(), pro.shape) == np.unravel_index(rho.argmax(), rho.shape)


def test_rotation_equivariance_is_exact_for_quarter_turns() -> None:
    numbers, pos, _, spin = g2_molecule("LiH")
    pos = pos @ random_rotation(np.random.default_rng(3)).T  # tilt the bond off every grid axis
    quarter = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # 90 deg about z
    axis = grid_axis(12, 12.0)
    rho = density_on_grid(numbers, pos, axis, "sto-3g", "pbe", spin=spin, xc_grid_level=1)
    turned = density_on_grid(numbers, pos @ quarter.T, axis, "sto-3g", "pbe", spin=spin, xc_grid_level=1)
    # rho'(r) = rho(R^T r): on the (z, y, x) array, y' = x and x' = -y, i.e. rot90 from x to y
    expected = np.rot90(rho, k=1, axes=(2, 1))
    # the centred grid maps onto itself and PySCF's Becke/Lebedev XC grid has octahedral symmetry,
    # so only the SCF convergence (conv_tol 1e-9 Ha) limits the agreement
    np.testing.assert_allclose(turned, expected, atol=1e-6 * rho.max())
    assert np.abs(np.rot90(rho, k=1, axes=(1, 2)) - turned).max() > 1e-2 * rho.max()  # direction matters


def test_random_rotation_is_proper_and_haar_mean_zero() -> None:
    rng = np.random.default_rng(0)
    rotations = np.stack([random_rotation(rng) for _ in range(4000)])
    np.testing.assert_allclose(
        rotations @ rotations.transpose(0, 2, 1), np.broadcast_to(np.eye(3), (4000, 3, 3)), atol=1e-12
    )
    np.testing.assert_allclose(np.linalg.det(rotations), 1.0, atol=1e-12)
    # Haar measure on SO(3): E[R] = 0 and E[R_ij^2] = 1/3; 4000 draws -> std ~ 0.01
    assert np.abs(rotations.mean(axis=0)).max() < 0.05
    np.testing.assert_allclose((rotations**2).mean(axis=0), 1 / 3, atol=0.03)


def test_cache_fill_resume_and_hit(tmp_path: Path) -> None:
    kw = dict(TINY, molecules=["H2", "H"], cache_dir=tmp_path, seed=1)
    first = MoleculeDensities(n_samples=2, max_samples=1, **kw)
    assert isinstance(first, FieldSource)
    field = first.open()
    assert first.n_computed == 1 and field.n_samples == 1
    assert zarr.open_group(str(first.store_path), mode="r").attrs["complete"] is False
    # resume: only the missing sample is computed; then the store is complete
    second = MoleculeDensities(n_samples=2, **kw)
    full = second.open()
    assert second.n_computed == 1 and full.n_samples == 2
    assert full.conditions["label"].values.tolist() == [0, 1]  # seed 1 draws H2, then the H atom (UKS)
    assert zarr.open_group(str(first.store_path), mode="r").attrs["complete"] is True
    np.testing.assert_array_equal(full.data["density"][:1].values, field.data["density"].values)
    # cache hit: nothing recomputed
    third = MoleculeDensities(n_samples=2, **kw)
    np.testing.assert_array_equal(third.open().data["density"].values, full.data["density"].values)
    assert third.n_computed == 0
    # a sample whose done flag was never written (interrupted) is recomputed (same up to float32 rounding)
    zarr.open_group(str(first.store_path), mode="r+")["done"][1] = False
    fourth = MoleculeDensities(n_samples=2, **kw)
    np.testing.assert_allclose(fourth.open().data["density"].values, full.data["density"].values, rtol=1e-6)
    assert fourth.n_computed == 1
    # a parameter that changes the densities gives another store; n_samples does not
    assert MoleculeDensities(n_samples=2, **{**kw, "seed": 2}).store_path != first.store_path
    assert MoleculeDensities(n_samples=9, **kw).store_path == first.store_path


def test_promolecule_reference_is_added_to_an_existing_cache(tmp_path: Path) -> None:
    """``reference="promolecule"`` adds each sample's promolecular density to the cache the
    densities are already in (no SCF re-run), and the Field carries it as its reference."""
    kw = dict(TINY, molecules=["H2O", "LiH"], cache_dir=tmp_path, seed=0, n_samples=2)
    plain = MoleculeDensities(**kw)
    field = plain.open()
    assert field.reference is None
    withref = MoleculeDensities(reference="promolecule", **kw)
    ref_field = withref.open()
    assert withref.n_computed == 0 and withref.store_path == plain.store_path
    np.testing.assert_array_equal(ref_field.data["density"].values, field.data["density"].values)
    assert ref_field.reference is not None and ref_field.reference["density"].dims == ref_field.dims
    axis = grid_axis(12, 12.0)
    for i in range(2):
        _, numbers, pos, _ = withref.sample_geometry(i)
        expect = promolecule_on_grid(numbers, pos, (axis, axis, axis), "sto-3g").astype(np.float32)
        np.testing.assert_array_equal(ref_field.reference["density"].values[i], expect)
    group = zarr.open_group(str(withref.store_path), mode="r")
    assert bool(np.all(group["promolecule_done"][:]))
    with pytest.raises(DataError, match=r"reference='atoms' is not one of \[None, 'promolecule'\]"):
        MoleculeDensities(reference="atoms", **kw)


def test_field_labels_and_determinism(tmp_path: Path) -> None:
    kw = dict(TINY, molecules=["H2", "H"], n_samples=2, seed=1)
    a = MoleculeDensities(cache_dir=tmp_path / "a", **kw).open()
    b = MoleculeDensities(cache_dir=tmp_path / "b", **kw).open()
    # same geometry bit for bit; the SCF repeats to float32 rounding (threaded sums reorder)
    np.testing.assert_allclose(a.data["density"].values, b.data["density"].values, rtol=1e-6, atol=0)
    np.testing.assert_array_equal(
        a.conditions["atom_positions"].values, b.conditions["atom_positions"].values
    )
    other = MoleculeDensities(cache_dir=tmp_path / "c", **{**kw, "seed": 2})
    assert not np.allclose(
        a.conditions["atom_positions"].values[0, : len(other.sample_geometry(0)[1])],
        other.sample_geometry(0)[2],
    )
    cond = a.conditions
    assert cond["label"].attrs["label_names"] == ["H2", "H"]
    expected_electrons = np.where(cond["label"].values == 0, 2, 1)
    np.testing.assert_array_equal(cond["n_electrons"].values, expected_electrons)
    np.testing.assert_array_equal(cond["atom_numbers"].values.sum(axis=1), expected_electrons)
    # atoms are centred on the centre of mass and inside the box less the margin
    assert np.nanmax(np.abs(cond["atom_positions"].values)) <= 6.0 - 3.0
    assert a.dims == ("sample", "z", "y", "x") and a.geometry.periodic == frozenset()
    np.testing.assert_allclose(a.geometry.weights.values, 1.0)  # h = 12 / 12 bohr
    np.testing.assert_allclose(a.data["x"].values, grid_axis(12, 12.0))


def test_bad_parameters(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"box_bohr=6.0 is too small for CH3OH"):
        MoleculeDensities(molecules=["CH3OH"], box_bohr=6.0, cache_dir=tmp_path)
    with pytest.raises(DataError, match=r"'XYZ' is not in ase's G2 collection"):
        MoleculeDensities(molecules=["XYZ"], cache_dir=tmp_path)
    with pytest.raises(DataError, match=r"no variable 'rho'"):
        MoleculeDensities(transforms={"rho": None}, cache_dir=tmp_path)  # type: ignore[dict-item]


def test_preset_with_debug_tiny(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from simdiff.data.transforms import Log1p

    conf = Path(__file__).resolve().parents[4] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        cfg = compose("config", overrides=["data=molecules", "debug=tiny", f"cache_dir={tmp_path}"])
    assert cfg.generate.mode._target_.endswith("Conditional") and cfg.diffusion.conditioning.previous == 0
    source = instantiate(cfg.data, _convert_="partial")  # what the CLI must do
    assert isinstance(source, MoleculeDensities)
    assert (source.grid, source.basis, source.n_samples, source.xc_grid_level) == (12, "sto-3g", 8, 1)
    assert isinstance(source.transforms["density"], Log1p) and len(source.molecules) == 12
    assert source.reference == "promolecule"  # the density is modelled relative to its promolecule
    with initialize_config_dir(config_dir=str(conf), version_base=None):  # the card's override, as written
        off = compose("config", overrides=["data=molecules", "debug=tiny", "data.reference=null"])
    assert instantiate(off.data, _convert_="partial").reference is None
    assert source.store_path.parent == tmp_path / "molecules"
