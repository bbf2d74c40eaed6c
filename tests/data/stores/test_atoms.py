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
