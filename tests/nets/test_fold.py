"""DepthAsChannels: a 2D net on (B, C, D, H, W) with the depth folded into channels."""

from __future__ import annotations

import pytest
import torch

from simdiff.nets.fold import DepthAsChannels, fold, unfold
from simdiff.nets.unet import UNet


def test_fold_unfold_round_trip_is_channel_major() -> None:
    x = torch.arange(2 * 3 * 4 * 5 * 6.0).reshape(2, 3, 4, 5, 6)
    f = fold(x)
    assert f.shape == (2, 12, 5, 6)
    torch.testing.assert_close(f[:, 1 * 4 + 2], x[:, 1, 2])  # channel c, level d -> c*D + d
    torch.testing.assert_close(unfold(f, 4), x)


def test_wrapped_net_equals_the_2d_net_on_folded_fields() -> None:
    torch.manual_seed(0)
    net = UNet(2 * 3, 2 * 3, (False, True), cond_channels=3, channels=(8, 16), factors=((2, 2),), blocks=1,
               attention=(False, True), emb_dim=8)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)  # leave the zero init, so the output is not trivially 0
    wrapped = DepthAsChannels(net, 3)
    x, sp, c = torch.randn(2, 2, 3, 8, 8), torch.randn(2, 1, 3, 8, 8), torch.randn(2)
    out = wrapped(x, c, spatial=sp)
    assert out.shape == x.shape and out.abs().max() > 0
    torch.testing.assert_close(out, unfold(net(fold(x), c, spatial=fold(sp)), 3))
    with pytest.raises(ValueError, match=r"\(B, C, 3, H, W\)"):
        wrapped(torch.randn(2, 2, 4, 8, 8), c, spatial=sp)
