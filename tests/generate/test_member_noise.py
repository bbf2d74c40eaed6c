"""Counter-keyed member noise (simdiff.generate.noise)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simdiff.diffusion.noise import randn_rows
from simdiff.generate.noise import SAMPLE_INIT, member_generator, member_generators, member_seed

SHAPE = (4, 3, 8)


def noise(seed: int, inits: list[int], members: list[int], step: int) -> torch.Tensor:
    return randn_rows((len(members), *SHAPE), member_generators(seed, inits, members, step))


def test_same_key_same_noise() -> None:
    torch.testing.assert_close(noise(7, [3, 3], [0, 1], 2), noise(7, [3, 3], [0, 1], 2), rtol=0, atol=0)
    assert member_seed(7, 3, 1, 2) == member_seed(7, 3, 1, 2)


@pytest.mark.parametrize(
    "other", [(8, 3, 1, 2), (7, 4, 1, 2), (7, 3, 2, 2), (7, 3, 1, 3), (7, SAMPLE_INIT, 1, 2)]
)
def test_each_counter_changes_the_noise(other: tuple[int, int, int, int]) -> None:
    seed, init, member, step = other
    assert member_seed(*other) != member_seed(7, 3, 1, 2)
    assert not torch.equal(noise(seed, [init], [member], step), noise(7, [3], [1], 2))


def test_row_noise_is_independent_of_batch_composition_and_order() -> None:
    inits, members = [0, 0, 5, 5], [0, 1, 0, 1]
    full = noise(1, inits, members, 0)
    for b in range(4):
        alone = noise(1, [inits[b]], [members[b]], 0)[0]
        torch.testing.assert_close(full[b], alone, rtol=0, atol=0)
    order = [2, 0, 3, 1]
    shuffled = noise(1, [inits[i] for i in order], [members[i] for i in order], 0)
    torch.testing.assert_close(shuffled, full[order], rtol=0, atol=0)


def test_key_encoding_is_injective_where_a_plain_list_is_not() -> None:
    """numpy's SeedSequence([2**32, 0]) equals SeedSequence([0, 1, 0]); fixed-width words do not collide."""
    plain = [np.random.SeedSequence(key).generate_state(1)[0] for key in ([2**32, 0], [0, 1, 0])]
    assert plain[0] == plain[1]
    assert member_seed(2**32, 0, 0, 0) != member_seed(0, 1, 0, 0)
    assert member_seed(0, -1, 0, 0) != member_seed(0, 2**64 - 1 - 2**63, 0, 0)


def test_cpu_stream_uses_the_full_key_not_32_bits_of_a_seed() -> None:
    """torch's manual_seed keeps 32 bits on the CPU; keyed CPU generators set the whole MT state."""
    s = member_seed(0, 0, 0, 0)
    low = torch.Generator().manual_seed(s & 0xFFFFFFFF)
    full = torch.Generator().manual_seed(s)
    assert torch.equal(torch.randn(8, generator=full), torch.randn(8, generator=low))
    g = member_generator(0, 0, 0, 0)
    assert g.initial_seed() == s
    assert not torch.equal(torch.randn(8, generator=g), torch.randn(8, generator=low))


def test_keyed_streams_are_standard_normal_and_uncorrelated() -> None:
    """Two keyed streams: mean 0, variance 1 and correlation 0 within 5 standard errors."""
    n = 200_000
    a = torch.randn(n, generator=member_generator(3, 10, 0, 1), dtype=torch.float64)
    b = torch.randn(n, generator=member_generator(3, 10, 1, 1), dtype=torch.float64)
    se = 1 / np.sqrt(n)
    assert abs(float(a.mean())) < 5 * se and abs(float(a.var()) - 1) < 5 * np.sqrt(2) * se
    assert abs(float((a * b).mean())) < 5 * se


def test_mismatched_rows_are_refused() -> None:
    with pytest.raises(ValueError, match="one init per row"):
        member_generators(0, [0, 1], [0], 0)
    with pytest.raises(ValueError, match="64-bit"):
        member_seed(0, 0, 2**64, 0)
