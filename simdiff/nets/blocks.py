"""Building blocks of the autoencoder: residual block, per-axis down/up-sampling, attention.

The residual block follows He et al., "Identity mappings in deep residual networks" (ECCV
2016): pre-activation ``x + conv(act(norm(conv(act(norm(x))))))``, with GroupNorm (Wu & He,
ECCV 2018) and SiLU as in the LDM autoencoder (Rombach et al., CVPR 2022). Normalisation is over
the whole field and the attention has no positional encoding, so every block commutes with
rolls along periodic axes (by multiples of the downsampling factor where one applies).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from simdiff.nets.conv import GeoConv
from simdiff.nets.padding import geo_pad


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= ``groups`` that divides ``channels``."""
    g = max(d for d in range(1, min(groups, channels) + 1) if channels % d == 0)
    return nn.GroupNorm(g, channels, eps=1e-6)


class ResBlock(nn.Module):
    """Pre-activation residual block (B, C_in, [D], H, W) -> (B, C_out, [D], H, W).

    Args:
        in_channels, out_channels: C_in, C_out (a 1x1 convolution maps the skip path when
            they differ).
        periodic: per spatial axis, True where it wraps.
        kernel_size: per spatial axis (odd), or one int.
        groups: GroupNorm groups (at most).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        periodic: Sequence[bool],
        kernel_size: int | Sequence[int] = 3,
        groups: int = 8,
    ) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = GeoConv(in_channels, out_channels, kernel_size, periodic)
        self.norm2 = group_norm(out_channels, groups)
        self.conv2 = GeoConv(out_channels, out_channels, kernel_size, periodic)
        self.skip: nn.Module = (
            nn.Identity() if in_channels == out_channels else GeoConv(in_channels, out_channels, 1, periodic)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Downsample(nn.Module):
    """Per-axis downsampling: a strided patch-merging convolution, kernel = stride = factor.

    Axes with factor 1 keep their size (a padded kernel-3 convolution along them). Every
    output cell sees exactly its own factor-sized patch, so a roll by a multiple of the
    factor rolls the output by roll / factor cells. (B, C_in, [D], H, W) ->
    (B, C_out, [D/f_d], H/f_h, W/f_w); the sizes must be divisible (the autoencoder pads).
    """

    def __init__(
        self, in_channels: int, out_channels: int, factors: Sequence[int], periodic: Sequence[bool]
    ) -> None:
        super().__init__()
        self.factors = tuple(int(f) for f in factors)
        kernel = tuple(f if f > 1 else 3 for f in self.factors)
        self.periodic = tuple(bool(p) for p in periodic)
        # Factor-1 axes need 1 cell of padding each side; merged axes need none.
        self.pads = tuple((1, 1) if f == 1 else (0, 0) for f in self.factors)
        self.conv = GeoConv(in_channels, out_channels, kernel, periodic, stride=self.factors, pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for n, f in zip(x.shape[2:], self.factors, strict=True):
            if n % f:
                raise ValueError(f"Downsample: size {tuple(x.shape[2:])} not divisible by {self.factors}")
        return self.conv(geo_pad(x, self.pads, self.periodic))


class Upsample(nn.Module):
    """Per-axis nearest-neighbour upsampling by ``factors`` followed by a padded convolution.

    (B, C_in, [D], H, W) -> (B, C_out, [D*f_d], H*f_h, W*f_w).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        factors: Sequence[int],
        periodic: Sequence[bool],
        kernel_size: int | Sequence[int] = 3,
    ) -> None:
        super().__init__()
        self.factors = tuple(int(f) for f in factors)
        self.conv = GeoConv(in_channels, out_channels, kernel_size, periodic)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for axis, f in enumerate(self.factors):
            if f > 1:
                x = torch.repeat_interleave(x, f, dim=2 + axis)
        return self.conv(x)


class Attention(nn.Module):
    """Multi-head self-attention over all cells (Vaswani et al., NeurIPS 2017), residual.

    No positional encoding: the block is equivariant to any permutation of cells, rolls
    included. (B, C, [D], H, W) -> same shape.
    """

    def __init__(self, channels: int, heads: int = 4, groups: int = 8) -> None:
        super().__init__()
        heads = max(h for h in range(1, min(heads, channels) + 1) if channels % h == 0)
        self.norm = group_norm(channels, groups)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        tokens = self.norm(x).reshape(b, c, -1).transpose(1, 2)  # (B, N, C)
        out, _ = self.attn(tokens, tokens, tokens, need_weights=False)
        return x + out.transpose(1, 2).reshape(x.shape)
