"""Run a 2D network on 3D fields by folding a short depth axis into the channels.

A latent with 2-3 pressure levels (or layers) is cheaper and often better served by a 2D
network that sees the levels as channels, as most global weather models treat levels, than by
3D convolutions whose depth kernel mostly covers padding. ``DepthAsChannels`` reshapes
``(B, C, D, H, W) -> (B, C*D, H, W)`` (channel-major: channel c, level d -> c*D + d) for ``x``
and the ``spatial`` condition, calls the 2D net and unfolds its output.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def fold(x: torch.Tensor) -> torch.Tensor:
    """(B, C, D, H, W) -> (B, C*D, H, W)."""
    return x.flatten(1, 2)


def unfold(x: torch.Tensor, depth: int) -> torch.Tensor:
    """(B, C*D, H, W) -> (B, C, D, H, W)."""
    return x.unflatten(1, (x.shape[1] // depth, depth))


class DepthAsChannels(nn.Module):
    """``net`` (a 2D ``F(x, c_noise, spatial=, vector=)``) applied to (B, C, D, H, W) fields.

    Args:
        net: built for ``C*D`` input/output channels and ``C_s*D`` condition channels.
        depth: D.
    """

    def __init__(self, net: nn.Module, depth: int) -> None:
        super().__init__()
        self.net = net
        self.depth = int(depth)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, **cond: Any) -> torch.Tensor:
        if x.ndim != 5 or x.shape[2] != self.depth:
            raise ValueError(f"DepthAsChannels: expected (B, C, {self.depth}, H, W), got {tuple(x.shape)}")
        if cond.get("spatial") is not None:
            cond = {**cond, "spatial": fold(cond["spatial"])}
        return unfold(self.net(fold(x), c_noise, **cond), self.depth)
