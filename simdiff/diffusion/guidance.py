"""Classifier-free guidance (Ho & Salimans 2022): ``D = D_uncond + w (D_cond - D_uncond)``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def classifier_free_guidance(
    denoise: Callable[..., torch.Tensor],
    cond: Mapping[str, Any],
    uncond: Mapping[str, Any],
    scale: float,
) -> Denoiser:
    """A denoiser ``(x, sigma) -> D`` that mixes conditional and unconditional estimates.

    Args:
        denoise: ``D(x, sigma, **conditions)``.
        cond: the conditions to guide towards.
        uncond: the same conditions with the guided ones dropped (as in training dropout).
        scale: ``w``; 1 is plain conditional sampling, 0 unconditional, > 1 sharper.
    """
    if scale == 1.0:
        return lambda x, sigma: denoise(x, sigma, **cond)

    if scale == 0.0:
        return lambda x, sigma: denoise(x, sigma, **uncond)

    def guided(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        d_u = denoise(x, sigma, **uncond)
        return d_u + scale * (denoise(x, sigma, **cond) - d_u)

    return guided
