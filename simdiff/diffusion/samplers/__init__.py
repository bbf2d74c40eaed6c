"""Samplers: pure functions ``(denoiser, x, sigmas, *, generator=None, **options) -> x``.

``denoiser(x, sigma)`` returns D(x; sigma) for a scalar-tensor ``sigma``; ``x`` starts as
noise times ``sigmas[0]``; ``sigmas`` decreases to 0 (e.g. :func:`karras_sigmas`). No
sampler keeps state between calls: the step is the loop index, nothing else.
"""

from simdiff.diffusion.samplers.dpmpp_2m import sample_dpmpp_2m
from simdiff.diffusion.samplers.euler import sample_euler
from simdiff.diffusion.samplers.heun import sample_heun

__all__ = ["sample_dpmpp_2m", "sample_euler", "sample_heun"]
