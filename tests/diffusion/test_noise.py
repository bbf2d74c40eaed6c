"""Per-row random streams (simdiff.diffusion.noise.randn_rows) and the samplers that use them."""

from __future__ import annotations

import pytest
import torch

from simdiff.diffusion import karras_sigmas, sample_heun
from simdiff.diffusion.noise import randn_rows


def gens(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_rows_equal_the_same_rows_drawn_one_at_a_time() -> None:
    batch = randn_rows((3, 2, 5), gens(11, 12, 13), dtype=torch.float64)
    for b, seed in enumerate((11, 12, 13)):
        alone = randn_rows((1, 2, 5), gens(seed), dtype=torch.float64)[0]
        torch.testing.assert_close(batch[b], alone, rtol=0, atol=0)
    # the same stream as torch.randn of one row from that generator
    torch.testing.assert_close(batch[1], torch.randn((2, 5), generator=gens(12)[0], dtype=torch.float64))


def test_a_row_does_not_depend_on_its_batch() -> None:
    a = randn_rows((2, 40), gens(1, 2))
    b = randn_rows((3, 40), gens(5, 2, 9))
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=0)
    assert not torch.equal(a[0], b[0])


def test_single_generator_and_none_keep_torch_randn() -> None:
    torch.testing.assert_close(randn_rows((4, 3), gens(3)[0]), torch.randn((4, 3), generator=gens(3)[0]))
    assert randn_rows((4, 3), None, dtype=torch.float16).dtype == torch.float16


def test_wrong_number_of_generators_is_refused() -> None:
    with pytest.raises(ValueError, match="2 generators for noise of shape"):
        randn_rows((3, 4), gens(1, 2))


def test_heun_churn_rows_are_reproducible_on_their_own() -> None:
    """A stochastic sampler run on a batch gives each row what it gives that row alone."""
    sigmas = karras_sigmas(8, 0.002, 80.0).double()
    x0 = torch.randn((3, 6), generator=gens(0)[0], dtype=torch.float64) * 80.0

    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return 0.25 / (0.25 + sigma**2) * x

    kw = {"s_churn": 20.0}
    batch = sample_heun(denoiser, x0, sigmas, generator=gens(4, 5, 6), **kw)
    row = sample_heun(denoiser, x0[1:2], sigmas, generator=gens(5), **kw)
    torch.testing.assert_close(batch[1:2], row, rtol=0, atol=0)
    other = sample_heun(denoiser, x0[1:2], sigmas, generator=gens(50), **kw)
    assert not torch.equal(other, row)
