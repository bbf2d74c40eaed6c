"""Latent bottlenecks, swappable through ``_target_``: a KL-regularised diagonal Gaussian, or bounded.

Both take the encoder's raw output ``h`` (B, k * c, [d], h, w) with ``k = moments`` and return
the latent sample ``z``, its deterministic part ``mean`` (what ``encode`` stores) and the
regularisation term that is added to the reconstruction loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn


@dataclass
class BottleneckOutput:
    """z, mean: (B, c, [d], h, w); loss: scalar regularisation (already weighted)."""

    z: torch.Tensor
    mean: torch.Tensor
    loss: torch.Tensor


@runtime_checkable
class Bottleneck(Protocol):
    """What the autoencoder needs of a bottleneck."""

    moments: int  # encoder channels per latent channel

    def __call__(self, h: torch.Tensor) -> BottleneckOutput: ...


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(N(mean, exp(logvar)) || N(0, 1)) = (mean^2 + var - 1 - logvar) / 2.

    Kingma & Welling, "Auto-encoding variational Bayes" (ICLR 2014), appendix B.
    """
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar)


class KLBottleneck(nn.Module):
    """Diagonal Gaussian posterior with a KL penalty towards N(0, I), as in the LDM autoencoder.

    Rombach et al., "High-resolution image synthesis with latent diffusion models" (CVPR
    2022), section 3.1: the encoder predicts mean and log-variance; training samples
    ``z = mean + exp(logvar / 2) * eps`` (reparameterisation), evaluation uses ``z = mean``.
    The loss is ``weight`` times the KL averaged over latent elements (LDM sums both terms;
    with per-element means a weight of 1e-6 x (input elements / latent elements) matches it).

    Args:
        weight: multiplier of the mean KL per latent element.
        logvar_clamp: log-variance is clamped to [-clamp, clamp] for stability (LDM: 30/20).
    """

    moments = 2

    def __init__(self, weight: float = 1e-5, logvar_clamp: float = 20.0) -> None:
        super().__init__()
        self.weight = float(weight)
        self.logvar_clamp = float(logvar_clamp)

    def forward(self, h: torch.Tensor) -> BottleneckOutput:
        mean, logvar = h.chunk(2, dim=1)
        logvar = logvar.clamp(-self.logvar_clamp, self.logvar_clamp)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean) if self.training else mean
        return BottleneckOutput(z, mean, self.weight * gaussian_kl(mean, logvar).mean())


class BoundedBottleneck(nn.Module):
    """Deterministic latents softly clipped to (-bound, bound): ``z = bound * tanh(h / bound)``.

    The plain (no KL) autoencoders of weather LDMs (LaDCast; Appa, Andry et al. 2025) keep
    latents bounded instead of regularising them towards a prior; the soft clip is the
    identity near 0 and saturates smoothly, so gradients never vanish abruptly.

    Args:
        bound: the latent magnitude limit.
    """

    moments = 1

    def __init__(self, bound: float = 5.0) -> None:
        super().__init__()
        if bound <= 0:
            raise ValueError(f"BoundedBottleneck: bound must be > 0, got {bound}")
        self.bound = float(bound)

    def forward(self, h: torch.Tensor) -> BottleneckOutput:
        z = self.bound * torch.tanh(h / self.bound)
        return BottleneckOutput(z, z, h.new_zeros(()))
