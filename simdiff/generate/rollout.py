"""Ensemble rollouts in latent space, decoded per step: the sampling loop of ``simdiff generate``.

For one initial time and a batch of members, each lead step ``k = 1..L`` draws
``x_{t+k} ~ p(x_{t+k} | x_{t+k-1}, ...)`` with the conditional denoiser and a sampler, feeds
the sample back as the newest previous state (autoregressive), and decodes it to the
(normalised) field with the autoencoder, plus a draw of the decoder's residual model when the
decoder has one (:mod:`simdiff.generate.residual`). All noise of lead ``k`` for member ``m`` comes from
the generator keyed by ``(seed, init, m, k)`` (:mod:`simdiff.generate.noise`), so a member's
trajectory does not depend on which other members share its batch or its rank.

With an autoencoder of windows of ``k`` states (:mod:`simdiff.nets.window`) each step draws the
next window's latent, conditioned on the previous windows', and decodes it into ``k`` lead
times: ``L`` leads take ``L / k`` steps.

Memory is bounded by the batch: one batch of members in latent space, plus its decoded leads.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np
import torch

from simdiff.diffusion.denoiser import ConditionalDenoiser
from simdiff.generate.noise import SAMPLE_INIT, member_generators
from simdiff.generate.residual import ResidualModel
from simdiff.nets.autoencoder import Autoencoder
from simdiff.nets.window import unstack_window

T = TypeVar("T")
# the conditions of a batch of draws: name -> (B, ...), or a function of the draw ids giving them
Conditions = Mapping[str, torch.Tensor] | Callable[[list[int]], Mapping[str, torch.Tensor]]


@dataclass
class LatentDecoder:
    """Standardised latents (B, c, [d], h, w) -> normalised fields (B, C, [D], H, W).

    Attributes:
        net: the autoencoder (EMA weights, eval mode).
        shift, scale: (c,) the latent store's per-channel mean and std: mu = z * scale + shift.
        shape: the field's spatial shape (the decoder crops its padding to it).
        residual: the decoder's residual model (:mod:`simdiff.generate.residual`), or None. With
            it and per-row generators, a call returns samples of p(x | z) instead of the
            decoder's output ``D(z)``.
        window: states per latent (:mod:`simdiff.nets.window`); > 1: a call returns each row's
            ``window`` states, (B, k, C, [D], H, W), and ``shape`` is the window's stacked shape.
        has_depth: the states have a depth axis (with ``window`` > 1).
    """

    net: Autoencoder
    shift: torch.Tensor
    scale: torch.Tensor
    shape: tuple[int, ...]
    residual: ResidualModel | None = None
    window: int = 1
    has_depth: bool = False

    @torch.no_grad()
    def __call__(
        self,
        z: torch.Tensor,
        row_by_row: bool = False,
        generators: Sequence[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """Decode ``z``; ``row_by_row`` decodes one row at a time (bitwise batch-independent).

        ``generators`` (one per row, e.g. the member generators the latent was sampled with,
        which go on drawing from where the sampler stopped) draw the residual of each row
        when the decoder has a residual model; without them the mean is returned.
        """
        view = (1, -1, *([1] * (z.ndim - 2)))
        mu = z * self.scale.to(z).reshape(view) + self.shift.to(z).reshape(view)
        if row_by_row:
            out = torch.cat([self.net.decode(mu[i : i + 1], self.shape) for i in range(mu.shape[0])])
        else:
            out = self.net.decode(mu, self.shape)
        if self.window > 1:
            out = unstack_window(out, self.window, self.has_depth)
        if self.residual is not None and generators is not None:
            if self.window > 1:  # each row's states in order, from its own generator
                out = torch.stack([self.residual.sample_rows(out[:, j], generators)
                                   for j in range(self.window)], dim=1)
            else:
                out = self.residual.sample_rows(out, generators)
        return out


@dataclass(frozen=True)
class SamplerSpec:
    """How to sample: the sampler function, its noise levels, guidance, and batch invariance.

    ``row_by_row`` (see :meth:`ConditionalDenoiser.sample`) makes a member's result independent
    of the batch it is computed in. With ``group`` > 1, forecasts (:func:`rollout`) get the same
    guarantee from fixed member groups instead: members ``kG .. kG + G - 1`` are always computed
    together as one batch of ``G`` rows, in that order, so a member's bits do not depend on
    which other members were asked for, and the net runs batched (about ``G`` times fewer
    calls; asking for one member alone costs its whole group). So do independent draws
    (:func:`draw_samples` given their conditions as a function of the draw ids: sample mode,
    conditional draws, augment's first round).

    ``rollout_noise`` is additive inflation of a forecast's own states: from lead step 2 on, each
    previous state the model drew itself is perturbed, as the model sees it, by ``rollout_noise``
    times a training tendency picked at random, with a random sign (``perturbations`` (N, C, ...),
    in units of the tendency's RMS per channel, so the level is in training's ``condition_noise``
    units; :func:`simdiff.runs.models.rollout_perturbations`); residual mode adds its tendency to
    the perturbed state, as in training. The spread then grows with the error the model's own
    states carry, which a model trained on data states under-counts. Not white noise: a net
    trained with white noise on its conditioning states learns to remove it (on WFDE5, white
    inflation of 1.0 moved the spread-skill by 0.02 or less), while a tendency looks like weather
    (the random-field perturbations of Magnusson et al. 2009 are differences of random states).
    Members come in pairs ``2i, 2i + 1`` with opposite perturbations, as the ECMWF ensemble's
    initial perturbations do, so the inflation adds spread and not a shift of the ensemble mean
    by a few random picks: the pair's picks at step ``k`` draw from the key ``(seed, init, 2i,
    -k)``, the odd member's signs turned over. A member's picks depend on its id alone (it is
    reproducible on its own) and its sampling noise is the same with and without inflation.
    0 (default): off. Independent draws (:func:`draw_samples`) have no own states and ignore it.
    """

    sampler: Callable[..., torch.Tensor]
    sigmas: torch.Tensor
    guidance: float = 1.0
    guided: tuple[str, ...] = ()
    row_by_row: bool = True
    group: int = 1
    rollout_noise: float = 0.0
    perturbations: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if int(self.group) < 1:
            raise ValueError(f"SamplerSpec.group must be >= 1, got {self.group}")
        if not math.isfinite(float(self.rollout_noise)) or float(self.rollout_noise) < 0:
            raise ValueError(f"SamplerSpec.rollout_noise must be finite and >= 0, got {self.rollout_noise}")

    @property
    def grouped(self) -> int:
        """The member-group size forecasts are computed in (1: none, as given or row by row)."""
        return int(self.group) if self.row_by_row and int(self.group) > 1 else 1


def _rows(value: torch.Tensor, n: int) -> torch.Tensor:
    return value.unsqueeze(0).expand(n, *value.shape).contiguous()


@torch.no_grad()
def rollout(
    model: ConditionalDenoiser,
    decoder: LatentDecoder,
    spec: SamplerSpec,
    *,
    window: torch.Tensor,
    conditions: Mapping[str, torch.Tensor],
    members: Sequence[int],
    init: int,
    leads: int,
    seed: int,
    keep_latents: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """One batch of members rolled out ``leads`` steps from one initial state.

    Args:
        model: the conditional denoiser (EMA weights, eval mode, on its device).
        decoder: latents -> normalised fields.
        spec: sampler, noise levels, guidance.
        window: (W-1, c, [d], h, w) the initial latent states, oldest first (W-1 = the
            model's ``previous``; empty (0, ...) for an unconditional model).
        conditions: per lead, the conditions of the valid time: name -> (L, ...)
            (time_features (L, F), covariates (L, K), label (L,)).
        members: the member ids of this batch (B rows).
        init: the init's index in the store (a noise-key counter).
        leads: L, the sampling steps (each decodes to ``decoder.window`` lead times).
        seed: the run's seed (a noise-key counter).
        keep_latents: also return the latent trajectory.

    Returns:
        ``(fields (B, L*k, C, [D], H, W) float32, latents (B, L, c, ...) or None)``, ``k`` the
        decoder's window.
    """
    size = spec.grouped
    if size == 1:
        return _rollout(model, decoder, spec, window, conditions, members, init, leads, seed, keep_latents)
    batched = replace(spec, row_by_row=False)

    def group(ids: list[int]) -> list[tuple[np.ndarray, np.ndarray | None]]:
        f, z = _rollout(model, decoder, batched, window, conditions, ids, init, leads, seed, keep_latents)
        return [(f[j], None if z is None else z[j]) for j in range(len(ids))]

    rows = in_member_groups(members, size, group)
    fields = np.stack([r[0] for r in rows])
    lat = np.stack([r[1] for r in rows]) if keep_latents else None  # type: ignore[misc]
    return fields, lat


def in_member_groups(
    members: Sequence[int], size: int, compute: Callable[[list[int]], Sequence[T]]
) -> list[T]:
    """``compute`` over the whole fixed groups ``kG .. kG + G - 1`` (G = ``size``) that hold
    ``members``, one call per group (one row per id, in order); the rows of ``members``, in their
    order. A member's row then depends only on its group, never on which others were asked for."""
    rows: dict[int, T] = {}
    for g in sorted({int(m) // size for m in members}):
        ids = list(range(g * size, (g + 1) * size))
        rows.update(zip(ids, compute(ids), strict=True))
    return [rows[int(m)] for m in members]


def _rollout(model: ConditionalDenoiser, decoder: LatentDecoder, spec: SamplerSpec, window: torch.Tensor,
             conditions: Mapping[str, torch.Tensor], members: Sequence[int], init: int, leads: int, seed: int,
             keep_latents: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`rollout` of ``members`` as one batch (row by row with ``spec.row_by_row``)."""
    b = len(members)
    device = model.residual_scale.device
    previous = _rows(window.to(device), b) if window.shape[0] else None
    state_shape = (b, *window.shape[1:])
    fields: list[np.ndarray] = []
    latents: list[np.ndarray] = []
    for k in range(1, leads + 1):
        gens = member_generators(seed, [init] * b, list(members), k, device=device)
        batch: dict[str, torch.Tensor] = {} if previous is None else {"previous": previous}
        if previous is not None and k > 1:  # the newest previous state is the model's own
            batch["generated"] = torch.ones(b, device=device)
            if spec.rollout_noise > 0:  # pairs 2i, 2i + 1 share their picks, with opposite signs
                keyed = member_generators(seed, [init] * b, [int(m) - int(m) % 2 for m in members], -k,
                                          device=device)
                own = min(k - 1, previous.shape[1])  # the states the model drew itself
                batch["previous"] = inflate(model, previous, own, spec, keyed, [int(m) % 2 for m in members])
        for name, per_lead in conditions.items():
            batch[name] = _rows(per_lead[k - 1].to(device), b)
        x = model.sample(batch, state_shape, sampler=spec.sampler, sigmas=spec.sigmas, generator=gens,
                         guidance=spec.guidance, guided=spec.guided, row_by_row=spec.row_by_row)
        decoded = decoder(x, spec.row_by_row, gens).float().cpu().numpy()
        windowed = getattr(decoder, "window", 1) > 1  # any latents -> fields callable decodes one state
        fields.extend(np.moveaxis(decoded, 1, 0) if windowed else [decoded])
        if keep_latents:
            latents.append(x.float().cpu().numpy())
        if previous is not None:
            previous = torch.cat([previous[:, 1:], x[:, None]], dim=1)
    out = np.stack(fields, axis=1)
    return out, (np.stack(latents, axis=1) if keep_latents else None)


def inflate(model: ConditionalDenoiser, previous: torch.Tensor, own: int, spec: SamplerSpec,
            generators: Sequence[torch.Generator], flips: Sequence[int] | None = None) -> torch.Tensor:
    """``previous`` (B, P, C, ...) with each of its newest ``own`` states moved by
    ``spec.rollout_noise`` x :meth:`ConditionalDenoiser.previous_scale` x one of
    ``spec.perturbations`` with a random sign, row ``b``'s picks drawn from ``generators[b]``
    and its signs turned over where ``flips[b]`` is 1 (a copy; the older states unchanged)."""
    pool = spec.perturbations
    if pool is None:
        raise ValueError("SamplerSpec.rollout_noise > 0 needs its perturbations: training tendencies "
                         "(simdiff.runs.models.rollout_perturbations)")
    if tuple(pool.shape[1:]) != tuple(previous.shape[2:]):
        raise ValueError(f"SamplerSpec.perturbations are {tuple(pool.shape[1:])} states, the model's "
                         f"{tuple(previous.shape[2:])}: build them from the store the model was trained on")
    rows = []
    for g, flip in zip(generators, flips if flips is not None else [0] * len(generators), strict=True):
        pick = torch.randint(pool.shape[0], (own,), generator=g, device=g.device).to(pool.device)
        sign = (torch.randint(0, 2, (own,), generator=g, device=g.device).to(pool) * 2 - 1) * (1 - 2 * flip)
        rows.append(pool[pick] * sign.reshape(own, *([1] * (pool.ndim - 1))))
    noise = float(spec.rollout_noise) * model.previous_scale(previous) * torch.stack(rows).to(previous)
    older, newest = previous[:, : previous.shape[1] - own], previous[:, previous.shape[1] - own :]
    return torch.cat([older, newest + noise], dim=1)


@torch.no_grad()
def draw_samples(
    model: ConditionalDenoiser,
    decoder: LatentDecoder,
    spec: SamplerSpec,
    *,
    latent_shape: tuple[int, ...],
    conditions: Conditions,
    members: Sequence[int],
    seed: int,
    init: int = SAMPLE_INIT,
    counter: int = 1,
) -> np.ndarray:
    """Independent draws, one per member id, each for its own conditions.

    Args:
        latent_shape: (c, [d], h, w).
        conditions: name -> (B, ...) the conditions of each draw (may be empty; a forecaster's
            previous states are the condition ``previous``), or a function that gives them for
            any list of draw ids. With a function and ``spec.grouped`` > 1, members are computed
            in their fixed groups as forecasts are (:class:`SamplerSpec`): batched, and a
            member's bits still do not depend on which other members were asked for (a group's
            other ids are drawn too, and dropped).
        members: the draws' ids (noise keys ``(seed, init, id, counter)``).
        init: the noise key's init: ``SAMPLE_INIT``, or the conditioning sample's index (so
            member ``m`` of each condition has its own stream).
        counter: the noise key's last counter: 1, or ``r + 1`` for an augment redraw in round ``r``.

    Returns:
        fields (B, C, [D], H, W) float32 (normalised).
    """
    if callable(conditions):
        size = spec.grouped
        if size == 1:
            return draw_samples(model, decoder, spec, latent_shape=latent_shape,
                                conditions=conditions(list(members)), members=members, seed=seed, init=init,
                                counter=counter)
        batched = replace(spec, row_by_row=False)
        return np.stack(in_member_groups(members, size, lambda ids: list(draw_samples(
            model, decoder, batched, latent_shape=latent_shape, conditions=conditions(ids), members=ids,
            seed=seed, init=init, counter=counter))))
    device = model.residual_scale.device
    gens = member_generators(seed, [int(init)] * len(members), list(members), int(counter), device=device)
    batch = {name: v.to(device) for name, v in conditions.items()}
    x = model.sample(batch, (len(members), *latent_shape), sampler=spec.sampler, sigmas=spec.sigmas,
                     generator=gens, guidance=spec.guidance, guided=spec.guided, row_by_row=spec.row_by_row)
    return decoder(x, spec.row_by_row, gens).float().cpu().numpy()


def member_batches(members: Sequence[int], batch_size: int, group: int = 1) -> Iterator[list[int]]:
    """``members`` in consecutive batches of at most ``batch_size``; with ``group`` > 1, batches
    of whole member groups (``m // group``), as many groups as fit in ``batch_size`` rows (at
    least one), so no group is computed twice."""
    members = list(members)
    if int(group) <= 1:
        for i in range(0, len(members), max(int(batch_size), 1)):
            yield members[i : i + batch_size]
        return
    by_group: dict[int, list[int]] = {}
    for m in members:
        by_group.setdefault(int(m) // int(group), []).append(m)
    per_batch = max(int(batch_size) // int(group), 1)
    keys = sorted(by_group)
    for i in range(0, len(keys), per_batch):
        yield [m for k in keys[i : i + per_batch] for m in by_group[k]]
