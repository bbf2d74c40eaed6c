"""Independent draws in fixed member groups: batched, each row with its own conditions, and a
draw's bits independent of which other draws were asked for (sample mode, augment)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from simdiff.diffusion.denoiser import ConditionalDenoiser
from simdiff.diffusion.samplers import sample_euler
from simdiff.diffusion.sampling import Sampling
from simdiff.generate.rollout import SamplerSpec, draw_samples
from simdiff.nets.conditioning import Conditioner


class BatchRecorder(nn.Module):
    """Mixes the noisy state with its conditioning state, through a convolution (whose kernels
    may block a batch differently from a single row), and records each call's batch size."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 2, 3, padding=1)
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, spatial: torch.Tensor, **_: torch.Tensor):
        self.batches.append(x.shape[0])
        return self.conv(torch.cat([x, spatial], dim=1))


def model() -> ConditionalDenoiser:
    torch.manual_seed(0)
    return ConditionalDenoiser(BatchRecorder(), Conditioner(8, 2, previous=1), residual=False).eval()


def previous_of(ids: list[int]) -> dict[str, torch.Tensor]:
    """Draw ``i`` is conditioned on a state of its own (a different source per id)."""
    g = [torch.Generator().manual_seed(1000 + int(i)) for i in ids]
    return {"previous": torch.stack([torch.randn(1, 2, 6, 6, generator=gi) for gi in g])}


def draw(net: ConditionalDenoiser, members: list[int], group: int, conditions=previous_of) -> np.ndarray:
    spec = SamplerSpec(sample_euler, Sampling(sample_euler, steps=3).sigmas(), group=group)
    return draw_samples(net, lambda z, row_by_row=False, gens=None: z, spec, latent_shape=(2, 6, 6),
                        conditions=conditions, members=members, seed=4, counter=2)


def test_groups_run_batched_and_a_draw_alone_keeps_its_bits() -> None:
    net = model()
    full = draw(net, list(range(6)), group=3)
    assert set(net.precond.net.batches) == {3}  # two groups of three rows, never one row at a time
    net.precond.net.batches.clear()
    alone = draw(net, [4], group=3)
    assert net.precond.net.batches and set(net.precond.net.batches) == {3}  # its whole group
    np.testing.assert_array_equal(alone[0], full[4])
    # order and membership of the request do not matter either
    np.testing.assert_array_equal(draw(net, [5, 1], group=3), full[[5, 1]])


def test_a_group_draws_what_one_row_at_a_time_draws_for_each_id() -> None:
    """Each row of a group is its own id's draw (its noise stream, its conditions): the grouped
    draws equal the row-by-row ones up to the kernels' rounding, and differ between ids."""
    net = model()
    grouped = draw(net, list(range(6)), group=3)
    net.precond.net.batches.clear()
    rows = draw(net, list(range(6)), group=1)
    assert set(net.precond.net.batches) == {1}
    np.testing.assert_allclose(grouped, rows, rtol=1e-5, atol=1e-5)
    assert not np.allclose(rows[0], rows[1])
    # the conditions given as a mapping for the members draw the same as the function
    np.testing.assert_array_equal(draw(net, [2, 3], group=1, conditions=previous_of([2, 3])), rows[[2, 3]])
