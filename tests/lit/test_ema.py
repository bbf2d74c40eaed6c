"""EMA update math and the swap of averaged weights."""

from __future__ import annotations

import torch

from simdiff.lit.ema import ExponentialMovingAverage


def test_ema_update_follows_the_formula():
    net = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema = ExponentialMovingAverage(net, decay=0.9, warmup=False)
    expected = torch.ones(1, 2)
    for step in range(5):
        with torch.no_grad():
            net.weight.fill_(float(step + 2))
        ema.update(net)
        expected = 0.9 * expected + 0.1 * (step + 2)
    torch.testing.assert_close(ema.shadow_0, expected)


def test_warmup_decay_and_swap_restores_trained_weights():
    net = torch.nn.Linear(2, 1)
    ema = ExponentialMovingAverage(net, decay=0.999)
    assert ema.current_decay() == 1 / 10
    ema.update(net)
    assert ema.current_decay() == 2 / 11
    trained = net.weight.detach().clone()
    with torch.no_grad():
        ema.shadow_0.fill_(7.0)
    with ema.swapped_into(net):
        assert torch.all(net.weight == 7.0)
    assert torch.equal(net.weight, trained)
    # The averages travel in the state dict (tensors only).
    state = ema.state_dict()
    assert set(state) == {"num_updates", "shadow_0", "shadow_1"}
