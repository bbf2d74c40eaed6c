"""The decoder's residual model (simdiff.generate.residual) and sampling through LatentDecoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simdiff.generate.noise import member_generators
from simdiff.generate.residual import DryFit, ResidualFit, ResidualModel
from simdiff.generate.rollout import LatentDecoder
from simdiff.nets.autoencoder import Autoencoder
from simdiff.nets.bottleneck import BoundedBottleneck

N = 32


def gaussian_spectrum(n: int, k0: float) -> np.ndarray:
    """S(k) = exp(-|k|^2 / (2 k0^2)) on an n x n periodic box (full FFT layout)."""
    k = np.fft.fftfreq(n) * n
    return np.exp(-(k[:, None] ** 2 + k[None, :] ** 2) / (2 * k0**2))


def coloured(rng: np.random.Generator, count: int, spectrum: np.ndarray) -> np.ndarray:
    """``count`` stationary fields with power spectrum ``spectrum``, unit variance."""
    white = rng.standard_normal((count, *spectrum.shape))
    f = np.fft.ifft2(np.fft.fft2(white) * np.sqrt(spectrum)).real
    return f / np.sqrt(spectrum.mean())


def lag1(fields: np.ndarray, axis: int) -> float:
    """Lag-1 autocorrelation along a periodic ``axis`` (fields are zero-mean)."""
    return float((fields * np.roll(fields, 1, axis=axis)).mean() / (fields**2).mean())


def draws(model: ResidualModel, count: int, seed: int = 0) -> np.ndarray:
    """``count`` noise draws (no decoded field: the noise part alone)."""
    g = torch.Generator().manual_seed(seed)
    return np.stack([model.noise(g).numpy() for _ in range(count)]).astype(np.float64)


def test_white_residual_gives_its_variance_and_no_correlation() -> None:
    rng = np.random.default_rng(0)
    sigma = 0.3
    res = sigma * rng.standard_normal((64, 1, N, N))
    model = ResidualModel.fit(res, np.ones((N, N), bool), (True, True))
    np.testing.assert_allclose(model.std.numpy(), sigma, rtol=0.01)  # 65536 pooled cells
    out = draws(model, 64)
    assert out.shape == (64, 1, N, N)
    assert abs(out.std() / sigma - 1) < 0.02
    assert abs(lag1(out, -1)) < 0.03 and abs(lag1(out, -2)) < 0.03


def test_correlated_residual_keeps_its_correlation_length() -> None:
    """Closed form: the lag-1 autocorrelation of a field with spectrum S is sum S cos(2 pi k / n) / sum S."""
    spectrum = gaussian_spectrum(N, k0=3.0)
    k = np.fft.fftfreq(N) * N
    rho1 = float((spectrum * np.cos(2 * np.pi * k / N)[None, :]).sum() / spectrum.sum())
    rng = np.random.default_rng(1)
    res = 2.0 * coloured(rng, 64, spectrum)[:, None]
    model = ResidualModel.fit(res, np.ones((N, N), bool), (True, True))
    out = draws(model, 128)
    assert rho1 > 0.8  # a smooth field: the test means something
    assert abs(lag1(out, -1) - rho1) < 0.03 and abs(lag1(out, -2) - rho1) < 0.03
    assert abs(out.std() / 2.0 - 1) < 0.05


def test_non_periodic_axis_keeps_per_row_variance_and_does_not_wrap() -> None:
    """Along a non-periodic y the std follows the rows, and the first and last rows are unrelated;
    along periodic x the first and last columns are neighbours."""
    spectrum = gaussian_spectrum(N, k0=3.0)
    rng = np.random.default_rng(2)
    profile = np.linspace(0.5, 2.0, N)[:, None]
    res = coloured(rng, 96, spectrum)[:, None] * profile
    model = ResidualModel.fit(res, np.ones((N, N), bool), (False, True))
    assert model.padded == (2 * N, N)
    out = draws(model, 256)[:, 0]
    row_std = np.sqrt((out**2).mean(axis=(0, 2)))
    np.testing.assert_allclose(row_std / profile[:, 0], 1.0, atol=0.1)
    first_last_row = np.corrcoef(out[:, 0, :].ravel(), out[:, -1, :].ravel())[0, 1]
    first_last_col = np.corrcoef(out[:, :, 0].ravel(), out[:, :, -1].ravel())[0, 1]
    assert abs(first_last_row) < 0.05
    assert first_last_col > 0.7


def test_masked_cells_get_no_noise_and_their_values_are_ignored() -> None:
    rng = np.random.default_rng(3)
    mask = np.ones((2, N, N), bool)
    mask[:, :5, 10:20] = False
    res = rng.standard_normal((8, 3, 2, N, N))
    junk = res.copy()
    junk[..., ~mask] = np.nan
    a = ResidualModel.fit(np.where(mask, res, 0.0), mask, (False, True))
    b = ResidualModel.fit(junk, mask, (False, True))
    torch.testing.assert_close(a.std, b.std, rtol=0, atol=0)
    torch.testing.assert_close(a.amplitude, b.amplitude, rtol=0, atol=0)
    out = b.noise(torch.Generator().manual_seed(0)).numpy()
    assert out.shape == (3, 2, N, N)
    assert (out[:, ~mask] == 0).all() and (out[:, mask] != 0).all()


def test_streaming_fit_equals_one_batch_fit() -> None:
    rng = np.random.default_rng(4)
    res = rng.standard_normal((10, 2, N, N))
    mask = np.ones((N, N), bool)
    dec = rng.standard_normal((10, 2, N, N))
    acc = ResidualFit(mask, (True, False))
    acc.add(res[:3], dec[:3])
    acc.add(res[3:], dec[3:])
    one = ResidualModel.fit(res, mask, (True, False), dec)
    two = acc.finish()
    torch.testing.assert_close(one.std, two.std, rtol=1e-6, atol=0)
    torch.testing.assert_close(one.amplitude, two.amplitude, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(one.beta, two.beta, rtol=1e-5, atol=1e-7)


def test_voxel_grid_draws_are_correlated_along_depth_too() -> None:
    n = 12
    k = np.fft.fftfreq(n) * n
    spec = np.exp(-(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2) / (2 * 2.0**2))
    rng = np.random.default_rng(5)
    res = np.fft.ifftn(np.fft.fftn(rng.standard_normal((48, 1, n, n, n)), axes=(-3, -2, -1)) * np.sqrt(spec),
                       axes=(-3, -2, -1)).real
    model = ResidualModel.fit(res, np.ones((n, n, n), bool), (True, True, True))
    out = draws(model, 32)
    rho = float((spec * np.cos(2 * np.pi * k / n)[:, None, None]).sum() / spec.sum())
    assert abs(lag1(out, -3) - rho) < 0.05  # depth is a spectral axis: correlated as in the data


def test_filter_removes_what_the_decoder_invents_and_keeps_the_truths_power() -> None:
    """Truth x has no power above a cutoff |k| > 8 (a dealiased simulation); the decoder's d = x
    smoothed + spurious content above the cutoff. The fitted filter removes the spurious part
    (beta = -1 there), so draws have the truth's power at every wavenumber, and the corrected
    mean is closer to x than d is."""
    rng = np.random.default_rng(7)
    k = np.fft.fftfreq(N) * N
    kk = np.sqrt(k[:, None] ** 2 + k[None, :] ** 2)
    low = kk <= 8
    x = coloured(rng, 96, np.where(low, 1.0, 0.0))[:, None]
    smooth = np.fft.ifft2(np.fft.fft2(x) * np.exp(-(kk / 6.0) ** 2)).real
    spurious = 0.2 * coloured(rng, 96, np.where(low, 0.0, 1.0))[:, None]
    d = smooth + spurious
    model = ResidualModel.fit((x - d)[:64], np.ones((N, N), bool), (True, True), d[:64])
    high = ~low
    assert model.beta.shape == (1, N, N // 2 + 1)
    half_high = high[:, : N // 2 + 1]
    np.testing.assert_allclose(model.beta.numpy()[0][half_high].real, -1.0, atol=1e-6)
    test_x, test_d = x[64:], d[64:]
    g = torch.Generator().manual_seed(0)
    out = np.stack([model.sample(torch.as_tensor(v, dtype=torch.float32), g).numpy() for v in test_d])
    corrected = np.stack([(v + model.correction(torch.as_tensor(v, dtype=torch.float32)).numpy())
                          for v in test_d])

    def power(f: np.ndarray) -> np.ndarray:
        return (np.abs(np.fft.fft2(f[:, 0])) ** 2).mean(axis=0)

    p_out, p_x, p_d = power(out), power(test_x), power(test_d)
    assert p_out[high].sum() < 1e-6 * p_d[high].sum()  # spurious content gone, nothing added there
    assert abs(p_out[low].sum() / p_x[low].sum() - 1) < 0.1  # the truth's power where it has some
    assert np.sqrt(((corrected - test_x) ** 2).mean()) < 0.8 * np.sqrt(((test_d - test_x) ** 2).mean())


def test_fit_refuses_too_few_or_misshaped_residuals() -> None:
    mask = np.ones((N, N), bool)
    with pytest.raises(ValueError, match="at least 2"):
        ResidualModel.fit(np.zeros((1, 1, N, N)), mask, (True, True))
    with pytest.raises(ValueError, match="mask's shape"):
        ResidualModel.fit(np.zeros((4, 1, N, N + 1)), mask, (True, True))


def tiny_decoder(residual: ResidualModel | None) -> LatentDecoder:
    torch.manual_seed(0)
    net = Autoencoder(2, (False, True), latent_channels=2, channels=(4, 8), factors=[[2, 2]],
                      bottleneck=BoundedBottleneck(), groups=2).eval()
    return LatentDecoder(net, torch.zeros(2), torch.ones(2), (8, 8), residual)


def test_decoder_adds_keyed_residual_draws_per_row() -> None:
    rng = np.random.default_rng(6)
    model = ResidualModel.fit(0.5 * rng.standard_normal((16, 2, 8, 8)), np.ones((8, 8), bool), (False, True))
    z = torch.randn(3, 2, 4, 4)
    mean = tiny_decoder(None)(z, row_by_row=True)
    dec = tiny_decoder(model)
    torch.testing.assert_close(dec(z, row_by_row=True), mean, rtol=0, atol=0)  # no generators: the mean
    full = dec(z, row_by_row=True, generators=member_generators(0, [7, 7, 7], [0, 1, 2], 1))
    alone = dec(z[1:2], row_by_row=True, generators=member_generators(0, [7], [1], 1))
    # a member's draw does not depend on its batch
    torch.testing.assert_close(full[1:2], alone, rtol=0, atol=0)
    spread = (full - mean).std().item()
    assert 0.3 < spread < 0.7  # the fitted residual's size, not the decoder's
    torch.testing.assert_close(model.beta, torch.zeros_like(model.beta))  # fitted without decoded fields
    with pytest.raises(ValueError, match="one per row"):
        dec(z, generators=member_generators(0, [7], [0], 1))


def test_dry_fit_puts_the_threshold_at_the_draws_quantile_of_the_truths_dry_fraction() -> None:
    mask = np.ones((10, 100), bool)
    mask[0, :] = False  # a masked row: never counted
    truth = np.full((2, 2, 10, 100), 1.0)
    truth[:, 0, :, :60] = -1.0  # channel 0: 60 % dry (at or below -0.9)
    truth[:, 1, :, :10] = -1.0  # channel 1: 10 % dry
    truth[:, :, 0, :] = -1.0  # masked: would make both drier
    # draws evenly spread over [-3, 3): the quantile at p is -3 + 6 p
    draws = np.broadcast_to(np.linspace(-3.0, 3.0, 100, endpoint=False), truth.shape).astype(np.float32)
    fit = DryFit(np.array([-0.9, -0.9]), mask)
    fit.add(truth[:1], draws[:1])
    fit.add(truth[1:], draws[1:])  # streaming: two batches
    below, summary = fit.finish()
    assert summary[(0,)]["truth_dry"] == pytest.approx(0.6)
    assert summary[(0,)]["draws_dry"] == pytest.approx(0.35)  # values <= -0.9: -3 .. -0.96
    # 60 of the 100 draw values (-3, -2.94, .., 0.54) lie below it: within two bins above 0.54
    assert 0.54 < below[0] <= 0.54 + 2 * 24.0 / DryFit.BINS
    # channel 1: the draws are already drier than the truth, nothing is censored
    assert summary[(1,)]["threshold"] is None and below[1] == -np.inf
    # with the threshold, the censored draws are dry at the truth's rate
    model = ResidualModel.fit(np.zeros((2, 2, 10, 100)) + 1e-3 * np.arange(2)[:, None, None, None],
                              mask, (False, False)).with_dry(below, np.array([-1.0, -1.0]))
    censored = model.censor(torch.as_tensor(draws, dtype=torch.float32)).numpy()
    assert (censored[:, 0][:, mask] <= -0.9).mean() == pytest.approx(0.6, abs=1e-12)
    np.testing.assert_array_equal(censored[:, 1], draws[:, 1])
    assert set(np.unique(censored[:, 0][censored[:, 0] < below[0]])) == {-1.0}


def test_dry_fit_leaves_channels_without_a_lower_bound_alone() -> None:
    fit = DryFit(np.array([np.nan, -0.5]), np.ones((4, 4), bool))
    fit.add(np.full((3, 2, 4, 4), -1.0), np.zeros((3, 2, 4, 4)))
    below, summary = fit.finish()
    assert below[0] == -np.inf and (0,) not in summary
    assert summary[(1,)]["truth_dry"] == 1.0 and below[1] > 0.0


def test_censored_below_is_the_inverse_transforms_last_dry_value() -> None:
    from simdiff.data.transforms import Clip, Identity, Log1p, censored_below

    top = censored_below(Log1p(scale=1e-4, zero_below=4e-6))
    assert top == pytest.approx(np.log1p(0.04), rel=1e-12)
    t = Log1p(scale=1e-4, zero_below=4e-6)
    assert t.inverse(np.float64(top)) == 0.0 and t.inverse(np.float64(top * (1 + 1e-9))) > 0.0
    assert censored_below(Log1p(scale=1.0)) == pytest.approx(0.0, abs=1e-12)
    assert censored_below(Clip(min=0.0, max=1.0)) == pytest.approx(0.0, abs=1e-12)
    assert censored_below(Identity()) is None and censored_below(Clip(max=3.0)) is None
