"""Autoencoder shapes, per-axis factors and equivariance under rolls along periodic axes."""

from __future__ import annotations

import pytest
import torch

from simdiff.nets.autoencoder import Autoencoder, stage_factors
from simdiff.nets.bottleneck import BoundedBottleneck, KLBottleneck


def small(in_channels: int, periodic, **kw) -> Autoencoder:
    torch.manual_seed(0)
    kw.setdefault("channels", (8, 16, 16))
    kw.setdefault("latent_channels", 3)
    return Autoencoder(in_channels, periodic, bottleneck=BoundedBottleneck(), groups=4, **kw)


@pytest.mark.parametrize(
    ("periodic", "shape", "factors", "latent"),
    [
        ((False, True), (16, 24), [[2, 2], [2, 2]], (3, 4, 6)),
        ((False, False, True), (3, 16, 24), [[2, 2], [2, 2]], (3, 3, 4, 6)),  # depth factor 1
        ((False, False, True), (4, 16, 24), [[2, 2, 2], [2, 2]], (3, 2, 4, 6)),
        ((False, True), (89, 180), [[2, 2], [2, 3]], (3, 23, 30)),  # 89 padded to 92 then cropped
    ],
)
def test_shapes_with_per_axis_factors(periodic, shape, factors, latent):
    net = small(2, periodic, factors=factors)
    x = torch.randn(2, 2, *shape)
    out = net(x)
    assert out.recon.shape == x.shape
    assert out.z.shape == (2, *latent)
    assert net.latent_shape(shape) == latent
    assert net.compression_ratio(shape) == pytest.approx(2 * x[0, 0].numel() / torch.Size(latent).numel())


def test_stage_factors_align_right():
    assert stage_factors([[2, 2], [2, 2, 2]], 3) == [(1, 2, 2), (2, 2, 2)]
    with pytest.raises(ValueError):
        stage_factors([[2, 2, 2, 2]], 3)


@pytest.mark.parametrize("attention", [False, True])
def test_roll_along_longitude_rolls_the_reconstruction_2d(attention):
    net = small(1, (False, True), attention=attention).eval()
    x = torch.randn(1, 1, 16, 32)
    k = 8  # a multiple of the total factor 4
    with torch.no_grad():
        a = torch.roll(net(x).recon, k, dims=-1)
        b = net(torch.roll(x, k, dims=-1)).recon
        za = torch.roll(net.encode(x), k // 4, dims=-1)
        zb = net.encode(torch.roll(x, k, dims=-1))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(za, zb, atol=1e-5, rtol=1e-5)


def test_roll_equivariance_3d_periodic_cell():
    net = small(2, (True, True, True), factors=[[2, 2, 2], [2, 2]]).eval()
    x = torch.randn(1, 2, 4, 8, 8)
    with torch.no_grad():
        a = torch.roll(net(x).recon, (2, 4, -4), dims=(2, 3, 4))
        b = net(torch.roll(x, (2, 4, -4), dims=(2, 3, 4))).recon
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_rolling_along_a_bounded_axis_is_not_equivariant():
    """Latitude has edges: a roll there is a different field, so the net must not commute with it."""
    net = small(1, (False, True)).eval()
    x = torch.randn(1, 1, 16, 32)
    with torch.no_grad():
        a = torch.roll(net(x).recon, 4, dims=-2)
        b = net(torch.roll(x, 4, dims=-2)).recon
    assert (a - b).abs().max() > 1e-3


def test_no_seam_at_the_dateline():
    """A field periodic in longitude reconstructs as well across the dateline as anywhere."""
    net = small(1, (False, True)).eval()
    lon = torch.linspace(0, 2 * torch.pi, 33)[:-1]
    x = torch.sin(3 * lon).expand(1, 1, 16, 32).contiguous()
    with torch.no_grad():
        r = net(x).recon[0, 0]
    jumps = (torch.roll(r, -1, dims=-1) - r).abs()  # includes the 31 -> 0 step
    assert jumps[:, -1].max() <= jumps[:, :-1].max() + 1e-6


def test_kl_bottleneck_samples_in_training_only():
    net = Autoencoder(1, (False, True), latent_channels=2, channels=(4, 8), factors=[[2, 2]],
                      bottleneck=KLBottleneck(weight=1.0), groups=2)
    x = torch.randn(2, 1, 8, 8)
    net.train()
    out = net(x)
    assert not torch.equal(out.z, out.mean) and out.reg > 0
    net.eval()
    out = net(x)
    assert torch.equal(out.z, out.mean)


def test_wrong_channel_count_is_refused():
    net = small(2, (False, True))
    with pytest.raises(ValueError, match="expects"):
        net(torch.randn(1, 3, 16, 16))


def test_folded_levels_keep_the_depth_axis_in_the_latents():
    """fold_depth: a 2D net over (H, W) with the levels in its channels; latents (c, D, h, w), and
    the same compression as the 3D net with the same latent channels."""
    folded = small(2, (False, False, True), fold_depth=True, depth=3)
    volume = small(2, (False, False, True))
    x = torch.randn(2, 2, 3, 16, 24)
    out = folded(x)
    assert out.recon.shape == x.shape and out.z.shape == (2, 3, 3, 4, 6)
    assert folded.latent_shape((3, 16, 24)) == volume.latent_shape((3, 16, 24)) == (3, 3, 4, 6)
    assert folded.compression_ratio((3, 16, 24)) == volume.compression_ratio((3, 16, 24))
    convs = [m for m in folded.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Conv3d)]
    assert convs and all(m.weight.dim() == 4 for m in convs)
    with torch.no_grad():
        torch.testing.assert_close(folded.decode(folded.encode(x), (3, 16, 24)), folded.eval()(x).recon)


def test_folded_levels_mix_every_level_and_roll_along_longitude():
    net = small(1, (False, False, True), fold_depth=True, depth=2).eval()
    x = torch.randn(1, 1, 2, 16, 32)
    bumped = x.clone()
    bumped[:, :, 0] += 1.0
    with torch.no_grad():
        changed = (net(bumped).recon - net(x).recon)[:, :, 1].abs().amax()
        a = torch.roll(net(x).recon, 8, dims=-1)
        b = net(torch.roll(x, 8, dims=-1)).recon
    assert changed > 1e-4  # level 0 reaches level 1 through the channels
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_folded_levels_refuse_what_they_cannot_do():
    with pytest.raises(ValueError, match="needs depth"):
        small(1, (False, False, True), fold_depth=True)
    with pytest.raises(ValueError, match="resample"):
        small(1, (False, False, True), fold_depth=True, depth=4, factors=[[2, 2, 2], [2, 2]])
    net = small(1, (False, False, True), fold_depth=True, depth=2)
    with pytest.raises(ValueError, match="depth 2"):
        net(torch.randn(1, 1, 3, 16, 16))
    assert small(1, (False, True), fold_depth=True).depth is None  # a 2D field has nothing to fold
