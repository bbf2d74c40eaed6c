"""The decoder's residual model: sampling p(x | z) instead of returning its mean.

The autoencoder is trained with a (weighted) mean-squared error, so its decoder returns an
estimate of the conditional mean E[x | z]: a field smoother than any real state, missing the
part of x that the latent code does not hold (at 16x compression on QG, most of the
small-scale potential vorticity). An ensemble of decoded means is therefore under-dispersed by
the reconstruction error whatever the latent ensemble does, and its spectra fall off at high
wavenumbers.

This module models the residual ``r = x - D(E(x))`` (normalised units) as a zero-mean Gaussian
field and draws from it, so that a decoded member is a sample ``D(z) + r``:

- **Spectrum.** For each channel (and level) the residual is taken as stationary over the
  spectral axes (y/x, plus depth on voxel grids), with the power spectrum estimated from held-out
  residuals: ``P(k) = mean_n |FFT(r_n)(k)|^2 / N_cells``. A non-periodic axis is zero-padded to
  twice its length first, so the modelled covariance does not wrap around it.
  The residual is not centred: a bias of the decoder at a cell counts as spread there.
- **Amplitude.** Stationary unit-variance noise with that spectrum is scaled per cell by the
  residual standard deviation, averaged over the periodic axes (so it varies with latitude on a
  global grid, and not at all on a doubly periodic box). Masked cells get no noise.
- **Sampling.** White noise from the member's keyed generator, filtered by ``sqrt(P)`` in Fourier
  space, cropped, scaled. One draw costs two FFTs of one (padded) field.

What it leaves out: cross-channel and cross-level correlation of the residual (each channel is
drawn independently), its dependence on the state (it is homoscedastic), and non-Gaussian
structure. It is fitted once, on the validation split, with nothing tuned on the test split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class ResidualModel:
    """A fitted residual model for fields of shape ``(C, [D], H, W)``.

    Attributes:
        amplitude: ``(C, [D], *padded)`` sqrt of the power spectrum over the spectral axes (the
            last ``len(axes)`` axes, padded), as a real-FFT half spectrum, scaled so that the
            filtered white noise has unit variance.
        std: ``(C, [D], H, W)`` the residual standard deviation per cell (0 at masked cells).
        axes: the number of trailing spectral axes (2, or 3 on voxel grids).
        padded: the padded sizes of the spectral axes.
    """

    amplitude: torch.Tensor
    std: torch.Tensor
    axes: int
    padded: tuple[int, ...]

    @classmethod
    def fit(cls, residuals: np.ndarray, mask: np.ndarray, periodic: Sequence[bool]) -> ResidualModel:
        """Fit from residuals ``(N, C, [D], H, W)`` held in memory (see :class:`ResidualFit`)."""
        acc = ResidualFit(mask, periodic)
        acc.add(residuals)
        return acc.finish()

    @property
    def shape(self) -> tuple[int, ...]:
        """The field shape ``(C, [D], H, W)`` it draws."""
        return tuple(self.std.shape)

    def rms(self) -> np.ndarray:
        """``(C, [D])`` the modelled residual rms over valid cells (normalised units)."""
        s = self.std.double().numpy()
        k = self.axes
        valid = s > 0
        num = (s**2).sum(axis=tuple(range(-k, 0)))
        den = np.maximum(valid.sum(axis=tuple(range(-k, 0))), 1)
        return np.sqrt(num / den)

    def sample(self, generator: torch.Generator) -> torch.Tensor:
        """One draw ``(C, [D], H, W)`` float32 on the generator's device."""
        device = generator.device
        lead = tuple(self.std.shape[: self.std.ndim - self.axes])
        white = torch.randn((*lead, *self.padded), generator=generator, device=device, dtype=torch.float32)
        dims = tuple(range(-self.axes, 0))
        spec = torch.fft.rfftn(white, dim=dims) * self.amplitude.to(device)
        noise = torch.fft.irfftn(spec, s=self.padded, dim=dims)
        crop = (..., *(slice(0, n) for n in self.std.shape[-self.axes :]))
        return noise[crop] * self.std.to(device)

    def sample_rows(self, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """One draw per generator, stacked ``(B, C, [D], H, W)``."""
        return torch.stack([self.sample(g) for g in generators])


class ResidualFit:
    """Streaming fit of a :class:`ResidualModel`: :meth:`add` batches of residuals, then :meth:`finish`.

    Memory is one batch plus two fields' worth of sums (the power spectrum and the squares), so
    a fit over many global 0.25 degree fields never holds them all.

    Args:
        mask: ``([D], H, W)`` True where the field is valid; residuals at masked cells are ignored.
        periodic: one flag per spectral (trailing) axis, e.g. ``(False, True)`` for lat/lon;
            ``(True, True, True)`` for a periodic voxel cell.
    """

    def __init__(self, mask: np.ndarray, periodic: Sequence[bool]) -> None:
        self.mask = np.asarray(mask, dtype=bool)
        self.periodic = tuple(bool(p) for p in periodic)
        self.k = len(self.periodic)
        if self.k < 1 or self.mask.ndim < self.k:
            raise ValueError(f"mask of shape {self.mask.shape} has fewer than {self.k} spectral axes")
        spatial = self.mask.shape[-self.k :]
        self.padded = tuple(n if p else 2 * n for n, p in zip(spatial, self.periodic, strict=True))
        self.n = 0
        self._power: np.ndarray | None = None
        self._second: np.ndarray | None = None

    def add(self, residuals: np.ndarray) -> None:
        """Add a batch ``(N, C, [D], H, W)`` of residuals ``x - D(E(x))`` (normalised units)."""
        r = np.asarray(residuals, dtype=np.float64)
        if r.ndim < 2 + self.k or r.shape[-self.mask.ndim :] != self.mask.shape:
            raise ValueError(
                f"residuals of shape {r.shape} do not end in the mask's shape {self.mask.shape}: "
                "give (N, C, [D], H, W) on the training store's grid"
            )
        r = np.where(self.mask, np.nan_to_num(r), 0.0)
        spec = np.fft.rfftn(r, s=self.padded, axes=tuple(range(-self.k, 0)))
        power = (spec.real**2 + spec.imag**2).sum(axis=0)
        second = (r**2).sum(axis=0)
        self._power = power if self._power is None else self._power + power
        self._second = second if self._second is None else self._second + second
        self.n += r.shape[0]

    def finish(self) -> ResidualModel:
        """The fitted model (at least 2 residual fields must have been added)."""
        if self.n < 2 or self._power is None or self._second is None:
            raise ValueError(f"{self.n} residual field(s) added: need at least 2 to fit a residual model")
        k = self.k
        dims = tuple(range(-k, 0))
        power = self._power / (self.n * float(np.prod(self.padded)))
        # variance of white unit noise filtered by sqrt(power): the zero-lag autocovariance
        var = np.fft.irfftn(power, s=self.padded, axes=dims)[(..., *([0] * k))]
        scale = np.where(var > 0, 1.0 / np.sqrt(np.maximum(var, 1e-300)), 0.0)
        amplitude = np.sqrt(power) * scale.reshape(scale.shape + (1,) * k)
        second = self._second
        count = np.broadcast_to(self.mask, second.shape).astype(np.float64) * self.n
        for axis, p in zip(range(second.ndim - k, second.ndim), self.periodic, strict=True):
            if p:  # pool the cells of a periodic axis: the residual is stationary along it
                second = np.broadcast_to(second.sum(axis=axis, keepdims=True), second.shape)
                count = np.broadcast_to(count.sum(axis=axis, keepdims=True), count.shape)
        std = np.where(self.mask, np.sqrt(second / np.maximum(count, 1)), 0.0)
        return ResidualModel(
            amplitude=torch.as_tensor(amplitude, dtype=torch.float32),
            std=torch.as_tensor(std, dtype=torch.float32),
            axes=k,
            padded=self.padded,
        )
