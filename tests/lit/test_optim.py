"""The optimiser factory the training modules receive (simdiff.lit.optim)."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from simdiff.lit.optim import adamw, check_factory, describe, optimizer_with_schedule


def test_adamw_defaults_to_no_weight_decay_and_builds_one_group():
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))]
    built = optimizer_with_schedule(adamw(lr=2e-3), params, None, warmup=4, cosine=True, min_ratio=0.1)
    opt = built["optimizer"]
    assert type(opt) is torch.optim.AdamW and len(opt.param_groups) == 1
    group = opt.param_groups[0]
    assert (group["initial_lr"], group["weight_decay"], group["betas"]) == (2e-3, 0.0, (0.9, 0.999))
    assert group["lr"] == pytest.approx(2e-3 / 4)  # the first warm-up step
    assert built["lr_scheduler"]["interval"] == "step"


def test_describe_gives_plain_values():
    assert describe(partial(torch.optim.Adam, lr=1e-3, betas=(0.9, 0.99))) == {
        "class": "torch.optim.adam.Adam", "lr": 1e-3, "betas": [0.9, 0.99]}
    assert describe(torch.optim.SGD) == {"class": "torch.optim.sgd.SGD"}


def test_an_optimizer_instead_of_a_factory_is_refused():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(TypeError, match=r"AutoencoderModule: optimizer must be a factory .*_partial_: true"):
        check_factory(opt, "AutoencoderModule")
    with pytest.raises(TypeError, match=r"got 0\.001"):
        check_factory(1e-3, "DiffusionModule")
