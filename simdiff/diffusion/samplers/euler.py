"""Euler's method on the probability-flow ODE (Karras et al. 2022, eq. 4 with sigma(t) = t)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def sample_euler(
    denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> torch.Tensor:
    """First order: ``x <- x + (sigma_next - sigma) (x - D(x; sigma)) / sigma``.

    Args:
        denoiser: ``D(x, sigma)``.
        x: ``(B, ...)`` noise scaled by ``sigmas[0]``.
        sigmas: decreasing noise levels ending in 0.
        generator: unused (deterministic); accepted so every sampler shares one signature
            (None, one generator, or one per row of ``x``).
    """
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        d = (x - denoiser(x, sigma.to(x.dtype))) / sigma
        x = x + (sigma_next - sigma) * d
    return x
