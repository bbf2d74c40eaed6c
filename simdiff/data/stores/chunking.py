"""Chunk choice for the training store: whole samples per chunk, sized for random reads.

The loader reads random samples, so a chunk should hold whole samples (all channels, levels
and the full grid) and be small enough that reading one sample does not decompress many
others, yet large enough that per-chunk overhead (a file open, a codec call) stays small.
"""

from __future__ import annotations

import math

MB = 1_000_000


def samples_per_chunk(sample_bytes: int, target_mb: float) -> int:
    """Samples ``k`` per chunk so that a chunk of ``k`` whole samples is about ``target_mb``.

    ``k = max(1, floor(target_mb * 1e6 / sample_bytes))``: a sample larger than the target is
    one chunk on its own (never split across chunks).
    """
    if sample_bytes <= 0:
        raise ValueError(f"sample_bytes must be > 0, got {sample_bytes}")
    if not target_mb > 0:
        raise ValueError(f"target_mb must be > 0, got {target_mb}")
    return max(1, math.floor(target_mb * MB / sample_bytes))


def work_samples(store_k: int, sample_bytes: int, work_mb: float) -> int:
    """Samples per dask block of the processing passes: a multiple of ``store_k`` near ``work_mb``.

    Dask blocks must cover whole store chunks for the write, and larger blocks mean fewer
    tasks; peak memory grows with block size times the number of worker threads.
    """
    return store_k * max(1, math.floor(work_mb * MB / (store_k * sample_bytes)))
