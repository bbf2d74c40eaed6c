"""Additive inflation of a forecast's own states (``generate.rollout_noise``): what is perturbed,
by which training tendency, from which stream, and that members keep their bits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from simdiff.data.stores.training import SPLITS, TrainingStore
from simdiff.diffusion.denoiser import ConditionalDenoiser
from simdiff.diffusion.samplers import sample_euler
from simdiff.diffusion.sampling import Sampling
from simdiff.generate.noise import member_generators
from simdiff.generate.rollout import SamplerSpec, inflate, rollout
from simdiff.nets.conditioning import Conditioner
from simdiff.runs.models import rollout_perturbations

SCALE = torch.tensor([0.5, 2.0])  # the one-step tendency's std per channel
POOL = torch.randn(7, 2, 5, 5, generator=torch.Generator().manual_seed(9))  # "training tendencies"


class Zero(nn.Module):
    """F = 0: the denoiser is c_skip x, linear in the noisy residual and blind to the conditions,
    so a step's residual depends on its noise stream alone."""

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, **_: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


class Mixer(nn.Module):
    """Mixes the noisy residual with the conditioning state through a convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 2, 3, padding=1)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, spatial: torch.Tensor, **_: torch.Tensor):
        return self.conv(torch.cat([x, spatial], dim=1))


def identity(z: torch.Tensor, row_by_row: bool = False, gens=None) -> torch.Tensor:
    return z


def spec_of(noise: float, group: int = 1, pool: torch.Tensor | None = POOL) -> SamplerSpec:
    return SamplerSpec(sample_euler, Sampling(sample_euler, steps=4).sigmas(), group=group,
                       rollout_noise=noise, perturbations=pool)


def forecast(net: type[nn.Module], members: list[int], noise: float, group: int = 1,
             leads: int = 3) -> np.ndarray:
    torch.manual_seed(0)  # the same weights in every call
    model = ConditionalDenoiser(net(), Conditioner(8, 2, previous=1), residual=True,
                                residual_scale=SCALE).eval()
    spec = spec_of(noise, group)
    window = torch.linspace(-1, 1, 2 * 5 * 5).reshape(1, 2, 5, 5)
    fields, _ = rollout(model, identity, spec, window=window, conditions={}, members=members, init=7,
                        leads=leads, seed=3)
    return fields


def picks(members: list[int], k: int) -> torch.Tensor:
    """What member m adds at step k, in units of level x scale: a sign times a pool entry, both
    drawn from its pair's key (seed 3, init 7, m - m % 2, -k); odd members turn the sign over."""
    out = []
    pairs = member_generators(3, [7] * len(members), [m - m % 2 for m in members], -k)
    for m, g in zip(members, pairs, strict=True):
        j = torch.randint(len(POOL), (1,), generator=g)
        sign = (torch.randint(0, 2, (1,), generator=g) * 2 - 1) * (1 if m % 2 == 0 else -1)
        out.append(sign * POOL[j[0]])
    return torch.stack(out)


def test_inflation_adds_a_keyed_training_tendency_to_the_models_own_states_from_step_two() -> None:
    """With a net blind to its conditions the inflated forecast is the plain one plus the
    perturbations, exactly: none at lead 1 (a data state); from step k >= 2, level x scale x a
    pool entry with a sign, picked from the member's key (seed, init, m, -k); they accumulate."""
    members = [0, 1, 2, 3, 4]
    plain = forecast(Zero, members, 0.0)
    level = 0.7
    inflated = forecast(Zero, members, level)
    np.testing.assert_array_equal(inflated[:, 0], plain[:, 0])
    total = torch.zeros(5, 2, 5, 5)
    for k in (2, 3):
        total = total + level * SCALE.reshape(1, -1, 1, 1) * picks(members, k)
        np.testing.assert_allclose(inflated[:, k - 1] - plain[:, k - 1], total.numpy(), rtol=1e-5, atol=1e-5)
    # the pairs (0, 1) and (2, 3) move in opposite directions: their mean is not shifted
    moved = inflated - plain
    np.testing.assert_allclose(moved[0] + moved[1], 0, atol=1e-5)
    np.testing.assert_allclose(moved[2] + moved[3], 0, atol=1e-5)
    assert np.abs(moved[0, 1]).max() > 0.1


def test_inflation_perturbs_only_the_newest_own_states() -> None:
    """``inflate``: the older states stay as they are; each newest ``own`` state moves by plus or
    minus level x scale x a pool entry, and both signs and many entries are picked."""
    torch.manual_seed(0)
    model = ConditionalDenoiser(Zero(), Conditioner(8, 2, previous=3), residual=True, residual_scale=SCALE)
    previous = torch.randn(200, 3, 2, 5, 5)
    out = inflate(model, previous, 2, spec_of(0.5), member_generators(0, [0] * 200, list(range(200)), -2))
    torch.testing.assert_close(out[:, 0], previous[:, 0], rtol=0, atol=0)
    moved = (out[:, 1:] - previous[:, 1:]) / (0.5 * SCALE.reshape(1, 1, -1, 1, 1))
    flat, pool = moved.reshape(400, -1), POOL.reshape(7, -1)
    # each move is one signed entry
    dist = torch.cdist(flat, torch.cat([pool, -pool]), compute_mode="donot_use_mm_for_euclid_dist")
    assert float(dist.min(dim=1).values.max()) < 1e-4
    used = dist.argmin(dim=1)
    assert len(set(used.tolist())) == 14  # every entry, with either sign


def test_an_inflated_member_alone_keeps_its_bits() -> None:
    """The picks are keyed by member id, so a member asked alone in member groups of 3 (its pair
    split across two groups, or not) equals it in the whole forecast; and inflation widens the
    members' spread at lead 3."""
    full = forecast(Mixer, list(range(6)), 1.0, group=3)
    for m in (3, 4):
        np.testing.assert_array_equal(forecast(Mixer, [m], 1.0, group=3)[0], full[m])
    plain = forecast(Mixer, list(range(6)), 0.0, group=3)
    np.testing.assert_array_equal(full[:, 0], plain[:, 0])
    assert full[:, 2].std(axis=0).mean() > plain[:, 2].std(axis=0).mean()


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_a_bad_inflation_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="rollout_noise"):
        SamplerSpec(sample_euler, torch.ones(2), rollout_noise=bad)


def test_inflation_without_its_perturbations_or_with_the_wrong_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="perturbations"):
        forecast_with(spec_of(0.5, pool=None))
    with pytest.raises(ValueError, match=r"\(2, 4, 4\) states"):
        forecast_with(spec_of(0.5, pool=torch.zeros(3, 2, 4, 4)))


def forecast_with(spec: SamplerSpec) -> None:
    model = ConditionalDenoiser(Zero(), Conditioner(8, 2, previous=1), residual=True, residual_scale=SCALE)
    rollout(model.eval(), identity, spec, window=torch.zeros(1, 2, 5, 5), conditions={}, members=[0],
            init=0, leads=2, seed=0)


def test_the_perturbations_are_train_tendencies_at_unit_rms(model_time_store: TrainingStore) -> None:
    """``rollout_perturbations``: every entry is a tendency x_t - x_{t-1} of two train samples of
    one block, divided by the tendencies' RMS per channel; a smaller pool takes a spread of them."""
    store = model_time_store
    split, block = store.array("split"), store.array("block")
    data = np.asarray(store.data, dtype=np.float64)
    pairs = [t for t in range(1, store.n_samples)
             if split[t] == split[t - 1] == SPLITS["train"] and block[t] == block[t - 1]]
    assert len(pairs) > 4
    raw = np.stack([data[t] - data[t - 1] for t in pairs])

    def unit_rms(x: np.ndarray) -> np.ndarray:
        c = x.shape[1]
        rms = np.sqrt((np.moveaxis(x, 1, 0).reshape(c, -1) ** 2).mean(axis=1))
        return x / rms.reshape(1, c, *([1] * (x.ndim - 2)))

    np.testing.assert_allclose(rollout_perturbations(store).numpy(), unit_rms(raw), rtol=1e-5, atol=1e-6)
    spread = np.unique(np.linspace(0, len(pairs) - 1, 3).round().astype(int))  # first, middle, last
    np.testing.assert_allclose(rollout_perturbations(store, size=3).numpy(), unit_rms(raw[spread]),
                               rtol=1e-5, atol=1e-6)
