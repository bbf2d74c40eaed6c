"""Molecular scores on densities with closed-form answers."""

from __future__ import annotations

import numpy as np
import pytest

from simdiff.evaluate.molecular import (
    centre_of_charge,
    electron_counts,
    memorisation,
    molecular_scores,
    radial_profile,
)

H = 0.25
AXIS = (np.arange(48) - 23.5) * H  # 12 bohr box


def gaussian(n_electrons: float, centre=(0.0, 0.0, 0.0), sigma: float = 0.8) -> np.ndarray:
    """An isotropic Gaussian 'atom' holding n_electrons: integrates to n_electrons in space."""
    z, y, x = np.meshgrid(AXIS - centre[0], AXIS - centre[1], AXIS - centre[2], indexing="ij")
    return n_electrons * np.exp(-(x**2 + y**2 + z**2) / (2 * sigma**2)) / (2 * np.pi * sigma**2) ** 1.5


def test_electron_count_of_a_resolved_gaussian_is_its_charge():
    np.testing.assert_allclose(electron_counts(gaussian(10.0), H**3), 10.0, rtol=1e-6)


def test_centre_of_charge_finds_the_gaussian():
    np.testing.assert_allclose(centre_of_charge(gaussian(2.0, (0.5, -1.0, 0.25)), [AXIS] * 3),
                               [0.5, -1.0, 0.25], atol=1e-6)


def test_radial_profile_of_a_gaussian_follows_it():
    prof = radial_profile(gaussian(1.0, sigma=1.0), [AXIS] * 3, width=H, n_bins=20)
    r = (np.arange(20) + 0.5) * H
    exact = np.exp(-(r**2) / 2) / (2 * np.pi) ** 1.5
    np.testing.assert_allclose(prof[2:12], exact[2:12], rtol=0.1)  # shell means ~ value at mid-radius


def test_identical_members_score_perfectly_and_a_scaled_one_by_its_scale():
    ref = gaussian(8.0)[None]
    members = np.stack([ref, 1.1 * ref])  # (M=2, C=1, ...)
    s = molecular_scores(members, ref, [AXIS] * 3, H**3, labels=np.array([0]), label_names=["X"])
    assert s["negative_fraction"] == 0.0
    np.testing.assert_allclose(s["electron_count_relative_error"]["median"], 0.05, rtol=1e-6)
    np.testing.assert_allclose(s["electron_count_relative_error"]["max"], 0.1, rtol=1e-6)
    np.testing.assert_allclose(s["peak_ratio"]["max"], 1.1, rtol=1e-6)
    np.testing.assert_allclose(s["radial_profile_relative_error"]["max"], 0.1, rtol=1e-6)
    np.testing.assert_allclose(s["spectrum_ratio"], np.sqrt(1.21), rtol=1e-6)  # 1 and 1.21, geomean
    assert s["by_molecule"]["X"]["conditions"] == 1


def test_a_shifted_member_keeps_its_radial_profile_and_count():
    ref = gaussian(8.0)[None]
    shifted = gaussian(8.0, centre=(1.0, -0.5, 0.75))[None, None]
    s = molecular_scores(shifted, ref, [AXIS] * 3, H**3)
    assert s["radial_profile_relative_error"]["max"] < 1e-3  # about its own centre of charge
    assert s["electron_count_relative_error"]["max"] < 1e-6


def test_negative_voxels_are_counted():
    ref = gaussian(8.0)[None]
    member = ref.copy()
    member[0, 0, 0, :4] = -1e-4
    s = molecular_scores(member[None], ref, [AXIS] * 3, H**3)
    assert s["negative_fraction"] == pytest.approx(4 / member.size)


def test_memorisation_flags_a_copy_of_a_training_density():
    train = np.stack([gaussian(8.0, (0.5 * k, 0.0, 0.0)) for k in range(4)])
    ref = gaussian(8.0, (0.25, 1.5, 0.0))[None]  # farther from every training density than they are apart
    copy = memorisation(train[1][None, None], ref, train)
    fresh = memorisation(ref[None], ref, train)
    assert copy["copies"] == 1.0 and copy["nearest_train_rms"] == pytest.approx(0.0, abs=1e-9)
    assert fresh["copies"] == 0.0 and fresh["reference_rms"] == 0.0
