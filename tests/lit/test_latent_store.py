"""Latent-store helpers: footprint weights and the per-channel latent scale."""

from __future__ import annotations

import numpy as np
import pytest

from simdiff.base.errors import DataError
from simdiff.data.stores.latents import footprint_weights, latent_scale


def test_footprint_weights_average_each_patch():
    w = np.arange(24, dtype=float).reshape(4, 6)
    out = footprint_weights(w, (2, 3), (False, True))
    expected = [[w[:2, :3].mean(), w[:2, 3:].mean()], [w[2:, :3].mean(), w[2:, 3:].mean()]]
    np.testing.assert_allclose(out, expected)


def test_footprint_weights_pad_like_the_autoencoder():
    w = np.arange(15, dtype=float).reshape(3, 5)
    out = footprint_weights(w, (2, 2), (False, True))  # y: edge-repeated row; x: wrapped column
    assert out.shape == (2, 3)
    assert out[1, 0] == pytest.approx(np.mean([w[2, 0], w[2, 1], w[2, 0], w[2, 1]]))
    assert out[0, 2] == pytest.approx(np.mean([w[0, 4], w[0, 0], w[1, 4], w[1, 0]]))


def test_latent_scale_uses_train_samples_only():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 2, 3, 4)) * np.array([1.0, 5.0])[None, :, None, None] + 2.0
    train = np.arange(10) < 6
    x[~train] = 100.0  # val/test samples must not change the scale
    mean, std = latent_scale(x.astype(np.float32), train)
    np.testing.assert_allclose(mean, x[train].mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(std, x[train].std(axis=(0, 2, 3)), rtol=1e-5)
    with pytest.raises(DataError, match="constant"):
        latent_scale(np.ones((4, 1, 2, 2), dtype=np.float32), np.ones(4, bool))
