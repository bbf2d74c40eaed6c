"""DPM-Solver++(2M), the multistep second-order solver of Lu et al. (2022, Algorithm 2).

In ``t = -ln sigma`` the probability-flow ODE for the data prediction ``D`` integrates
exactly except for D itself; with step ``h_i = t_{i+1} - t_i``::

    x_{i+1} = (sigma_{i+1} / sigma_i) x_i - (exp(-h_i) - 1) D'_i
    D'_i = (1 + 1/(2 r_i)) D_i - 1/(2 r_i) D_{i-1},  r_i = h_{i-1} / h_i

with ``D'_0 = D_0`` (first order on the first step). On the last step to sigma = 0 the
ratio ``r`` tends to 0 and the extrapolation diverges, so that step returns ``D_i`` itself
(its first-order limit). One denoiser call per step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def sample_dpmpp_2m(
    denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> torch.Tensor:
    """Deterministic multistep sampling; ``generator`` (None, one generator, or one per row
    of ``x``) is accepted for a shared signature and unused."""
    d_prev: torch.Tensor | None = None
    h_prev: torch.Tensor | None = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        d = denoiser(x, sigma.to(x.dtype))
        if sigma_next == 0:
            x = d
            break
        h = sigma.log() - sigma_next.log()
        if d_prev is None or h_prev is None:
            d_hat = d
        else:
            r = h_prev / h
            d_hat = (1 + 1 / (2 * r)) * d - (1 / (2 * r)) * d_prev
        x = (sigma_next / sigma) * x - torch.expm1(-h) * d_hat
        d_prev, h_prev = d, h
    return x
