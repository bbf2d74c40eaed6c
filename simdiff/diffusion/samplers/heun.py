"""EDM's stochastic sampler, Algorithm 2 of Karras et al. (2022), on Heun's 2nd-order method.

At each step the noise is first raised from ``sigma`` to ``sigma_hat = sigma (1 + gamma)``
by adding fresh noise ("churn"), with ``gamma = min(S_churn / N, sqrt(2) - 1)`` inside
``[S_tmin, S_tmax]`` and 0 elsewhere; then one Euler step to ``sigma_next`` is corrected
with the slope at its end (the trapezoidal rule), except on the last step to 0.
``S_churn = 0`` gives the deterministic Heun sampler (Algorithm 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from simdiff.diffusion.noise import randn_rows


def sample_heun(
    denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> torch.Tensor:
    """Heun sampling with optional churn.

    Args:
        denoiser: ``D(x, sigma)``.
        x: ``(B, ...)`` noise scaled by ``sigmas[0]``.
        sigmas: decreasing noise levels ending in 0.
        generator: the random stream(s) for the churn noise: None, one generator, or one
            per row of ``x`` (row b's noise then depends on generator b alone; see
            :func:`simdiff.diffusion.noise.randn_rows`).
        s_churn, s_tmin, s_tmax, s_noise: EDM's stochasticity parameters.
    """
    n = len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        gamma = min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= float(sigma) <= s_tmax else 0.0
        sigma_hat = sigma * (1 + gamma)
        if gamma > 0:
            eps = randn_rows(x.shape, generator, device=x.device, dtype=x.dtype)
            x = x + (sigma_hat**2 - sigma**2).sqrt() * s_noise * eps
        d = (x - denoiser(x, sigma_hat.to(x.dtype))) / sigma_hat
        x_next = x + (sigma_next - sigma_hat) * d
        if sigma_next > 0:
            d_next = (x_next - denoiser(x_next, sigma_next.to(x.dtype))) / sigma_next
            x_next = x + (sigma_next - sigma_hat) * (d + d_next) / 2
        x = x_next
    return x
