"""Gaussian noise drawn row by row: row ``b`` of a batch comes from generator ``b`` alone.

A sampler that draws its noise through :func:`randn_rows` with one generator per row gives
each row the same noise whatever other rows share its batch, so an ensemble member is
reproducible on its own (batch size, batch composition and rank do not matter).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

#: What a sampler's ``generator`` argument may be: none (the global stream), one stream for
#: the whole batch, or one stream per leading row.
Generators = torch.Generator | Sequence[torch.Generator] | None


def randn_rows(
    shape: Sequence[int],
    generator: Generators,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Standard normal noise of ``shape`` ``(B, ...)``.

    Args:
        shape: ``(B, ...)``.
        generator: None (torch's default stream), one ``torch.Generator`` for the whole tensor,
            or a sequence of ``B`` generators: row ``b`` is drawn from ``generator[b]`` alone,
            so it does not depend on the other rows.
        dtype, device: of the result (each generator must live on ``device``).

    Returns:
        ``(B, ...)`` tensor of i.i.d. N(0, 1) values.

    Raises:
        ValueError: a sequence whose length is not ``B``.
    """
    shape = tuple(int(n) for n in shape)
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, dtype=dtype, device=device)
    generators = list(generator)
    if not shape or len(generators) != shape[0]:
        raise ValueError(
            f"{len(generators)} generators for noise of shape {shape}: give one generator per "
            f"leading row ({shape[0] if shape else 'no rows'}), a single generator, or None"
        )
    if not generators:
        return torch.empty(shape, dtype=dtype, device=device)
    return torch.stack(
        [torch.randn(shape[1:], generator=g, dtype=dtype, device=device) for g in generators]
    )
