"""Random crops ("patches") of large fields, for training fully convolutional nets on them.

LDCast (Leinonen et al. 2023) and CorrDiff (Mardani et al. 2024) train on random crops of
fields too large to fit a useful batch, and run the same fully convolutional nets on the full
field afterwards. Here a patch is ``patch`` cells along the trailing spatial axes of a field
``([D], Y, X)``; leading axes the patch does not name are kept whole. A crop is given by its
origin, one start index per spatial axis:

* along a **periodic** axis (global longitude, a periodic cell) the origin is any cell and
  the crop wraps across the seam: cells ``(o + i) mod n``, exactly ``np.roll(x, -o)[:p]``;
* along a **bounded** axis the crop lies inside: ``o`` in ``[0, n - p]``;
* an axis the patch spans whole has origin 0.

:func:`crop` takes the same crop of anything laid out over the field's grid (the states, the
validity mask, the cell weights, static condition fields), so a loss or a condition always sees
the crop's own mask and weights. Origins come from a numpy ``Generator`` the caller seeds, so
crops are reproducible (the loader draws them from its own seeded streams).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from simdiff.base.errors import DataError


def full_patch(patch: Sequence[int] | None, shape: Sequence[int]) -> tuple[int, ...] | None:
    """``patch`` aligned to the trailing axes of ``shape``, leading axes whole; None stays None.

    ``full_patch([64, 64], (3, 128, 256)) == (3, 64, 64)``.
    """
    if patch is None:
        return None
    patch = tuple(int(p) for p in patch)
    if not 1 <= len(patch) <= len(shape):
        raise ValueError(f"patch {list(patch)} needs 1..{len(shape)} sizes for a field {tuple(shape)}")
    return tuple(int(n) for n in shape[: len(shape) - len(patch)]) + patch


def check_patch(
    patch: Sequence[int] | None,
    shape: Sequence[int],
    factors: Sequence[int],
    key: str,
) -> tuple[int, ...] | None:
    """Validate a configured patch for a field ``shape`` and a net with total ``factors``.

    Args:
        patch: sizes for the trailing spatial axes, or None (no cropping).
        shape: the field's spatial shape ``([D], Y, X)``.
        factors: the net's total down-sampling factor per spatial axis (aligned to ``shape``).
        key: the config key, named in the message (e.g. ``autoencoder.patch``).

    Returns:
        The full patch shape ``([D], Y, X)`` or None.

    Raises:
        DataError: a size below 1, above the field, or not a multiple of the net's factor
            (the crop would be padded inside the net, and its latents would not tile the
            field's), naming the key, the value and the nearest valid sizes.
    """
    if patch is None:
        return None
    shape = tuple(int(n) for n in shape)
    raw = list(patch)
    if not 1 <= len(raw) <= len(shape) or any(int(p) != p for p in raw):
        raise DataError(f"{key}={raw}: give 1..{len(shape)} integer sizes for the trailing axes of the "
                        f"field {list(shape)} (e.g. {key}=[{shape[-2] // 2},{shape[-1] // 2}]), or null")
    full = full_patch(raw, shape)
    assert full is not None
    factors = tuple(int(f) for f in factors)
    for axis, (p, n, f) in enumerate(zip(full, shape, factors, strict=True)):
        if not 1 <= p <= n:
            raise DataError(f"{key}={raw}: size {p} along spatial axis {axis} is outside 1..{n}, the "
                            f"field's size; use a size <= {n} (or null to train on whole fields)")
        if p % f and p != n:
            down, up = p // f * f, -(-p // f) * f
            fix = " or ".join(str(v) for v in (down, up) if 0 < v <= n)
            raise DataError(f"{key}={raw}: size {p} along spatial axis {axis} is not a multiple of the "
                            f"net's total down-sampling factor {f} there; use {fix}")
    return full


def patch_origins(
    rng: np.random.Generator,
    n: int,
    shape: Sequence[int],
    patch: Sequence[int],
    periodic: Sequence[bool],
) -> np.ndarray:
    """(n, ndim) int64 crop origins, uniform over the crops the geometry allows.

    Args:
        rng: the random stream (axes are drawn in order, one array each).
        n: number of crops.
        shape, patch: the field's and the crop's spatial shapes ``([D], Y, X)``.
        periodic: per axis, True when the crop may wrap across the seam.
    """
    cols = []
    for size, p, wrap in zip(shape, patch, periodic, strict=True):
        if p >= size:
            cols.append(np.zeros(n, dtype=np.int64))
        else:
            cols.append(rng.integers(0, size if wrap else size - p + 1, size=n, dtype=np.int64))
    return np.stack(cols, axis=1) if cols else np.zeros((n, 0), dtype=np.int64)


def crop(x: torch.Tensor, origin: torch.Tensor, patch: Sequence[int]) -> torch.Tensor:
    """Per-row crops of ``x`` (B, ..., *spatial) at ``origin`` (B, ndim): (B, ..., *patch).

    Cells ``(origin + i) mod n`` along each axis, so a crop of a periodic axis wraps; origins
    drawn by :func:`patch_origins` keep bounded crops inside. For one field shared by every
    row (mask, weights, static fields ``(..., *spatial)``), pass ``field.expand(B, *field.shape)``.
    """
    nd = len(patch)
    if origin.ndim != 2 or origin.shape[1] != nd or origin.shape[0] != x.shape[0]:
        raise ValueError(f"crop: origin {tuple(origin.shape)} must be (B={x.shape[0]}, {nd})")
    origin = origin.to(device=x.device, dtype=torch.int64)
    out = x
    for a, p in enumerate(int(v) for v in patch):
        axis = x.ndim - nd + a
        size = x.shape[axis]
        if p == size and not bool(origin[:, a].any()):
            continue  # spanned whole, from the start
        index = (origin[:, a : a + 1] + torch.arange(p, device=x.device)) % size  # (B, p)
        view = [1] * out.ndim
        view[0], view[axis] = x.shape[0], p
        expanded = [*out.shape]
        expanded[axis] = p
        out = torch.gather(out, axis, index.reshape(view).expand(expanded))
    return out


def crop_shared(
    field: torch.Tensor, origin: torch.Tensor | None, patch: Sequence[int] | None
) -> torch.Tensor:
    """``field`` (..., *spatial), one for all rows, cropped per row: (B, ..., *patch).

    With no ``origin`` (whole fields) it returns ``field`` itself, unbatched.
    """
    if origin is None or patch is None:
        return field
    return crop(field.expand(origin.shape[0], *field.shape), origin, patch)
