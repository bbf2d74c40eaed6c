"""The 2D/3D convolutional autoencoder for fields (B, C, [D], H, W).

The shape of the LDM autoencoder (Rombach et al., CVPR 2022, appendix G): residual stages
separated by downsamplers, a middle block with optional self-attention, and a bottleneck;
the decoder mirrors it. Here every layer pads by the field's geometry (circular along periodic
axes), and each downsampling stage has its own per-axis factors, so a volume may be halved over
lat/lon while its 2-3 pressure levels (or a window of times, as LDCast's spatiotemporal
autoencoder treats time; Leinonen et al. 2023) keep their size.

Sizes that the total factor does not divide are padded at the end of each axis (circularly on
periodic axes) before encoding; :meth:`Autoencoder.decode` crops back to the size it is given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from simdiff.nets.blocks import Attention, Downsample, ResBlock, Upsample, group_norm
from simdiff.nets.bottleneck import Bottleneck, BottleneckOutput, KLBottleneck
from simdiff.nets.conv import GeoConv
from simdiff.nets.fold import fold, unfold
from simdiff.nets.padding import crop_to, pad_to_multiple


def stage_factors(factors: Sequence[Sequence[int]], ndim: int) -> list[tuple[int, ...]]:
    """Per-stage per-axis factors, each aligned to the trailing axes; leading axes get 1.

    ``[[2, 2], [2, 2]]`` halves H and W twice and leaves a depth axis alone, so one config
    serves 2D and 3D fields; ``[[2, 2, 2]]`` halves depth too.
    """
    out = []
    for f in factors:
        f = tuple(int(v) for v in f)
        if not 1 <= len(f) <= ndim or min(f) < 1:
            raise ValueError(f"downsampling factors {f} must be 1..{ndim} positive ints per stage")
        out.append((1,) * (ndim - len(f)) + f)
    return out


def total_factors(factors: Sequence[Sequence[int]], ndim: int) -> tuple[int, ...]:
    """The product of the per-stage factors per axis: how much a net shrinks each of ``ndim`` axes."""
    return tuple(math.prod(f[a] for f in stage_factors(factors, ndim)) for a in range(ndim))


@dataclass
class AutoencoderOutput:
    """recon: (B, C, [D], H, W); z, mean: (B, c, [d], h, w); reg: scalar regularisation."""

    recon: torch.Tensor
    z: torch.Tensor
    mean: torch.Tensor
    reg: torch.Tensor


def middle(
    channels: int, periodic: Sequence[bool], kernel: tuple[int, ...], attention: bool, groups: int
) -> nn.Sequential:
    """The bottleneck block shared by encoder and decoder: residual, [attention], residual."""
    return nn.Sequential(
        ResBlock(channels, channels, periodic, kernel, groups),
        Attention(channels, groups=groups) if attention else nn.Identity(),
        ResBlock(channels, channels, periodic, kernel, groups),
    )


class Encoder(nn.Module):
    """(B, C, [D], H, W) -> (B, moments * c, [d], h, w); sizes divisible by the total factors."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int],
        factors: Sequence[tuple[int, ...]],
        periodic: Sequence[bool],
        kernel: tuple[int, ...],
        blocks: int,
        attention: bool,
        groups: int,
    ) -> None:
        super().__init__()
        self.stem = GeoConv(in_channels, channels[0], kernel, periodic)
        stages: list[nn.Module] = []
        for i, f in enumerate(factors):
            stages += [ResBlock(channels[i], channels[i], periodic, kernel, groups) for _ in range(blocks)]
            stages.append(Downsample(channels[i], channels[i + 1], f, periodic))
        self.stages = nn.Sequential(*stages)
        ch = channels[-1]
        self.mid = middle(ch, periodic, kernel, attention, groups)
        self.norm = group_norm(ch, groups)
        self.out = GeoConv(ch, out_channels, kernel, periodic)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.stages(self.stem(x)))
        return self.out(F.silu(self.norm(h)))


class Decoder(nn.Module):
    """(B, c, [d], h, w) -> (B, C, [D], H, W) with D, H, W = d, h, w times the total factors."""

    def __init__(
        self,
        latent_channels: int,
        out_channels: int,
        channels: Sequence[int],
        factors: Sequence[tuple[int, ...]],
        periodic: Sequence[bool],
        kernel: tuple[int, ...],
        blocks: int,
        attention: bool,
        groups: int,
    ) -> None:
        super().__init__()
        ch = channels[-1]
        self.stem = GeoConv(latent_channels, ch, kernel, periodic)
        self.mid = middle(ch, periodic, kernel, attention, groups)
        # Up-samplers convolve across depth with a 3-kernel whatever depth_kernel_size is, so levels
        # always mix in the decoder (as the encoder's down-samplers mix them).
        sampler_kernel = (3,) * (len(kernel) - 2) + kernel[-2:]
        stages: list[nn.Module] = []
        for i in reversed(range(len(factors))):
            stages.append(Upsample(channels[i + 1], channels[i], factors[i], periodic, sampler_kernel))
            stages += [ResBlock(channels[i], channels[i], periodic, kernel, groups) for _ in range(blocks)]
        self.stages = nn.Sequential(*stages)
        self.norm = group_norm(channels[0], groups)
        self.out = GeoConv(channels[0], out_channels, kernel, periodic)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.stages(self.mid(self.stem(z)))
        return self.out(F.silu(self.norm(h)))


class Autoencoder(nn.Module):
    """Geometry-aware convolutional autoencoder for 2D (B, C, H, W) and 3D (B, C, D, H, W) fields.

    Args:
        in_channels: C, the store's channels (variables).
        periodic: per spatial axis ``([D], H, W)``, True where it wraps; 2 or 3 flags pick the
            2D or 3D network. Both come from the training store (the CLI passes them).
        latent_channels: c.
        channels: width of each resolution level, finest first (``len(factors) + 1`` entries).
        factors: per downsampling stage, per-axis factors aligned to the trailing axes
            (see :func:`stage_factors`).
        blocks: residual blocks per resolution level.
        attention: self-attention in the middle blocks (at the coarsest resolution).
        bottleneck: a :class:`~simdiff.nets.bottleneck.Bottleneck` (KL or bounded).
        kernel_size: spatial kernel over H and W (odd).
        depth_kernel_size: kernel along D of the residual blocks of the 3D network (odd). The
            down/up-samplers always span 3 cells along an axis they do not resample, so with 1
            the levels still mix there, at about a third of the cost of full 3D blocks.
        groups: GroupNorm groups (at most).
        fold_depth: 3D fields only: a 2D network that sees the ``depth`` levels as channels
            (``(B, C, D, H, W) -> (B, C*D, H, W)``, :mod:`simdiff.nets.fold`), as most weather
            models treat a few pressure levels or layers; the latents keep the depth axis,
            ``(B, c, D, h, w)``, so everything downstream is unchanged. About 3x cheaper than
            the 3D network on a CPU for 2 levels; wrong for a real volume (a molecule's grid).
        depth: D, required with ``fold_depth`` (the CLI passes it from the store).
    """

    def __init__(
        self,
        in_channels: int,
        periodic: Sequence[bool],
        latent_channels: int = 4,
        channels: Sequence[int] = (32, 64, 128),
        factors: Sequence[Sequence[int]] = ((2, 2), (2, 2)),
        blocks: int = 1,
        attention: bool = False,
        bottleneck: Bottleneck | None = None,
        kernel_size: int = 3,
        depth_kernel_size: int = 3,
        groups: int = 8,
        fold_depth: bool = False,
        depth: int | None = None,
    ) -> None:
        super().__init__()
        self.periodic = tuple(bool(p) for p in periodic)
        ndim = len(self.periodic)
        if ndim not in (2, 3):
            raise ValueError(f"Autoencoder: periodic needs one flag per spatial axis (2 or 3): {periodic}")
        # With fold_depth the inner nets are 2D over (H, W) and carry D in their channels.
        folded = bool(fold_depth) and ndim == 3
        if folded and depth is None:
            raise ValueError("Autoencoder: fold_depth on a 3D field needs depth (its number of levels)")
        self.depth = int(depth) if folded else None
        if self.depth is not None and any(len(f) > 2 for f in factors):
            raise ValueError(
                f"Autoencoder: fold_depth keeps the depth axis; factors {list(factors)} resample it"
            )
        inner = 2 if self.depth is not None else ndim
        self.factors = stage_factors(factors, inner)
        if len(channels) != len(self.factors) + 1:
            raise ValueError(
                f"Autoencoder: channels {list(channels)} needs len(factors) + 1 = "
                f"{len(self.factors) + 1} entries"
            )
        self.in_channels = int(in_channels)
        self.latent_channels = int(latent_channels)
        self.total_factors = total_factors(factors, ndim)
        kernel = (int(depth_kernel_size),) * (inner - 2) + (int(kernel_size),) * 2
        self.bottleneck: Bottleneck = bottleneck if bottleneck is not None else KLBottleneck()
        periodic_inner = self.periodic[ndim - inner:]
        args = (channels, self.factors, periodic_inner, kernel, int(blocks), bool(attention), int(groups))
        d = self.depth or 1
        self.encoder = Encoder(in_channels * d, self.bottleneck.moments * latent_channels * d, *args)
        self.decoder = Decoder(latent_channels * d, in_channels * d, *args)

    @property
    def ndim(self) -> int:
        """Spatial axes: 2 or 3."""
        return len(self.periodic)

    def latent_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """``(c, [d], h, w)`` of the latents of a field with spatial ``shape`` ``([D], H, W)``."""
        spatial = tuple(-(-int(n) // f) for n, f in zip(shape, self.total_factors, strict=True))
        return (self.latent_channels, *spatial)

    def compression_ratio(self, shape: Sequence[int]) -> float:
        """Input elements / latent elements for a field ``([D], H, W)`` of ``in_channels``."""
        return self.in_channels * math.prod(shape) / math.prod(self.latent_shape(shape))

    def encode_moments(self, x: torch.Tensor) -> BottleneckOutput:
        """(B, C, [D], H, W) -> bottleneck output over (B, c, [d], h, w)."""
        if x.dim() != self.ndim + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"Autoencoder expects (B, {self.in_channels}, {'D, ' if self.ndim == 3 else ''}H, W), "
                f"got {tuple(x.shape)}"
            )
        if self.depth is not None and x.shape[2] != self.depth:
            raise ValueError(f"Autoencoder: built for depth {self.depth} (fold_depth), got {tuple(x.shape)}")
        padded, _ = pad_to_multiple(x, self.total_factors, self.periodic)
        if self.depth is None:
            return self.bottleneck(self.encoder(padded))
        out = self.bottleneck(self.encoder(fold(padded)))
        return BottleneckOutput(unfold(out.z, self.depth), unfold(out.mean, self.depth), out.loss)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic latents (the posterior mean): (B, C, [D], H, W) -> (B, c, [d], h, w)."""
        return self.encode_moments(x).mean

    def decode(self, z: torch.Tensor, shape: Sequence[int] | None = None) -> torch.Tensor:
        """(B, c, [d], h, w) -> (B, C, [D], H, W), cropped to the spatial ``shape`` if given."""
        out = self.decoder(z) if self.depth is None else unfold(self.decoder(fold(z)), self.depth)
        return out if shape is None else crop_to(out, shape)

    def forward(self, x: torch.Tensor) -> AutoencoderOutput:
        """Encode (sampling z in training for the KL bottleneck), decode, crop to x's size."""
        moments = self.encode_moments(x)
        recon = self.decode(moments.z, x.shape[2:])
        return AutoencoderOutput(recon, moments.z, moments.mean, moments.loss)
