"""Geometry-aware padding and convolutions: wrap along periodic axes, never along bounded ones."""

from __future__ import annotations

import pytest
import torch

from simdiff.nets.conv import GeoConv
from simdiff.nets.padding import crop_to, geo_pad, pad_to_multiple


def test_circular_padding_wraps_and_replicate_padding_repeats_the_edge():
    x = torch.arange(5.0).reshape(1, 1, 1, 5).expand(1, 1, 3, 5)
    out = geo_pad(x, [(1, 1), (2, 1)], [False, True])
    assert out.shape == (1, 1, 5, 8)
    assert out[0, 0, 1].tolist() == [3, 4, 0, 1, 2, 3, 4, 0]  # wrapped along x
    assert torch.equal(out[0, 0, 0], out[0, 0, 1])  # y edge repeated
    assert torch.equal(out[0, 0, -1], out[0, 0, -2])


def test_bounded_axis_is_not_circular():
    """An impulse at the last row must not reach the first row through the padding."""
    conv = GeoConv(1, 1, 3, periodic=[False, True])
    torch.nn.init.ones_(conv.conv.weight)
    torch.nn.init.zeros_(conv.conv.bias)
    x = torch.zeros(1, 1, 6, 6)
    x[0, 0, -1, 2] = 1.0
    y = conv(x)
    assert y[0, 0, 0].abs().sum() == 0  # would be 3 if y wrapped around
    x2 = torch.zeros(1, 1, 6, 6)
    x2[0, 0, 2, -1] = 1.0
    assert conv(x2)[0, 0, 2, 0] == 1.0  # x does wrap


def test_pad_to_multiple_and_crop_round_trip():
    x = torch.randn(2, 3, 89, 180)
    padded, shape = pad_to_multiple(x, (8, 6), (False, True))
    assert padded.shape[2:] == (96, 180)
    assert torch.equal(crop_to(padded, shape), x)


def test_geoconv_keeps_size_in_3d_and_refuses_even_kernels():
    conv = GeoConv(2, 4, (3, 3, 3), periodic=[False, False, True])
    assert conv(torch.randn(1, 2, 3, 7, 8)).shape == (1, 4, 3, 7, 8)
    with pytest.raises(ValueError, match="odd"):
        GeoConv(1, 1, 2, periodic=[False, True])
