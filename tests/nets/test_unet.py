"""UNet denoiser: shapes, zero init, roll equivariance, conditioning, gradients, autocast, compile."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from simdiff.diffusion.edm import EDMPrecond
from simdiff.nets.unet import NOISE_SCALE, NoiseEmbedding, UNet

EMB = 16


def small(in_channels: int, periodic, **kw) -> UNet:
    torch.manual_seed(0)
    kw.setdefault("channels", (8, 16))
    kw.setdefault("factors", ((2, 2),))
    kw.setdefault("attention", (False, True))
    kw.setdefault("groups", 4)
    kw.setdefault("heads", 2)
    kw.setdefault("blocks", 1)
    return UNet(in_channels, in_channels, periodic, emb_dim=EMB, **kw)


def perturb(net: UNet) -> UNet:
    """Redraw every convolution (the zero-initialised ones too) so outputs are not trivially zero."""
    torch.manual_seed(1)
    for m in net.modules():
        if isinstance(m, nn.Conv2d | nn.Conv3d):
            m.reset_parameters()
    return net.eval()


@pytest.mark.parametrize(
    ("periodic", "shape", "kw"),
    [
        ((False, True), (18, 20), {}),
        (
            (False, True),
            (17, 21),
            {"channels": (8, 16, 16), "factors": ((2, 2), (2, 2)), "attention": (False, False, True)},
        ),
        ((False, False, True), (2, 16, 16), {"depth_kernel_size": 3}),
        ((False, False, True), (2, 16, 16), {"depth_kernel_size": 1}),
        ((False, False, True), (3, 10, 14), {"factors": ((2, 2, 2),), "depth_kernel_size": 1}),
    ],
)
def test_output_shape_matches_input(periodic, shape, kw):
    net = perturb(small(3, periodic, **kw))
    x = torch.randn(2, 3, *shape)
    with torch.no_grad():
        y = net(x, torch.randn(2))
    assert y.shape == x.shape
    assert torch.isfinite(y).all()
    assert y.abs().mean() > 1e-3


def test_out_channels_can_differ_from_in_channels():
    torch.manual_seed(0)
    net = UNet(
        3,
        5,
        (False, True),
        channels=(8, 16),
        factors=((2, 2),),
        attention=(False, False),
        emb_dim=EMB,
        groups=4,
    )
    assert net(torch.randn(1, 3, 8, 8), torch.zeros(1)).shape == (1, 5, 8, 8)


def test_fresh_unet_outputs_exact_zeros_so_edm_starts_at_c_skip_x():
    net = small(2, (False, True), cond_channels=1)
    x = torch.randn(3, 2, 8, 12)
    y = net(x, torch.randn(3), spatial=torch.randn(3, 1, 8, 12), vector=torch.randn(3, EMB))
    assert torch.equal(y, torch.zeros_like(y))
    sigma = torch.tensor([0.1, 1.0, 10.0])
    d = EDMPrecond(small(2, (False, True)), sigma_data=0.5)(x, sigma)
    c_skip = 0.25 / (sigma**2 + 0.25)
    torch.testing.assert_close(d, c_skip[:, None, None, None] * x)


def test_every_fresh_block_is_the_identity_on_its_residual_path():
    net = small(2, (True, True))
    for m in net.modules():
        if hasattr(m, "conv2"):
            assert torch.count_nonzero(m.conv2.conv.weight) == 0
            assert torch.count_nonzero(m.conv2.conv.bias) == 0


def test_roll_along_periodic_axes_rolls_the_output_2d():
    net = perturb(
        small(
            2,
            (True, True),
            cond_channels=1,
            channels=(8, 16, 16),
            factors=((2, 2), (2, 2)),
            attention=(False, True, True),
        )
    )
    x, s = torch.randn(2, 2, 16, 24), torch.randn(2, 1, 16, 24)
    c, v = torch.randn(2), torch.randn(2, EMB)
    k = (8, -12)  # multiples of the total factor 4
    with torch.no_grad():
        y = net(x, c, spatial=s, vector=v)
        a = torch.roll(y, k, dims=(-2, -1))
        b = net(torch.roll(x, k, dims=(-2, -1)), c, spatial=torch.roll(s, k, dims=(-2, -1)), vector=v)
    assert y.abs().mean() > 1e-2
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_roll_along_periodic_axes_rolls_the_output_3d():
    net = perturb(small(2, (False, True, True), cond_channels=2))
    x, s, c = torch.randn(2, 2, 3, 8, 12), torch.randn(2, 2, 3, 8, 12), torch.randn(2)
    k = (2, 6)  # multiples of the total factor 2 along H and W
    with torch.no_grad():
        y = net(x, c, spatial=s)
        a = torch.roll(y, k, dims=(-2, -1))
        b = net(torch.roll(x, k, dims=(-2, -1)), c, spatial=torch.roll(s, k, dims=(-2, -1)))
    assert y.abs().mean() > 1e-2
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("periodic", "shape", "dim"), [((False, True), (16, 16), -2), ((False, True, True), (4, 8, 8), -3)]
)
def test_rolling_along_a_bounded_axis_does_not_commute(periodic, shape, dim):
    """Bounded axes have edges (replicated padding): a roll there is a different field."""
    net = perturb(small(1, periodic))
    x, c = torch.randn(1, 1, *shape), torch.randn(1)
    with torch.no_grad():
        a = torch.roll(net(x, c), 2, dims=dim)
        b = net(torch.roll(x, 2, dims=dim), c)
    assert (a - b).abs().max() > 1e-3


def test_each_condition_changes_the_output():
    net = perturb(small(2, (False, True), cond_channels=1))
    x, s, c, v = torch.randn(2, 2, 8, 8), torch.randn(2, 1, 8, 8), torch.randn(2), torch.randn(2, EMB)
    with torch.no_grad():
        y = net(x, c, spatial=s, vector=v)
        for other in (
            net(x, c + 0.5, spatial=s, vector=v),
            net(x, c, spatial=s + 1.0, vector=v),
            net(x, c, spatial=s, vector=v + 1.0),
            net(x, c, spatial=s),  # no vector is the same as a zero vector, a different one
        ):
            assert (other - y).abs().max() > 1e-3
        torch.testing.assert_close(net(x, c, spatial=s), net(x, c, spatial=s, vector=torch.zeros(2, EMB)))


def test_samples_are_processed_independently():
    """No per-sample mixing across the batch (GroupNorm and attention are per sample)."""
    net = perturb(small(2, (False, True), cond_channels=1))
    x, s, c, v = torch.randn(3, 2, 8, 8), torch.randn(3, 1, 8, 8), torch.randn(3), torch.randn(3, EMB)
    with torch.no_grad():
        whole = net(x, c, spatial=s, vector=v)
        one = net(x[1:2], c[1:2], spatial=s[1:2], vector=v[1:2])
    torch.testing.assert_close(whole[1:2], one, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "no `spatial` condition"),
        ({"spatial": torch.zeros(2, 2, 8, 8)}, "cond_channels"),
        ({"spatial": torch.zeros(2, 1, 8, 6)}, "cond_channels"),
        ({"spatial": torch.zeros(2, 1, 8, 8), "vector": torch.zeros(2, EMB + 1)}, "emb_dim"),
        ({"spatial": torch.zeros(2, 1, 8, 8), "vector": torch.zeros(EMB)}, "emb_dim"),
    ],
)
def test_bad_conditions_raise(kwargs, match):
    net = small(2, (False, True), cond_channels=1)
    with pytest.raises(ValueError, match=match):
        net(torch.zeros(2, 2, 8, 8), torch.zeros(2), **kwargs)


def test_bad_inputs_raise():
    net = small(2, (False, True))
    with pytest.raises(ValueError, match="cond_channels=0"):
        net(torch.zeros(2, 2, 8, 8), torch.zeros(2), spatial=torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="c_noise"):
        net(torch.zeros(2, 2, 8, 8), torch.zeros(()))
    with pytest.raises(ValueError, match="expects x"):
        net(torch.zeros(2, 3, 8, 8), torch.zeros(2))
    with pytest.raises(ValueError, match="expects x"):
        net(torch.zeros(2, 2, 4, 8, 8), torch.zeros(2))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"attention": (False,)}, "attention"),
        ({"factors": ((2, 2), (2, 2))}, "factors"),
        ({"factors": ((2, 2, 2),)}, "factors"),  # three factors for a 2D field
        ({"periodic": (True,)}, "periodic"),
    ],
)
def test_bad_construction_raises(kw, match):
    periodic = kw.pop("periodic", (False, True))
    with pytest.raises(ValueError, match=match):
        small(1, periodic, **kw)


def test_gradients_reach_every_parameter():
    net = perturb(small(2, (False, True, True), cond_channels=1)).train()
    x, s = torch.randn(2, 2, 2, 8, 8), torch.randn(2, 1, 2, 8, 8)
    net(x, torch.randn(2), spatial=s, vector=torch.randn(2, EMB)).square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_gradients_reach_every_parameter_from_zero_init_through_output():
    """Even from the zero init the output conv gets a gradient (the training can start)."""
    net = small(2, (False, True))
    net(torch.randn(2, 2, 8, 8), torch.randn(2)).sum().backward()
    assert net.out.conv.weight.grad.abs().sum() > 0


def test_noise_embedding_features_are_the_sinusoids():
    emb = NoiseEmbedding(EMB, features=8)
    c = torch.tensor([0.0, -0.3, 1.1])
    phi = emb.features(c)
    w = 10_000.0 ** (-torch.arange(4) / 4)
    t = NOISE_SCALE * c[:, None] * w
    torch.testing.assert_close(phi, torch.cat([t.cos(), t.sin()], 1))
    assert torch.equal(phi[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    assert emb(c).shape == (3, EMB)
    # Distinct noise levels give distinct embeddings; the highest frequency has unit period in t.
    assert math.isclose(float(w[0]), 1.0)
    assert (emb(c)[1] - emb(c)[2]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="even"):
        NoiseEmbedding(EMB, features=7)


def test_autocast_bfloat16():
    net = perturb(small(2, (False, True, True), cond_channels=1))
    x, s, c = torch.randn(2, 2, 2, 8, 8), torch.randn(2, 1, 2, 8, 8), torch.randn(2)
    with torch.no_grad():
        ref = net(x, c, spatial=s)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = net(x, c, spatial=s)
    assert y.shape == ref.shape and torch.isfinite(y).all()
    assert (y.float() - ref).abs().mean() < 0.05 * ref.abs().mean()


@pytest.mark.slow
def test_compiles_without_graph_breaks():
    net = perturb(small(2, (False, True), cond_channels=1))
    x, s, c, v = torch.randn(2, 2, 8, 8), torch.randn(2, 1, 8, 8), torch.randn(2), torch.randn(2, EMB)
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, c, spatial=s, vector=v), net(x, c, spatial=s, vector=v))
