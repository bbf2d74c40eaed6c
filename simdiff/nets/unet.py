"""The 2D/3D UNet denoiser ``F(x_in; c_noise, conditions)`` of the diffusion model.

The shape is the U-Net of Ronneberger et al. (MICCAI 2015) as the diffusion literature uses it:
DDPM (Ho et al., NeurIPS 2020) and DDPM++ (Song et al., ICLR 2021), with the noise level
injected into every residual block by a scale-shift ("FiLM", Perez et al., AAAI 2018) of its
second normalisation, as in ADM (Dhariwal & Nichol, NeurIPS 2021). It is the raw network ``F``
that EDM's preconditioning wraps (Karras et al., NeurIPS 2022, Table 1); see
:class:`simdiff.diffusion.edm.EDMPrecond`, which calls ``net(c_in * x, c_noise, **cond)``.

Layout (``L = len(channels)`` resolution levels, finest first)::

    x (B, C_in, [D], H, W) ++ spatial (B, C_cond, ...)   concatenated along channels
      -> pad_to_multiple(total factors)                   circular on periodic axes
      -> GeoConv -> channels[0]                          ─┐ skip
      level l = 0..L-1:  blocks x [FiLMResBlock (+ Attention)]  ─┤ a skip after each
                         Downsample(factors[l]) if l < L-1       ─┘ and after each downsampler
      middle:            FiLMResBlock, Attention (if attention[-1]), FiLMResBlock
      level l = L-1..0:  (blocks + 1) x [concat skip, FiLMResBlock (+ Attention)]
                         Upsample(factors[l-1]) if l > 0
      -> GroupNorm, SiLU, zero-initialised GeoConv -> C_out -> crop_to(input size)

The embedding ``emb (B, emb_dim)`` is the :class:`NoiseEmbedding` of ``c_noise`` plus the
optional ``vector`` condition (covariates, labels, time features already embedded by a
conditioner). Every convolution is a :class:`~simdiff.nets.conv.GeoConv` (circular padding on
periodic axes), normalisation is over the whole field and the attention has no positional
encoding, so the network commutes with rolls along periodic axes by multiples of the total
downsampling factor. Per-stage ``factors`` align to the trailing axes, as in the autoencoder
(:func:`simdiff.nets.autoencoder.stage_factors`): ``((2, 2), (2, 2))`` halves H and W twice and
leaves a depth axis alone.

The last convolution of every residual block and the output convolution start at zero, so each
block starts as the identity and a fresh network outputs exactly zero: EDM's denoiser then
starts as ``D(x; sigma) = c_skip(sigma) x``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from simdiff.nets.autoencoder import stage_factors, total_factors
from simdiff.nets.blocks import Attention, Downsample, Upsample, group_norm
from simdiff.nets.conv import GeoConv
from simdiff.nets.padding import crop_to, pad_to_multiple

#: ``c_noise = ln(sigma) / 4`` spans about [-1.55, 1.10] for EDM's sigma in [0.002, 80]; times
#: 250 that is a span of about 660 "timesteps", the scale of DDPM's integer t in [0, 1000) for
#: which the sinusoidal frequencies 1 .. 1/10000 were chosen.
NOISE_SCALE = 250.0
#: Longest wavelength of the sinusoidal features (Vaswani et al. 2017, section 3.5).
MAX_PERIOD = 10_000.0


def _zero(conv: GeoConv) -> GeoConv:
    """``conv`` with its weight and bias set to zero (in place)."""
    nn.init.zeros_(conv.conv.weight)
    if conv.conv.bias is not None:
        nn.init.zeros_(conv.conv.bias)
    return conv


class NoiseEmbedding(nn.Module):
    """Noise-level embedding ``c_noise (B,) -> (B, emb_dim)``.

    Sinusoidal features of ``t = NOISE_SCALE * c_noise`` (Vaswani et al., NeurIPS 2017; the
    "positional" timestep embedding of DDPM, Ho et al. 2020, used by EDM's DDPM++)::

        phi(t) = [cos(t w_0), ..., cos(t w_{F/2-1}), sin(t w_0), ..., sin(t w_{F/2-1})],
        w_i = MAX_PERIOD^(-i / (F/2)),

    followed by a two-layer MLP ``Linear(F, E) -> SiLU -> Linear(E, E)``.

    Args:
        emb_dim: E, the embedding width.
        features: F, the number of sinusoidal features (even).
    """

    def __init__(self, emb_dim: int, features: int = 128) -> None:
        super().__init__()
        if features < 2 or features % 2:
            raise ValueError(f"NoiseEmbedding: features must be a positive even number, got {features}")
        half = features // 2
        freqs = MAX_PERIOD ** (-torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)
        self.emb_dim = int(emb_dim)
        self.mlp = nn.Sequential(nn.Linear(features, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

    def features(self, c_noise: torch.Tensor) -> torch.Tensor:
        """The sinusoidal features ``phi(NOISE_SCALE c_noise)``: (B,) -> (B, F), float32."""
        t = NOISE_SCALE * c_noise.float()[:, None] * self.freqs[None, :]
        return torch.cat([t.cos(), t.sin()], dim=1)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        """(B,) -> (B, emb_dim)."""
        return self.mlp(self.features(c_noise))


class FiLMResBlock(nn.Module):
    """Residual block with scale-shift conditioning, (B, C_in, [D], H, W) -> (B, C_out, [D], H, W).

    ADM's "scale-shift norm" (Dhariwal & Nichol 2021, section 3; FiLM, Perez et al. 2018)::

        h = conv1(SiLU(norm1(x)))
        (scale, shift) = Linear(SiLU(emb))
        h = conv2(dropout(SiLU(norm2(h) * (1 + scale) + shift)))
        out = skip(x) + h

    ``conv2`` starts at zero, so the block starts as ``skip(x)``; ``skip`` is a 1x1 GeoConv when
    C_in != C_out and the identity otherwise.

    Args:
        in_channels, out_channels: C_in, C_out.
        emb_dim: width E of the embedding ``emb`` (B, E).
        periodic: per spatial axis, True where it wraps.
        kernel_size: per spatial axis (odd), or one int.
        dropout: dropout probability before ``conv2``.
        groups: GroupNorm groups (at most).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_dim: int,
        periodic: Sequence[bool],
        kernel_size: int | Sequence[int] = 3,
        dropout: float = 0.0,
        groups: int = 8,
    ) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = GeoConv(in_channels, out_channels, kernel_size, periodic)
        self.emb = nn.Linear(emb_dim, 2 * out_channels)
        self.norm2 = group_norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(GeoConv(out_channels, out_channels, kernel_size, periodic))
        self.skip: nn.Module = (
            nn.Identity() if in_channels == out_channels else GeoConv(in_channels, out_channels, 1, periodic)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, [D], H, W), emb (B, E) -> (B, C_out, [D], H, W)."""
        h = self.conv1(F.silu(self.norm1(x)))
        film = self.emb(F.silu(emb)).reshape(*emb.shape[:1], -1, *([1] * (x.dim() - 2)))
        scale, shift = film.chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class _Level(nn.Module):
    """A FiLM residual block, optionally followed by self-attention."""

    def __init__(self, block: FiLMResBlock, attention: Attention | None) -> None:
        super().__init__()
        self.block = block
        self.attention = attention

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.block(x, emb)
        return h if self.attention is None else self.attention(h)


class UNet(nn.Module):
    """Geometry-aware UNet denoiser for 2D (B, C, H, W) and 3D (B, C, D, H, W) fields.

    Args:
        in_channels: channels of the noisy state x.
        out_channels: channels of the output (usually ``in_channels``).
        periodic: per spatial axis ``([D], H, W)``, True where it wraps; 2 or 3 flags pick the
            2D or 3D network.
        cond_channels: channels of the optional ``spatial`` condition, concatenated to x.
        channels: width of each resolution level, finest first.
        factors: ``len(channels) - 1`` downsampling stages of per-axis factors aligned to the
            trailing axes (see :func:`simdiff.nets.autoencoder.stage_factors`).
        blocks: FiLM residual blocks per level on the encoder side (the decoder has
            ``blocks + 1``, one per skip connection).
        attention: per level, self-attention after each of its blocks; ``attention[-1]`` also
            puts attention in the middle block.
        heads: attention heads (at most; the largest count dividing the width is used).
        emb_dim: E, width of the noise/condition embedding (``self.emb_dim``).
        dropout: dropout in the residual blocks.
        kernel_size: kernel over H and W (odd).
        depth_kernel_size: kernel along D of the blocks of the 3D network (odd; 1 treats the
            levels separately in the blocks, while the down/up-samplers still span 3 cells).
        groups: GroupNorm groups (at most).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        periodic: Sequence[bool],
        *,
        cond_channels: int = 0,
        channels: Sequence[int] = (64, 128, 256),
        factors: Sequence[Sequence[int]] = ((2, 2), (2, 2)),
        blocks: int = 2,
        attention: Sequence[bool] = (False, False, True),
        heads: int = 4,
        emb_dim: int = 256,
        dropout: float = 0.0,
        kernel_size: int = 3,
        depth_kernel_size: int = 3,
        groups: int = 8,
    ) -> None:
        super().__init__()
        self.periodic = tuple(bool(p) for p in periodic)
        nd = len(self.periodic)
        if nd not in (2, 3):
            raise ValueError(f"UNet: periodic needs one flag per spatial axis (2 or 3), got {periodic}")
        channels = tuple(int(c) for c in channels)
        attention = tuple(bool(a) for a in attention)
        if not channels or min(channels) < 1:
            raise ValueError(f"UNet: channels must be a non-empty list of positive widths, got {channels}")
        if len(attention) != len(channels):
            raise ValueError(
                f"UNet: attention {list(attention)} needs one flag per level, len(channels) = {len(channels)}"
            )
        if len(factors) != len(channels) - 1:
            raise ValueError(
                f"UNet: factors {[list(f) for f in factors]} needs len(channels) - 1 = "
                f"{len(channels) - 1} stages for channels {list(channels)}"
            )
        if blocks < 1:
            raise ValueError(f"UNet: blocks must be >= 1, got {blocks}")
        self.factors = stage_factors(factors, nd)
        self.total_factors = total_factors(factors, nd)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.cond_channels = int(cond_channels)
        self.emb_dim = int(emb_dim)
        kernel = (int(depth_kernel_size),) * (nd - 2) + (int(kernel_size),) * 2
        # Samplers span 3 cells along depth whatever depth_kernel_size is, as in the autoencoder.
        sampler_kernel = (3,) * (nd - 2) + kernel[-2:]
        p = self.periodic

        def level(c_in: int, c_out: int, attn: bool) -> _Level:
            block = FiLMResBlock(c_in, c_out, self.emb_dim, p, kernel, dropout, groups)
            return _Level(block, Attention(c_out, heads, groups) if attn else None)

        self.embed = NoiseEmbedding(self.emb_dim)
        self.stem = GeoConv(self.in_channels + self.cond_channels, channels[0], kernel, p)
        skips = [channels[0]]
        ch = channels[0]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for i, width in enumerate(channels):
            stage = nn.ModuleList()
            for _ in range(blocks):
                stage.append(level(ch, width, attention[i]))
                ch = width
                skips.append(ch)
            self.down.append(stage)
            if i < len(channels) - 1:
                self.downsample.append(Downsample(ch, ch, self.factors[i], p))
                skips.append(ch)
        self.mid = nn.ModuleList([level(ch, ch, attention[-1]), level(ch, ch, False)])
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i in reversed(range(len(channels))):
            stage = nn.ModuleList()
            for _ in range(blocks + 1):
                stage.append(level(ch + skips.pop(), channels[i], attention[i]))
                ch = channels[i]
            self.up.append(stage)
            if i > 0:
                self.upsample.append(Upsample(ch, ch, self.factors[i - 1], p, sampler_kernel))
        self.norm = group_norm(ch, groups)
        self.out = _zero(GeoConv(ch, self.out_channels, kernel, p))

    @property
    def ndim(self) -> int:
        """Spatial axes: 2 or 3."""
        return len(self.periodic)

    def _check(
        self,
        x: torch.Tensor,
        c_noise: torch.Tensor,
        spatial: torch.Tensor | None,
        vector: torch.Tensor | None,
    ) -> None:
        """Raise ValueError naming the expected shape when an input does not fit the network."""
        dims = "D, H, W" if self.ndim == 3 else "H, W"
        if x.dim() != self.ndim + 2 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNet expects x (B, {self.in_channels}, {dims}), got {tuple(x.shape)}")
        b = x.shape[0]
        if c_noise.shape != (b,):
            raise ValueError(f"UNet: c_noise must have shape (B,) = ({b},), got {tuple(c_noise.shape)}")
        if self.cond_channels and spatial is None:
            raise ValueError(
                f"UNet was built with cond_channels={self.cond_channels} but no `spatial` condition was "
                f"given; pass spatial=(B, {self.cond_channels}, {dims})"
            )
        if not self.cond_channels and spatial is not None:
            raise ValueError(
                f"UNet got a `spatial` condition {tuple(spatial.shape)} but was built with cond_channels=0; "
                "set cond_channels to its channel count"
            )
        if spatial is not None and (
            spatial.shape[:2] != (b, self.cond_channels) or spatial.shape[2:] != x.shape[2:]
        ):
            raise ValueError(
                f"UNet: `spatial` must have shape (B, cond_channels, {dims}) = "
                f"{(b, self.cond_channels, *x.shape[2:])}, got {tuple(spatial.shape)}"
            )
        if vector is not None and vector.shape != (b, self.emb_dim):
            raise ValueError(
                f"UNet: `vector` must have shape (B, emb_dim) = ({b}, {self.emb_dim}), "
                f"got {tuple(vector.shape)}"
            )

    def forward(
        self,
        x: torch.Tensor,
        c_noise: torch.Tensor,
        *,
        spatial: torch.Tensor | None = None,
        vector: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Denoiser output ``F``.

        Args:
            x: (B, in_channels, [D], H, W), the preconditioned noisy state ``c_in x``.
            c_noise: (B,), EDM's ``ln(sigma) / 4``.
            spatial: (B, cond_channels, [D], H, W), concatenated to x at the input.
            vector: (B, emb_dim), added to the noise embedding.

        Returns:
            (B, out_channels, [D], H, W).
        """
        self._check(x, c_noise, spatial, vector)
        emb = self.embed(c_noise)
        if vector is not None:
            emb = emb + vector
        h = x if spatial is None else torch.cat([x, spatial.to(x.dtype)], dim=1)
        h, shape = pad_to_multiple(h, self.total_factors, self.periodic)
        h = self.stem(h)
        skips = [h]
        for i, stage in enumerate(self.down):
            for lvl in stage:
                h = lvl(h, emb)
                skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                skips.append(h)
        for lvl in self.mid:
            h = lvl(h, emb)
        for i, stage in enumerate(self.up):
            for lvl in stage:
                skip = skips.pop()
                h = lvl(torch.cat([h, skip.to(h.dtype)], dim=1), emb)
            if i < len(self.upsample):
                h = self.upsample[i](h)
        h = self.out(F.silu(self.norm(h)))
        return crop_to(h, shape)
