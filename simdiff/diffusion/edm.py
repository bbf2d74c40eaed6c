"""EDM: preconditioning, training noise distribution and loss (Karras et al. 2022, Table 1).

With data standard deviation ``sigma_data`` and noise level ``sigma``::

    c_skip  = sigma_data^2 / (sigma^2 + sigma_data^2)
    c_out   = sigma * sigma_data / sqrt(sigma^2 + sigma_data^2)
    c_in    = 1 / sqrt(sigma^2 + sigma_data^2)
    c_noise = ln(sigma) / 4
    D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)

Training draws ``ln sigma ~ N(P_mean, P_std^2)`` and weights the squared error by
``lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2``, which makes the
effective target of F unit-variance at every sigma.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


def edm_coefficients(
    sigma: torch.Tensor, sigma_data: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(c_skip, c_out, c_in, c_noise)`` for noise levels ``sigma`` (any shape)."""
    s2 = sigma**2 + sigma_data**2
    return sigma_data**2 / s2, sigma * sigma_data / s2.sqrt(), 1 / s2.sqrt(), sigma.log() / 4


def edm_loss_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """``lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2``."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def _expand(v: torch.Tensor, ndim: int) -> torch.Tensor:
    return v.reshape(v.shape[0], *([1] * (ndim - 1)))


class EDMPrecond(nn.Module):
    """Wrap a raw network ``F(x_in, c_noise, **cond)`` into the denoiser ``D(x, sigma, **cond)``.

    Args:
        net: maps ``(B, C, ...)`` and ``c_noise`` ``(B,)`` (plus conditions) to ``(B, C, ...)``.
        sigma_data: standard deviation of the data (1 for unit-variance latents).
    """

    def __init__(self, net: nn.Module, sigma_data: float = 1.0) -> None:
        super().__init__()
        self.net = net
        self.sigma_data = float(sigma_data)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **cond: Any) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, self.sigma_data)
        f = self.net(_expand(c_in, x.ndim) * x, c_noise, **cond)
        return _expand(c_skip, x.ndim) * x + _expand(c_out, x.ndim) * f.to(x.dtype)


@dataclass(frozen=True)
class EDMLoss:
    """The EDM training loss with log-normal noise levels.

    Attributes:
        sigma_data: data standard deviation.
        p_mean, p_std: mean and std of ``ln sigma`` (EDM: -1.2, 1.2).
    """

    sigma_data: float = 1.0
    p_mean: float = -1.2
    p_std: float = 1.2

    def sample_sigma(
        self, n: int, *, generator: torch.Generator | None = None, device: Any = None
    ) -> torch.Tensor:
        """``n`` noise levels with ``ln sigma ~ N(p_mean, p_std^2)``."""
        z = torch.randn(n, generator=generator, device=device)
        return (self.p_mean + self.p_std * z).exp()

    def __call__(
        self,
        denoiser: Callable[..., torch.Tensor],
        y: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        weight: torch.Tensor | None = None,
        sigma: torch.Tensor | None = None,
        **cond: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample weighted loss and the sigmas used.

        Args:
            denoiser: ``D(x, sigma, **cond)``.
            y: clean data ``(B, C, ...)``.
            weight: optional cell weights broadcastable to ``y`` (e.g. a mask times cos lat,
                normalised to mean 1); the loss is their weighted mean per sample.
            sigma: (B,) noise levels to use instead of drawing them (e.g. to evaluate the loss
                at fixed levels).

        Returns:
            ``(loss (B,), sigma (B,))``; average ``loss`` for the objective.
        """
        if sigma is None:
            sigma = self.sample_sigma(y.shape[0], generator=generator, device=y.device)
        sigma = sigma.to(device=y.device, dtype=y.dtype)
        noise = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
        s = _expand(sigma, y.ndim)
        err = (denoiser(y + s * noise, sigma, **cond) - y) ** 2
        dims = tuple(range(1, y.ndim))
        if weight is None:
            per = err.mean(dims)
        else:
            w = torch.broadcast_to(weight, err.shape)
            per = (w * err).sum(dims) / w.sum(dims)
        return edm_loss_weight(sigma, self.sigma_data) * per, sigma
