"""Geometry-aware padding: circular along periodic axes, edge replication along the others.

A field on a global longitude grid or in a periodic cell has no edge along its periodic axes,
so a convolution must see the cells on the far side as neighbours (circular padding); a
bounded axis (latitude, pressure level) has real edges, where the edge value is repeated. With
circular padding on every periodic axis a stack of convolutions commutes with rolls along
those axes, which is what keeps a seam from appearing at the dateline.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pad_axis(x: torch.Tensor, axis: int, before: int, after: int, periodic: bool) -> torch.Tensor:
    """Pad one axis of ``x`` by ``before``/``after`` cells, circularly or by edge replication.

    Args:
        x: any tensor; ``axis`` indexes it (negative counts from the end).
        periodic: wrap around (the cells before come from the far end) instead of repeating
            the edge cell.
    """
    if before == 0 and after == 0:
        return x
    n = x.shape[axis]
    if periodic:
        if before > n or after > n:
            raise ValueError(f"circular padding of {before}/{after} cells exceeds the axis length {n}")
        parts = [x.narrow(axis, n - before, before), x, x.narrow(axis, 0, after)]
    else:
        first = x.narrow(axis, 0, 1)
        last = x.narrow(axis, n - 1, 1)
        parts = [_repeat(first, axis, before), x, _repeat(last, axis, after)]
    return torch.cat(parts, dim=axis)


def _repeat(edge: torch.Tensor, axis: int, k: int) -> torch.Tensor:
    shape = list(edge.shape)
    shape[axis] = k
    return edge.expand(shape)


def geo_pad(x: torch.Tensor, pads: Sequence[tuple[int, int]], periodic: Sequence[bool]) -> torch.Tensor:
    """Pad the trailing spatial axes of ``x`` (B, C, [D], H, W) per axis.

    Args:
        x: (B, C, *spatial) with ``len(spatial) == len(pads) == len(periodic)``.
        pads: ``(before, after)`` cells per spatial axis, in axis order.
        periodic: per spatial axis, True for circular padding.

    Returns:
        (B, C, *padded spatial).
    """
    nd = len(periodic)
    if len(pads) != nd or x.dim() != nd + 2:
        raise ValueError(f"geo_pad: x {tuple(x.shape)} with {len(pads)} pads and {nd} periodic flags")
    for i, ((lo, hi), wrap) in enumerate(zip(pads, periodic, strict=True)):
        x = pad_axis(x, 2 + i, lo, hi, wrap)
    return x


def pad_to_multiple(
    x: torch.Tensor, multiple: Sequence[int], periodic: Sequence[bool]
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Pad each spatial axis at its end up to a multiple of ``multiple``; return the old shape.

    Periodic axes are padded circularly, bounded ones by edge replication; crop back with
    :func:`crop_to`. x: (B, C, *spatial) -> (B, C, *padded).
    """
    shape = tuple(int(n) for n in x.shape[2:])
    pads = [(0, (-n) % m) for n, m in zip(shape, multiple, strict=True)]
    return geo_pad(x, pads, periodic), shape


def crop_to(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The leading ``shape`` cells of each spatial axis of x (B, C, *spatial)."""
    index = (slice(None), slice(None), *(slice(0, int(n)) for n in shape))
    return x[index]

