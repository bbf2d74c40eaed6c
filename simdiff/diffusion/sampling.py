"""A sampler and the noise levels it walks: the one node (``conf/sampler/``) that training-time
validation, ``generate``, ``augment`` and the Python API all sample with."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from simdiff.diffusion.schedules import karras_sigmas


@dataclass(frozen=True)
class Sampling:
    """``sampler`` (a function of :mod:`simdiff.diffusion.samplers`, options bound) over ``steps``
    Karras noise levels from ``sigma_max`` down to ``sigma_min`` (then 0), spaced by ``rho``."""

    sampler: Callable[..., torch.Tensor]
    steps: int = 18
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0

    def __post_init__(self) -> None:
        if not callable(self.sampler):
            raise TypeError(f"sampler must be a function of simdiff.diffusion.samplers, got {self.sampler!r}")
        if int(self.steps) < 1:
            raise ValueError(f"sampler.steps must be >= 1, got {self.steps}")

    def sigmas(self, steps: int | None = None) -> torch.Tensor:
        """The noise levels (float64, ending in 0); ``steps`` overrides the node's count."""
        n = int(steps or self.steps)
        return karras_sigmas(n, float(self.sigma_min), float(self.sigma_max), float(self.rho))
