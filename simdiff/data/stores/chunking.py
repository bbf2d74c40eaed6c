"""Chunk choice for the training store: whole samples per chunk, sized for random reads.

The loader reads random samples, so a chunk should hold whole samples (all channels, levels
and the full grid) and be small enough that reading one sample does not decompress many
others, yet large enough that per-chunk overhead (a file open, a codec call) stays small.
"""

from __future__ import annotations

import math

MB = 1_000_000
#: Blocks a task holds besides the variables' parts and their join (see :func:`task_mb`).
TASK_EXTRA_BLOCKS = 4


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


def task_mb(block: int, sample_bytes: int, n_variables: int) -> float:
    """Peak memory of one task of prepare's passes, MB, for blocks of ``block`` samples of
    ``sample_bytes`` (float32, one variable) and ``n_variables`` variables.

    The write pass joins the variables' normalised blocks into one block of all channels, holding
    the parts and the whole (``2 x n_variables`` blocks), while a block is read and normalised
    beside them (the raw block and its temporaries: ``TASK_EXTRA_BLOCKS``). An upper bound: on
    two variables of 721 x 1440 (``benchmarks/bench_prepare_rss.py --gb 0.3 --workers 2``), a
    single-threaded worker grew by 210 MB over its idle ~165 MB with 29 MB blocks (estimate 233 MB)
    and by 360 MB with 62 MB blocks (estimate 498 MB).
    """
    return (2 * n_variables + TASK_EXTRA_BLOCKS) * block * sample_bytes / MB
