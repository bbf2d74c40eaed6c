"""The conditional denoiser D(x; sigma, c): conditioner + EDM-preconditioned network (+ residual mode).

    D(x; sigma, c) = c_skip x + c_out F(c_in x; c_noise, spatial(c), vector(c))

(Karras et al. 2022, eq. 7). What is diffused is either the state ``x_{t+1}`` itself or, in
residual mode, the tendency ``(x_{t+1} - x_t) / s`` with ``s`` the per-channel standard deviation
of the tendency on the training split (as CorrDiff, Mardani et al. 2024, and ArchesWeatherGen,
Couairon et al. 2024, diffuse a residual), so the diffused variable has unit variance either way
and ``sigma_data = 1`` stays right. With a :class:`~simdiff.diffusion.cycle.TendencyCycle`
the tendency's fitted mean at the target's hour of day and day of year is taken out too,
``(x_{t+1} - x_t - m(t+1)) / s``. Without a previous state, the state can instead be standardised
per class label, ``(x - m_l) / s_l`` with ``m_l`` the label's mean state on the training split
(per latent cell) and ``s_l`` its per-channel std about it, so every class reaches the network
at unit variance: one class whose latents are several times the others' would otherwise be
modelled with the others' absolute errors. :meth:`target` maps a state to the diffused variable and
:meth:`state` maps a sample back. All three pieces live in one module, so one weight average
(EMA) and one checkpoint cover them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from simdiff.diffusion.cycle import TendencyCycle
from simdiff.diffusion.edm import EDMPrecond
from simdiff.diffusion.guidance import classifier_free_guidance
from simdiff.diffusion.noise import randn_rows
from simdiff.nets.conditioning import Conditioner

Sampler = Callable[..., torch.Tensor]


class ConditionalDenoiser(nn.Module):
    """``D(x, sigma, **cond)`` over states (B, C, [D], H, W) with its conditioner.

    Args:
        net: ``F(x, c_noise, spatial=..., vector=...)``, e.g. :class:`simdiff.nets.unet.UNet`.
        conditioner: builds ``spatial``/``vector`` from a batch's conditions.
        sigma_data: standard deviation of the diffused variable (1 for unit-variance latents).
        residual: diffuse the scaled tendency ``(x_{t+1} - x_t) / residual_scale``.
        residual_scale: (C,) the tendency's per-channel std (required with ``residual``).
        cycle: the tendency's mean by time of day/year, taken out of the diffused variable
            (residual mode, batches with ``time_features``), or None.
        label_stats: ``(shift (L, C, [D], H, W), scale (L, C))``: diffuse ``(x - shift[l]) /
            scale[l]`` for a row of label ``l`` (batches with ``label``); not with residual mode.
    """

    def __init__(
        self,
        net: nn.Module,
        conditioner: Conditioner,
        sigma_data: float = 1.0,
        residual: bool = False,
        residual_scale: torch.Tensor | None = None,
        cycle: TendencyCycle | None = None,
        label_stats: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        if label_stats is not None and residual:
            raise ValueError("ConditionalDenoiser: per-label standardisation is of the state, and residual "
                             "mode diffuses the tendency; use one or the other")
        if residual and conditioner.previous < 1:
            raise ValueError("ConditionalDenoiser: residual mode diffuses x_{t+1} - x_t, so it needs "
                             "conditioning on >= 1 previous state (conditioning.previous >= 1)")
        if residual and residual_scale is None:
            raise ValueError("ConditionalDenoiser: residual mode needs residual_scale (C,)")
        if cycle is not None and not residual:
            raise ValueError("ConditionalDenoiser: a tendency cycle is taken out of the tendency, so it "
                             "needs residual mode (diffusion.residual=true)")
        self.conditioner = conditioner
        self.precond = EDMPrecond(net, sigma_data)
        self.residual = bool(residual)
        scale = residual_scale if residual_scale is not None else torch.ones(conditioner.state_channels)
        self.register_buffer("residual_scale", scale.to(torch.float32).reshape(-1))
        self.cycle = cycle
        self.by_label = label_stats is not None
        if label_stats is not None:
            shift, lscale = (t.to(torch.float32) for t in label_stats)
            channels = conditioner.state_channels
            if lscale.ndim != 2 or shift.shape[:2] != lscale.shape or lscale.shape[1] != channels:
                raise ValueError(f"ConditionalDenoiser: label_stats shapes {tuple(shift.shape)} and "
                                 f"{tuple(lscale.shape)}; want (L, C, ...) and (L, C) with C = "
                                 f"{conditioner.state_channels}")
            self.register_buffer("label_shift", shift.contiguous())
            self.register_buffer("label_scale", lscale.contiguous())

    def _label_stats(
        self, like: torch.Tensor, batch: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The shift and scale of each row of ``like`` by its label, shaped like it."""
        label = batch.get("label")
        if label is None:
            raise ValueError("ConditionalDenoiser: per-label standardisation needs the batch's label")
        label = label.to(device=self.label_scale.device, dtype=torch.long).reshape(-1)
        shift = self.label_shift[label].to(like)
        if shift.shape[2:] != like.shape[2:]:
            raise ValueError(f"ConditionalDenoiser: the per-label shift is {tuple(shift.shape[2:])} cells, "
                             f"the states {tuple(like.shape[2:])}; per-label standardisation needs whole "
                             "fields")
        scale = self.label_scale[label].to(like).reshape(label.shape[0], -1, *([1] * (like.ndim - 2)))
        return shift, scale

    def _scale(self, like: torch.Tensor) -> torch.Tensor:
        return self.residual_scale.to(like.dtype).reshape(1, -1, *([1] * (like.ndim - 2)))

    def previous_scale(self, previous: torch.Tensor) -> torch.Tensor:
        """The unit of noise on previous states ``(B, P, C, ...)``, broadcastable to them: the
        one-step tendency's per-channel std in residual mode, else 1 (the latents' std)."""
        return self.residual_scale.to(previous.dtype).reshape(1, 1, -1, *([1] * (previous.ndim - 3)))

    def _base(self, like: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """What residual mode diffuses about: the newest previous state (+ the cycle's mean tendency)."""
        previous = batch.get("previous")
        if previous is None:
            raise ValueError("ConditionalDenoiser: residual mode needs the batch's previous states")
        base = previous[:, -1]
        if self.cycle is not None:
            tf = batch.get("time_features")
            if tf is None:
                raise ValueError("ConditionalDenoiser: the tendency cycle needs the batch's time_features")
            origin = batch.get("origin")
            size = tuple(like.shape[2:]) if origin is not None else None
            base = base + self.cycle(tf, origin, size).to(like)
        return base

    def target(self, x: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The diffused variable for state ``x`` (B, C, ...) given the ``batch`` of its conditions
        (``previous`` (B, W-1, C, ...), and ``time_features`` with a cycle)."""
        if self.by_label:
            shift, scale = self._label_stats(x, batch)
            return (x - shift) / scale
        if not self.residual:
            return x
        return (x - self._base(x, batch)) / self._scale(x)

    def state(self, y: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The state for a sample ``y`` of the diffused variable (inverse of :meth:`target`)."""
        if self.by_label:
            shift, scale = self._label_stats(y, batch)
            return shift + y * scale
        if not self.residual:
            return y
        return self._base(y, batch) + y * self._scale(y)

    def conditions(
        self,
        batch: Mapping[str, torch.Tensor],
        drop: Mapping[str, torch.Tensor] | None = None,
        *,
        n: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """``{"spatial", "vector"}`` for a loader batch (keys previous/time_features/covariates/
        label/atoms, and generated: whether the newest previous state is the model's own);
        ``n`` the batch size where no tensor of the batch gives it (an unconditional draw has an
        empty batch).

        A batch of crops carries ``origin`` (B, ndim) and its ``target`` has the crop's shape;
        static fields are then cropped at each row's origin.
        """
        if n is None:
            rows = [v.shape[0] for k, v in batch.items() if k != "origin" and v.ndim]
            if not rows:
                raise ValueError("ConditionalDenoiser.conditions: an empty batch needs its size n")
            n = int(rows[0])
        origin = batch.get("origin")
        size = None
        if origin is not None:
            if "target" not in batch:
                raise ValueError("ConditionalDenoiser: a batch with 'origin' (crops) needs its 'target' "
                                 "to give the crop's shape")
            size = tuple(batch["target"].shape[2:])
        return self.conditioner(
            n,
            previous=batch.get("previous"),
            time_features=batch.get("time_features"),
            covariates=batch.get("covariates"),
            label=batch.get("label"),
            atoms=batch.get("atoms"),
            generated=batch.get("generated"),
            drop=drop,
            origin=origin,
            size=size,
        )

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **cond: Any) -> torch.Tensor:
        """D(x; sigma, cond): (B, C, ...) -> (B, C, ...)."""
        return self.precond(x, sigma, **cond)

    @torch.no_grad()
    def sample(
        self,
        batch: Mapping[str, torch.Tensor],
        shape: tuple[int, ...],
        *,
        sampler: Sampler,
        sigmas: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        guidance: float = 1.0,
        guided: tuple[str, ...] = (),
        row_by_row: bool = False,
    ) -> torch.Tensor:
        """One sampled state per row of ``batch``: (B, C, [D], H, W).

        Args:
            batch: the conditions of each row (previous states, time features, labels ...).
            shape: (B, C, [D], H, W) of the states.
            sampler: ``sampler(denoiser, x, sigmas, generator=...)`` (simdiff.diffusion.samplers).
            sigmas: the decreasing noise levels, ending in 0.
            generator: one generator, or one per row (reproducible members whatever the batch).
            guidance: classifier-free guidance scale over the conditions in ``guided`` (dropped
                for the unconditional estimate); 1 is plain conditional sampling.
            row_by_row: evaluate the network one row at a time. Convolution and matrix kernels
                pick their blocking by batch size, so a row's result can differ in the last bits
                with the batch it shares; one row at a time makes each row bitwise independent
                of the batch (reproducible members whatever the batch size), at some speed cost.
        """
        ref = self.residual_scale
        sigmas = sigmas.to(device=ref.device, dtype=torch.float32)
        cond = self.conditions(batch, n=shape[0])
        net: Callable[..., torch.Tensor] = _per_row(self) if row_by_row else self
        if guidance != 1.0 and guided:
            drop = {k: torch.ones(shape[0], dtype=torch.bool, device=ref.device) for k in guided}
            denoise = classifier_free_guidance(net, cond, self.conditions(batch, drop, n=shape[0]), guidance)
        else:
            denoise = classifier_free_guidance(net, cond, cond, 1.0)
        x = randn_rows(shape, generator, dtype=torch.float32, device=ref.device) * sigmas[0]
        y = sampler(denoise, x, sigmas, generator=generator)
        return self.state(y, batch)


def _per_row(denoiser: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``denoiser`` evaluated on one row of ``x`` (and of each condition) at a time."""

    def rows(x: torch.Tensor, sigma: torch.Tensor, **cond: torch.Tensor) -> torch.Tensor:
        sig = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
        return torch.cat([denoiser(x[i : i + 1], sig[i : i + 1], **{k: v[i : i + 1] for k, v in cond.items()})
                          for i in range(x.shape[0])])

    return rows
