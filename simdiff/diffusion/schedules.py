"""Noise-level schedules for sampling."""

from __future__ import annotations

import torch


def karras_sigmas(
    num_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The EDM discretisation (Karras et al. 2022, eq. 5), with a final 0 appended.

    ``sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``
    for ``i = 0..N-1``: dense steps at low noise for large ``rho``.

    Returns:
        float64 tensor (num_steps + 1,), from ``sigma_max`` down to ``sigma_min``, then 0.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64, device=device)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])
