"""The generated-state flag: lead 1 of a rollout conditions on data (flag 0), later leads on the
model's own states (flag 1); training flags exactly the rows it perturbs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from simdiff.diffusion.denoiser import ConditionalDenoiser
from simdiff.diffusion.samplers import sample_euler
from simdiff.diffusion.sampling import Sampling
from simdiff.generate.rollout import SamplerSpec, rollout
from simdiff.lit.diffusion import DiffusionModule
from simdiff.nets.conditioning import Conditioner


class FlagRecorder(nn.Module):
    """A net whose output is zero and which records the flag channel it is given."""

    def __init__(self, channel: int) -> None:
        super().__init__()
        self.channel = channel
        self.seen: list[torch.Tensor] = []
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, spatial: torch.Tensor, **_: torch.Tensor):
        self.seen.append(spatial[:, self.channel].clone())
        return x * self.w


def denoiser(previous: int = 2, generated: bool = True) -> ConditionalDenoiser:
    cond = Conditioner(8, 2, previous=previous, generated=generated)
    assert cond.spatial_channels == 2 * previous + int(generated)
    return ConditionalDenoiser(FlagRecorder(channel=2 * previous), cond, residual=True,
                               residual_scale=torch.ones(2))


def test_conditioner_flag_channel_follows_the_batch_and_defaults_to_data() -> None:
    cond = Conditioner(8, 2, previous=1, generated=True)
    prev = torch.randn(3, 1, 2, 4, 5)
    sp = cond(3, previous=prev, generated=torch.tensor([1.0, 0.0, 1.0]))["spatial"]
    assert sp.shape == (3, 3, 4, 5)
    torch.testing.assert_close(sp[:, :2], prev[:, 0])
    assert torch.all(sp[[0, 2], 2] == 1) and torch.all(sp[1, 2] == 0)
    assert torch.all(cond(3, previous=prev)["spatial"][:, 2] == 0)  # no flag given: data
    with pytest.raises(ValueError, match="previous >= 1"):
        Conditioner(8, 2, previous=0, generated=True)


@pytest.mark.parametrize("group", [1, 3])
def test_rollout_flags_the_models_own_states_from_lead_2(group: int) -> None:
    model = denoiser().eval()
    spec = SamplerSpec(sample_euler, Sampling(sample_euler, steps=2).sigmas(), group=group)
    window = torch.randn(2, 2, 4, 4)
    fields, _ = rollout(model, lambda z, row_by_row=False, gens=None: z, spec, window=window, conditions={},
                        members=[0, 1, 2], init=0, leads=3, seed=0)
    assert fields.shape == (3, 3, 2, 4, 4)
    seen = model.precond.net.seen
    calls = len(seen) // 3  # net calls per lead
    per_lead = [torch.cat(seen[k * calls:(k + 1) * calls]) for k in range(3)]
    assert torch.all(per_lead[0] == 0)
    assert torch.all(per_lead[1] == 1) and torch.all(per_lead[2] == 1)


def test_training_flags_exactly_the_perturbed_rows() -> None:
    model = denoiser(previous=1)
    module = DiffusionModule(model, torch.ones(4, 4), condition_noise=0.5, warmup_steps=1)
    prev = torch.zeros(400, 1, 2, 4, 4)
    out = module._perturb_previous({"previous": prev}, torch.Generator().manual_seed(0))
    flag = out["generated"]
    moved = out["previous"].flatten(1).abs().amax(dim=1) > 0
    assert torch.equal(moved, flag.bool())
    assert 0.4 < float(flag.mean()) < 0.6  # half the rows
    std = out["previous"][flag.bool()].std()
    assert abs(float(std) - 0.5) < 0.02  # the perturbed rows carry the full noise level
    with pytest.raises(ValueError, match="condition_noise > 0"):
        DiffusionModule(denoiser(previous=1), torch.ones(4, 4), condition_noise=0.0)


def test_data_noise_perturbs_the_rows_flagged_as_data_at_its_own_level() -> None:
    """With data_noise, the rows flagged 0 move by data_noise and the flagged ones by condition_noise;
    without the flag it is refused (nothing would tell the two kinds of rows apart)."""
    module = DiffusionModule(denoiser(previous=1), torch.ones(4, 4), condition_noise=1.0, data_noise=0.25,
                             warmup_steps=1)
    prev = torch.zeros(2000, 1, 2, 4, 4)
    out = module._perturb_previous({"previous": prev}, torch.Generator().manual_seed(0))
    flag = out["generated"].bool()
    assert 0.45 < float(flag.float().mean()) < 0.55
    assert abs(float(out["previous"][flag].std()) - 1.0) < 0.02
    assert abs(float(out["previous"][~flag].std()) - 0.25) < 0.005
    with pytest.raises(ValueError, match="data_noise"):
        DiffusionModule(denoiser(previous=1, generated=False), torch.ones(4, 4), condition_noise=0.5,
                        data_noise=0.25)
    with pytest.raises(ValueError, match="data_noise must be finite"):
        DiffusionModule(denoiser(previous=1), torch.ones(4, 4), condition_noise=0.5, data_noise=-1.0)
