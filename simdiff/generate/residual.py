"""The decoder's residual model: sampling p(x | z) instead of returning the decoder's output.

The autoencoder is trained with a (weighted) mean-squared error, so its decoder returns an
estimate of the conditional mean E[x | z]: a field smoother than any real state, missing the
part of x that the latent code does not hold (at 16x compression on QG, most of the
small-scale potential vorticity). An ensemble of decoded means is therefore under-dispersed by
the reconstruction error whatever the latent ensemble does, and its spectra are wrong at small
scales.

This module models the truth given the decoded field ``d = D(z)`` as a stationary Gaussian,
mode by mode in Fourier space (normalised units, each channel and level on its own):

    X(k) = (1 + beta(k)) D(k) + E(k),    E(k) ~ N(0, P_e(k)), independent of D

- **Regression.** ``beta(k) = <R(k) D(k)*> / <|D(k)|^2>`` with ``R = X - D`` the residual: the
  part of the residual a linear filter of the decoded field predicts. Where the decoder invents
  content the truth never has (above a simulation's dealiasing cutoff, say) ``R = -D`` and
  ``beta = -1`` removes it; where the residual is unrelated to ``D``, ``beta ~ 0``.
- **Noise.** ``P_e(k) = <|R(k)|^2> - |<R(k) D(k)*>|^2 / <|D(k)|^2>``: the residual power the
  filter does not explain. It is drawn as white noise filtered by ``sqrt(P_e)``, then scaled per
  cell by the residual's standard deviation (averaged over the periodic axes, so it varies with
  latitude on a global grid and not at all on a doubly periodic box) times the fraction of the
  residual variance that is noise.
- **Axes.** The spectral axes are y/x (plus depth on voxel grids). A non-periodic axis is
  zero-padded to twice its length, so neither the filter nor the noise wraps around it. Masked
  cells count as zero in the fit and get no noise.

**Dry cells.** A variable with a lower bound that the data reach often (precipitation: most
cells are exactly 0) is a censored quantity: the truth is dry where a latent Gaussian value
lies below a threshold (Bardossy & Plate 1992). The decoded mean of a field with sharp rain
edges is smooth, and the Gaussian noise lifts half of the near-dry cells above the data's
own zero threshold, so draws would carry far too much drizzle. The model therefore also holds,
per channel (and level), a censoring threshold ``dry_below`` in normalised units, fitted so
that the draws' fraction of dry cells on the held-out samples equals the truth's there
(:class:`DryFit`: the quantile of the draws at the truth's dry fraction); a draw below it is
set to ``dry_value``, the normalised lower bound, which the store's inverse transform maps to
exactly the bound. Where the draws are already at least as dry as the truth nothing changes.

``<.>`` are means over held-out samples (the val split); nothing is tuned on the test split.
The residual is not centred: a bias of the decoder at a cell counts as spread there. What it
leaves out: cross-channel and cross-level correlation of the residual (each channel is drawn
independently), its dependence on the state beyond the linear filter, and non-Gaussian
structure. One draw costs three FFTs of one (padded) field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch


@dataclass(frozen=True)
class ResidualModel:
    """A fitted model of fields ``(C, [D], H, W)`` given their decoded mean.

    Attributes:
        beta: ``(C, [D], *half)`` complex64, the regression filter on the decoded field (real-FFT
            half spectrum of the padded spectral axes).
        amplitude: ``(C, [D], *half)`` sqrt of the noise power spectrum, scaled so that the
            filtered white noise has unit variance.
        std: ``(C, [D], H, W)`` the noise standard deviation per cell (0 at masked cells).
        mask: ``([D], H, W)`` the valid cells.
        axes: the number of trailing spectral axes (2, or 3 on voxel grids).
        padded: the padded sizes of the spectral axes.
        dry_below: ``(C, [D])`` the censoring threshold of each channel (-inf: none), or None.
        dry_value: ``(C, [D])`` what a censored value becomes (the normalised lower bound).
    """

    beta: torch.Tensor
    amplitude: torch.Tensor
    std: torch.Tensor
    mask: torch.Tensor
    axes: int
    padded: tuple[int, ...]
    dry_below: torch.Tensor | None = None
    dry_value: torch.Tensor | None = None

    @classmethod
    def fit(
        cls,
        residuals: np.ndarray,
        mask: np.ndarray,
        periodic: Sequence[bool],
        decoded: np.ndarray | None = None,
    ) -> ResidualModel:
        """Fit from arrays held in memory (see :class:`ResidualFit`); ``decoded=None``: no filter."""
        acc = ResidualFit(mask, periodic)
        acc.add(residuals, decoded)
        return acc.finish()

    @property
    def shape(self) -> tuple[int, ...]:
        """The field shape ``(C, [D], H, W)`` it draws."""
        return tuple(self.std.shape)

    def rms(self) -> np.ndarray:
        """``(C, [D])`` the noise rms over valid cells (normalised units)."""
        s = self.std.double().numpy()
        dims = tuple(range(-self.axes, 0))
        den = np.maximum(np.broadcast_to(self.mask.numpy(), s.shape).sum(axis=dims), 1)
        return np.sqrt((s**2).sum(axis=dims) / den)

    def _fft(self, field: torch.Tensor) -> torch.Tensor:
        return torch.fft.rfftn(field, s=self.padded, dim=tuple(range(-self.axes, 0)))

    def _ifft(self, spec: torch.Tensor) -> torch.Tensor:
        out = torch.fft.irfftn(spec, s=self.padded, dim=tuple(range(-self.axes, 0)))
        return out[(..., *(slice(0, n) for n in self.std.shape[-self.axes :]))]

    def correction(self, decoded: torch.Tensor) -> torch.Tensor:
        """The predicted residual ``beta * D`` of one decoded field ``(C, [D], H, W)``."""
        mask = self.mask.to(decoded.device)
        d = torch.where(mask, decoded.float(), 0.0)
        return torch.where(mask, self._ifft(self._fft(d) * self.beta.to(decoded.device)), 0.0)

    def noise(self, generator: torch.Generator) -> torch.Tensor:
        """One draw of the noise ``(C, [D], H, W)`` float32 on the generator's device."""
        device = generator.device
        lead = tuple(self.std.shape[: self.std.ndim - self.axes])
        white = torch.randn((*lead, *self.padded), generator=generator, device=device, dtype=torch.float32)
        return self._ifft(self._fft(white) * self.amplitude.to(device)) * self.std.to(device)

    def sample(self, decoded: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A draw of x given one decoded field ``(C, [D], H, W)``: ``d + beta * d + noise``,
        censored at ``dry_below`` when the model has it."""
        x = decoded + (self.correction(decoded) + self.noise(generator)).to(decoded)
        return x if self.dry_below is None else self.censor(x)

    def censor(self, x: torch.Tensor) -> torch.Tensor:
        """``x (..., C, [D], H, W)`` with the values below ``dry_below`` set to ``dry_value``."""
        assert self.dry_below is not None and self.dry_value is not None
        view = (*self.dry_below.shape, *([1] * (self.std.ndim - self.dry_below.ndim)))
        below = self.dry_below.to(x).reshape(view)
        return torch.where(x < below, self.dry_value.to(x).reshape(view), x)

    def with_dry(self, below: np.ndarray, value: np.ndarray) -> ResidualModel:
        """This model with the censoring thresholds ``below`` and values ``value`` ``(C, [D])``."""
        return replace(self, dry_below=torch.as_tensor(below, dtype=torch.float32),
                       dry_value=torch.as_tensor(value, dtype=torch.float32))

    def sample_rows(self, decoded: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """One draw per row of ``decoded (B, C, [D], H, W)``, row ``i`` from ``generators[i]``."""
        if len(generators) != decoded.shape[0]:
            raise ValueError(f"{len(generators)} generators for {decoded.shape[0]} rows: give one per row")
        return torch.stack([self.sample(d, g) for d, g in zip(decoded, generators, strict=True)])


class ResidualFit:
    """Streaming fit of a :class:`ResidualModel`: :meth:`add` batches, then :meth:`finish`.

    Memory is one batch plus a few fields' worth of sums (power and cross spectra, squares), so
    a fit over many global 0.25 degree fields never holds them all.

    Args:
        mask: ``([D], H, W)`` True where the field is valid; values at masked cells are ignored.
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
        self._sums: dict[str, np.ndarray] = {}

    def _clean(self, a: np.ndarray, name: str) -> np.ndarray:
        a = np.asarray(a, dtype=np.float64)
        if a.ndim < 2 + self.k or a.shape[-self.mask.ndim :] != self.mask.shape:
            raise ValueError(
                f"{name} of shape {a.shape} do not end in the mask's shape {self.mask.shape}: "
                "give (N, C, [D], H, W) on the training store's grid"
            )
        return np.where(self.mask, np.nan_to_num(a), 0.0)

    def _accumulate(self, name: str, value: np.ndarray) -> None:
        self._sums[name] = value if name not in self._sums else self._sums[name] + value

    def add(self, residuals: np.ndarray, decoded: np.ndarray | None = None) -> None:
        """Add a batch: residuals ``x - D(E(x))`` and the decoded fields ``D(E(x))``, both
        ``(N, C, [D], H, W)`` in normalised units (``decoded=None``: the filter stays 0)."""
        r = self._clean(residuals, "residuals")
        axes = tuple(range(-self.k, 0))
        fr = np.fft.rfftn(r, s=self.padded, axes=axes)
        self._accumulate("rr", (fr.real**2 + fr.imag**2).sum(axis=0))
        self._accumulate("cells", (r**2).sum(axis=0))
        if decoded is not None:
            d = self._clean(decoded, "decoded")
            if d.shape != r.shape:
                raise ValueError(f"decoded {d.shape} and residuals {r.shape} differ in shape")
            fd = np.fft.rfftn(d, s=self.padded, axes=axes)
            self._accumulate("dd", (fd.real**2 + fd.imag**2).sum(axis=0))
            self._accumulate("rd", (fr * fd.conj()).sum(axis=0))
        self.n += r.shape[0]

    def finish(self) -> ResidualModel:
        """The fitted model (at least 2 fields must have been added)."""
        if self.n < 2:
            raise ValueError(f"{self.n} residual field(s) added: need at least 2 to fit a residual model")
        k = self.k
        axes = tuple(range(-k, 0))
        norm = self.n * float(np.prod(self.padded))
        rr = self._sums["rr"] / norm
        if "dd" in self._sums:
            dd, rd = self._sums["dd"] / norm, self._sums["rd"] / norm
            live = dd > 1e-12 * max(float(dd.max()), 1e-300)
            beta = np.where(live, rd / np.where(live, dd, 1.0), 0.0)
            noise = np.maximum(rr - np.where(live, np.abs(rd) ** 2 / np.where(live, dd, 1.0), 0.0), 0.0)
        else:
            beta, noise = np.zeros(rr.shape, np.complex128), rr
        # variances of white unit noise filtered by sqrt(power): the zero-lag autocovariances
        lag0 = (..., *([0] * k))
        var_noise = np.fft.irfftn(noise, s=self.padded, axes=axes)[lag0]
        var_resid = np.fft.irfftn(rr, s=self.padded, axes=axes)[lag0]
        scale = np.where(var_noise > 0, 1.0 / np.sqrt(np.maximum(var_noise, 1e-300)), 0.0)
        amplitude = np.sqrt(noise) * scale.reshape(scale.shape + (1,) * k)
        fraction = np.where(var_resid > 0, var_noise / np.maximum(var_resid, 1e-300), 0.0)  # noise / residual
        second = self._sums["cells"]
        count = np.broadcast_to(self.mask, second.shape).astype(np.float64) * self.n
        for axis, p in zip(range(second.ndim - k, second.ndim), self.periodic, strict=True):
            if p:  # pool the cells of a periodic axis: the residual is stationary along it
                second = np.broadcast_to(second.sum(axis=axis, keepdims=True), second.shape)
                count = np.broadcast_to(count.sum(axis=axis, keepdims=True), count.shape)
        std = np.sqrt(second / np.maximum(count, 1) * fraction.reshape(fraction.shape + (1,) * k))
        return ResidualModel(
            beta=torch.as_tensor(beta, dtype=torch.complex64),
            amplitude=torch.as_tensor(amplitude, dtype=torch.float32),
            std=torch.as_tensor(np.where(self.mask, std, 0.0), dtype=torch.float32),
            mask=torch.as_tensor(self.mask),
            axes=k,
            padded=self.padded,
        )


class DryFit:
    """Streaming fit of the censoring thresholds of :class:`ResidualModel` (see "Dry cells").

    For each channel (and level) with a lower bound, :meth:`add` counts the truth's dry cells
    (at or below the normalised bound's threshold ``dry_at``) and bins the draws' values on a
    fine grid; :meth:`finish` returns the draws' quantile at the truth's dry fraction, which
    resolves it to ``(hi - lo) / bins`` normalised units.

    Args:
        dry_at: ``(C, [D])`` the largest normalised value the store's inverse maps to the lower
            bound (NaN: a channel without one, left alone).
        mask: ``([D], H, W)`` the valid cells.
    """

    LO, HI, BINS = -12.0, 12.0, 48_000

    def __init__(self, dry_at: np.ndarray, mask: np.ndarray) -> None:
        self.dry_at = np.asarray(dry_at, dtype=np.float64)
        self.mask = np.asarray(mask, dtype=bool)
        self.edges = np.linspace(self.LO, self.HI, self.BINS + 1)
        self.truth_dry = np.zeros(self.dry_at.shape)
        self.draws_dry = np.zeros(self.dry_at.shape)
        self.cells = np.zeros(self.dry_at.shape)
        self.hist = np.zeros((*self.dry_at.shape, self.BINS + 2))

    def add(self, truth: np.ndarray, draws: np.ndarray) -> None:
        """A batch of normalised truths and draws ``(N, C, [D], H, W)``."""
        lead = self.dry_at.shape
        for idx in np.ndindex(*lead):
            at = self.dry_at[idx]
            if not np.isfinite(at):
                continue
            sel = (slice(None), *idx)
            valid = np.broadcast_to(self.mask[idx[1:]], truth[sel].shape)
            x, s = truth[sel][valid], draws[sel][valid]
            self.truth_dry[idx] += np.count_nonzero(x <= at)
            self.draws_dry[idx] += np.count_nonzero(s <= at)
            self.cells[idx] += x.size
            pos = np.searchsorted(self.edges, s, side="right")
            self.hist[idx] += np.bincount(pos, minlength=self.BINS + 2)

    def finish(self) -> tuple[np.ndarray, dict[tuple[int, ...], dict[str, float | None]]]:
        """``(dry_below, summary)``: the thresholds (-inf where nothing is censored) and, per
        channel index, the truth's and the draws' dry fractions and the threshold."""
        below = np.full(self.dry_at.shape, -np.inf)
        summary: dict[tuple[int, ...], dict[str, float | None]] = {}
        for idx in np.ndindex(*self.dry_at.shape):
            n = self.cells[idx]
            if not np.isfinite(self.dry_at[idx]) or n == 0:
                continue
            p_truth, p_draws = self.truth_dry[idx] / n, self.draws_dry[idx] / n
            entry: dict[str, float | None] = {"truth_dry": float(p_truth), "draws_dry": float(p_draws),
                                              "threshold": None}
            if p_truth > p_draws:
                cdf = np.cumsum(self.hist[idx]) / n  # cdf[i]: fraction of draws below edges[i]
                i = int(np.searchsorted(cdf, p_truth, side="left"))
                edge = self.edges[min(max(i, 0), self.BINS)]
                up = np.float32(edge)  # draws are float32: round up so each one binned below stays below
                below[idx] = float(up if up >= edge else np.nextafter(up, np.float32(np.inf)))
                entry["threshold"] = float(below[idx])
            summary[idx] = entry
        return below, summary
