"""GeoConv: a 2D or 3D convolution that pads by the field's geometry before convolving."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from simdiff.nets.padding import geo_pad


def per_axis(value: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    """An int broadcast to ``ndim`` axes, or a sequence of exactly ``ndim`` ints."""
    if isinstance(value, int):
        return (value,) * ndim
    out = tuple(int(v) for v in value)
    if len(out) != ndim:
        raise ValueError(f"expected {ndim} per-axis values, got {out}")
    return out


class GeoConv(nn.Module):
    """Convolution over (B, C, [D], H, W) with circular padding on periodic axes.

    The padding keeps the spatial size at stride 1 (odd kernels): ``(k - 1) / 2`` cells each
    side, wrapped on periodic axes and edge-replicated on bounded ones
    (:func:`simdiff.nets.padding.geo_pad`). With ``pad=False`` no padding is added (used by
    strided patch-merging downsamplers whose kernel equals their stride).

    Args:
        in_channels, out_channels: C_in and C_out.
        kernel_size: per spatial axis, or one int for all.
        periodic: per spatial axis, True where the axis wraps; its length (2 or 3) picks
            Conv2d or Conv3d.
        stride: per spatial axis, or one int.
        pad: pad to keep the size (odd kernels only).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        periodic: Sequence[bool],
        stride: int | Sequence[int] = 1,
        pad: bool = True,
    ) -> None:
        super().__init__()
        self.periodic = tuple(bool(p) for p in periodic)
        nd = len(self.periodic)
        if nd not in (2, 3):
            raise ValueError(f"GeoConv works on 2 or 3 spatial axes, got periodic flags {self.periodic}")
        k = per_axis(kernel_size, nd)
        if pad and any(v % 2 == 0 for v in k):
            raise ValueError(f"GeoConv: padded convolutions need odd kernels, got {k}")
        self.pads = tuple(((v - 1) // 2, (v - 1) // 2) if pad else (0, 0) for v in k)
        conv = nn.Conv2d if nd == 2 else nn.Conv3d
        self.conv = conv(in_channels, out_channels, k, stride=per_axis(stride, nd), padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, [D], H, W) -> (B, C_out, [D'], H', W')."""
        return self.conv(geo_pad(x, self.pads, self.periodic))
