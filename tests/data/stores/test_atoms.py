"""Gaussian atom densities: the geometry condition of molecular latents."""

from __future__ import annotations

import numpy as np

from simdiff.data.stores.atoms import atom_channels, cell_centres


def test_channels_integrate_to_atom_counts_and_charge():
    axis = (np.arange(40) - 19.5) * 0.3
    numbers = np.array([[8, 1, 1, 0]])  # water, one padding slot
    positions = np.array([[[0.0, 0.0, 0.2], [1.4, 1.1, -0.3], [-1.4, 1.1, -0.3], [np.nan] * 3]])
    ch = atom_channels(numbers, positions, [axis] * 3, sigma=0.6)
    totals = ch.sum(axis=(2, 3, 4)) * 0.3**3
    np.testing.assert_allclose(totals[0], [2.0, 8.0, 1.0], rtol=1e-4)  # H count, heavy Z, heavy count


def test_channels_peak_where_the_atom_is():
    axis = np.arange(9, dtype=float)
    ch = atom_channels(np.array([[6]]), np.array([[[2.0, 5.0, 7.0]]]), [axis] * 3, sigma=0.7)  # x, y, z
    assert np.unravel_index(ch[0, 1].argmax(), ch[0, 1].shape) == (7, 5, 2)  # (z, y, x)


def test_cell_centres_average_each_footprint():
    np.testing.assert_allclose(cell_centres(np.arange(8.0), 4, 2), [1.5, 5.5])
    np.testing.assert_allclose(cell_centres(np.arange(6.0), 4, 2), [1.5, 5.5])  # edge-extended


def test_a_real_cube_files_atoms_land_on_their_voxels(shared_data, tmp_path):
    """Psi4's NH3 cube states its atoms in its own frame, off the grid origin: each atom's
    channel peaks in the latent cell holding the voxel of the density's cusp nearest to it."""
    from simdiff.data.sources.molecular import CubeSource
    from simdiff.data.stores.atoms import molecular_conditions
    from simdiff.data.stores.prepare import PrepareOptions, write_training_store
    from simdiff.data.stores.training import TrainingStore
    from simdiff.data.transforms import Log1p

    field = CubeSource(source=str(shared_data / "molecular" / "cclib_nh3.cube"), units="bohr-3").open()
    path = write_training_store(field, tmp_path / "train.zarr", transforms={"density": Log1p(1e-3)},
                                options=PrepareOptions(split={"train": 1.0, "val": 0.0, "test": 0.0},
                                                       progress=False), provenance={})
    store = TrainingStore(path)
    rho = store.dataset()["data"].values[0, 0]  # normalised log density: its maximum is the cusp
    nz, ny, nx = rho.shape
    factors = (2, 2, 2)
    latent = tuple(-(-n // f) for n, f in zip(rho.shape, factors, strict=True))
    atoms = molecular_conditions(store, latent, factors)["atoms"][1][0]
    cusp = np.unravel_index(np.argmax(rho), rho.shape)  # the N nucleus: the density's maximum
    heavy = np.unravel_index(np.argmax(atoms[1]), atoms[1].shape)
    assert all(abs(h - c // f) <= 1 for h, c, f in zip(heavy, cusp, factors, strict=True))
    assert (nz, ny, nx) == (112, 48, 54)


def test_subcells_fold_each_latent_cells_subcells_into_channels():
    from simdiff.data.stores.atoms import fold_subcells, subcell_axis

    np.testing.assert_allclose(subcell_axis(np.array([1.0, 3.0]), 2.0, 2), [0.5, 1.5, 2.5, 3.5])
    fine = np.arange(2 * 3 * 4 * 6 * 2, dtype=float).reshape(2, 3, 4, 6, 2)  # (S, C, 2d, 2h, 2w)
    folded = fold_subcells(fine, 2)
    assert folded.shape == (2, 3 * 8, 2, 3, 1)
    # channel c*8 + (kz*2 + ky)*2 + kx of latent cell (i, j, k) is sub-cell (2i+kz, 2j+ky, 2k+kx)
    for c, kz, ky, kx, i, j in [(0, 0, 0, 0, 0, 0), (1, 1, 0, 1, 1, 2), (2, 1, 1, 1, 0, 1)]:
        assert folded[1, c * 8 + (kz * 2 + ky) * 2 + kx, i, j, 0] == fine[1, c, 2 * i + kz, 2 * j + ky, kx]


def test_subcell_channels_keep_the_totals_and_place_the_atom_within_its_cell():
    """Drawn on 2 sub-cells per latent cell and axis, the channels still integrate to the atom
    counts and charge, and the brightest sub-cell is the one holding the atom."""
    from simdiff.data.stores.atoms import fold_subcells, subcell_axis

    centres = (np.arange(8) - 3.5) * 2.0  # latent cells of 2 bohr
    fine = subcell_axis(centres, 2.0, 2)
    numbers = np.array([[8, 1, 1]])
    positions = np.array([[[0.3, -0.4, 0.6], [1.4, 1.1, -0.3], [-1.4, 1.1, -0.3]]])  # x, y, z
    ch = atom_channels(numbers, positions, [fine] * 3, sigma=0.5)
    folded = fold_subcells(ch, 2)
    totals = folded.reshape(1, 3, 8, 8, 8, 8).sum(axis=(2, 3, 4, 5)) * 1.0**3
    np.testing.assert_allclose(totals, ch.sum(axis=(2, 3, 4)), rtol=1e-12)  # folding moves, never loses
    # a Gaussian of sigma = h / 2 sampled at h sums to its integral within a few per cent
    np.testing.assert_allclose(totals[0], [2.0, 8.0, 1.0], rtol=0.05)
    # oxygen at (x, y, z) = (0.3, -0.4, 0.6): latent cell (z, y, x) = (4, 3, 4) of
    # centres (1, -1, 1), nearest sub-cell centres (0.5, -0.5, 0.5): sub-cell (0, 1, 0)
    heavy = folded[0, 8:16]  # heavy-charge channel's 8 sub-cells
    sub, zc, yc, xc = np.unravel_index(heavy.argmax(), heavy.shape)
    assert (zc, yc, xc) == (4, 3, 4)
    assert sub == (0 * 2 + 1) * 2 + 0
