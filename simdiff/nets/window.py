"""A window of consecutive states as the depth axis: the layout of a spatiotemporal autoencoder.

With ``autoencoder.window = k`` one latent encodes ``k`` consecutive states (LDCast's
spatiotemporal autoencoder; Leinonen et al. 2023), and the diffusion model forecasts the next
window from the previous ones. A window of states ``(B, k, C, [D], H, W)`` is laid out as one
field ``(B, C, k*D, H, W)`` (or ``(B, C, k, H, W)`` for a 2D field): time-major along the depth
axis, state ``j`` level ``d`` at ``j*D + d``. The autoencoder is then an ordinary 3D (or
depth-folded) network over that field; its cell weights and mask are the state's, repeated per
state. The combined axis never wraps.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def stack_window(states: torch.Tensor, has_depth: bool) -> torch.Tensor:
    """(B, k, C, [D], H, W) -> (B, C, k*D, H, W) (with depth) or (B, C, k, H, W) (without)."""
    if has_depth:
        b, k, c, d = states.shape[:4]
        return states.transpose(1, 2).reshape(b, c, k * d, *states.shape[4:])
    return states.transpose(1, 2)


def unstack_window(x: torch.Tensor, window: int, has_depth: bool) -> torch.Tensor:
    """:func:`stack_window`'s inverse: (B, C, k*D, H, W) -> (B, k, C, [D], H, W)."""
    if has_depth:
        b, c, kd = x.shape[:3]
        return x.reshape(b, c, window, kd // window, *x.shape[3:]).transpose(1, 2)
    return x.transpose(1, 2)


def window_states(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """A loader batch's window, oldest first: ``previous`` (B, k-1, ...) then ``target`` (B, ...)."""
    target = batch["target"][:, None]
    previous = batch.get("previous")
    return target if previous is None else torch.cat([previous, target], dim=1)


def window_cells(cells: torch.Tensor | np.ndarray, window: int, has_depth: bool) -> Any:
    """Per-cell weights or mask ``([D], H, W)`` of one state -> ``(k*D, H, W)`` or ``(k, H, W)``."""
    if window == 1:
        return cells
    if isinstance(cells, np.ndarray):
        return np.concatenate([cells] * window, axis=0) if has_depth else np.stack([cells] * window)
    return torch.cat([cells] * window, dim=0) if has_depth else torch.stack([cells] * window)


def windowed_shape(shape: Any, window: int) -> list[int]:
    """A state's spatial shape ``([D], H, W)`` -> its window's ``(k*D, H, W)`` or ``(k, H, W)``."""
    shape = [int(n) for n in shape]
    if window == 1:
        return shape
    return [window * shape[0], *shape[1:]] if len(shape) == 3 else [window, *shape]


def window_signature(signature: dict[str, Any], window: int) -> dict[str, Any]:
    """The data signature of one state -> that of a window of ``window`` states (the field the net sees)."""
    if window == 1:
        return signature
    periodic = [bool(p) for p in signature["periodic"]]
    periodic = [False, *periodic[1:]] if len(periodic) == 3 else [False, *periodic]
    return {**signature, "spatial_shape": windowed_shape(signature["spatial_shape"], window),
            "periodic": periodic}


def window_starts(run: np.ndarray, indices: np.ndarray, window: int) -> np.ndarray:
    """For each state ``indices[i]``, the first state of the window that reconstructs it when a
    sequence is encoded window by window: consecutive windows from its run's start (``run``: (S,)
    contiguous-run id), the last one moved back to end at the run's end.

    Raises:
        ValueError: a state's run is shorter than ``window``.
    """
    run = np.asarray(run)
    change = np.flatnonzero(np.diff(run) != 0) + 1
    starts, ends = np.r_[0, change], np.r_[change, len(run)]
    which = np.searchsorted(starts, indices, side="right") - 1
    r0, r1 = starts[which], ends[which]
    if np.any(r1 - r0 < window):
        short = int(indices[np.flatnonzero(r1 - r0 < window)[0]])
        raise ValueError(f"state {short} lies in a run of {int((r1 - r0).min())} consecutive samples, "
                         f"shorter than the autoencoder's window of {window}")
    return np.minimum(r0 + (indices - r0) // window * window, r1 - window)
