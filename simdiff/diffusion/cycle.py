"""The forced cycle of the tendency: its mean by hour of day and day of year, removed before diffusing.

A forecaster of hourly near-surface temperature must learn that mornings warm and evenings
cool. From the time features alone (sin/cos of the hour, a global conditioning vector) a
small denoiser learns only part of it in a CPU budget (on WFDE5 the members warmed 41 % of the
record's morning warming). The cycle is not weather, it is forcing, so residual mode can take it
out by construction: the diffused variable becomes

    (x_{t+1} - x_t - m(t+1)) / s,    m(t) = sum_k a_k b_k(t)

with ``b_k`` a truncated Fourier basis in the phase of the day ``phi_d`` and of the year
``phi_a`` of the target time (``1, sin(j phi_d), cos(j phi_d), ..., sin(j phi_a), cos(j phi_a)``)
and ``a_k`` per latent channel and cell, fitted by least squares on the train split's
consecutive pairs (:func:`normal_equations`, :func:`solve`). Sampling adds ``m`` back, so the
ensemble mean follows the cycle the record holds and the model learns the anomaly of the
tendency from it. The same idea as forecasting anomalies about a climatology, applied to the
one-step change.

The phases come from the store's time features (:mod:`simdiff.data.time_features`):
``phi = atan2(sin, cos)`` of the hour pair and of the day-of-year pair.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from simdiff.data.loading.patch import crop_shared
from simdiff.data.time_features import TIME_FEATURES

#: (sin, cos) positions of each cycle's phase in a time-feature vector.
PHASES = {"daily": (TIME_FEATURES.index("sin_hour"), TIME_FEATURES.index("cos_hour")),
          "annual": (TIME_FEATURES.index("sin_doy"), TIME_FEATURES.index("cos_doy"))}


def n_terms(daily: int, annual: int) -> int:
    """Basis size for ``daily`` and ``annual`` harmonics: the mean plus a sin/cos pair each."""
    return 1 + 2 * (int(daily) + int(annual))


def basis(time_features: torch.Tensor, daily: int, annual: int) -> torch.Tensor:
    """(B, F) time features -> (B, K) basis values ``[1, sin phi_d, cos phi_d, sin 2 phi_d, ...]``."""
    cols = [torch.ones_like(time_features[:, 0])]
    for name, harmonics in (("daily", daily), ("annual", annual)):
        if harmonics:
            s, c = PHASES[name]
            phase = torch.atan2(time_features[:, s], time_features[:, c])
            for j in range(1, int(harmonics) + 1):
                cols += [torch.sin(j * phase), torch.cos(j * phase)]
    return torch.stack(cols, dim=1)


def coverage(time_features: np.ndarray, name: str) -> tuple[int, float]:
    """How well rows of ``time_features`` (N, F) sample a cycle: (distinct phases, largest gap).

    The phases are rounded to a minute of the day (daily) or an hour of the year (annual); the
    gap is the widest arc of the circle with no sample, in radians. ``H`` harmonics are
    determined when there are at least ``2 H + 1`` distinct phases and no gap wider than a
    quarter of the cycle: 6-hourly steps sample the daily cycle (4 phases, gaps of pi/2) for
    one harmonic; daily steps (one phase) and a month of the annual cycle (a gap of 11 months) do
    not.
    """
    s, c = PHASES[name]
    phase = np.arctan2(time_features[:, s], time_features[:, c]) % (2 * np.pi)
    resolution = 2 * np.pi / (24 * 60 if name == "daily" else 366 * 24)
    distinct = np.unique(np.round(phase / resolution)) * resolution
    if len(distinct) == 0:
        return 0, float(2 * np.pi)
    gaps = np.diff(np.concatenate([distinct, distinct[:1] + 2 * np.pi]))
    return len(distinct), float(gaps.max())


def normal_equations(b: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(B^T B, B^T Y)`` for basis rows ``b`` (N, K) and tendencies ``y`` (N, C, ...), float64."""
    b = np.asarray(b, dtype=np.float64)
    flat = np.asarray(y, dtype=np.float64).reshape(y.shape[0], -1)
    return b.T @ b, b.T @ flat


def solve(btb: np.ndarray, bty: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Least-squares coefficients (K, C, ...) from summed normal equations; ``shape`` is (C, ...)."""
    coef = np.linalg.solve(btb, bty)
    return coef.reshape(btb.shape[0], *shape)


class TendencyCycle(nn.Module):
    """``m(t)``: the fitted mean tendency at the target time, per latent channel and cell.

    Args:
        coef: (K, C, [d], h, w) coefficients of :func:`basis` (zeros before loading a checkpoint).
        daily, annual: harmonics of each cycle (0: that cycle is not modelled).
    """

    def __init__(self, coef: torch.Tensor, daily: int, annual: int) -> None:
        super().__init__()
        if coef.shape[0] != n_terms(daily, annual):
            raise ValueError(f"TendencyCycle: {coef.shape[0]} coefficient fields for {daily} daily and "
                             f"{annual} annual harmonics, which need {n_terms(daily, annual)}")
        self.daily, self.annual = int(daily), int(annual)
        self.register_buffer("coef", coef.to(torch.float32))

    def forward(self, time_features: torch.Tensor, origin: torch.Tensor | None = None,
                size: tuple[int, ...] | None = None) -> torch.Tensor:
        """(B, F) time features -> (B, C, [d], h, w); with ``origin`` (B, ndim) and ``size``, the crops."""
        b = basis(time_features.to(self.coef.dtype), self.daily, self.annual)
        coef = self.coef
        if origin is not None:
            cropped = crop_shared(coef, origin, size)  # (B, K, C, *size)
            return torch.einsum("bk,bk...->b...", b, cropped)
        return torch.einsum("bk,k...->b...", b, coef)
