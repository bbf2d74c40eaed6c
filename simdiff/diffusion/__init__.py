"""The diffusion math: EDM preconditioning and loss, noise schedules, samplers, guidance.

No Lightning, no Hydra. Samplers are pure functions ``(denoiser, x, sigmas, *, generator)
-> x`` where ``denoiser(x, sigma)`` returns the denoised estimate D(x; sigma) and ``x``
starts as noise scaled by ``sigmas[0]``. :mod:`simdiff.diffusion.denoiser` wraps a network from
``simdiff.nets`` into the conditional denoiser D(x; sigma, c) (diffusion sits above nets).
"""

from simdiff.diffusion.edm import EDMLoss, EDMPrecond, edm_coefficients, edm_loss_weight
from simdiff.diffusion.guidance import classifier_free_guidance
from simdiff.diffusion.samplers import sample_dpmpp_2m, sample_euler, sample_heun
from simdiff.diffusion.schedules import karras_sigmas

__all__ = [
    "EDMLoss",
    "EDMPrecond",
    "classifier_free_guidance",
    "edm_coefficients",
    "edm_loss_weight",
    "karras_sigmas",
    "sample_dpmpp_2m",
    "sample_euler",
    "sample_heun",
]
