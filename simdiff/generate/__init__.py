"""Generation: counter-keyed member noise and the CF output store that ranks write in place.

``noise``: one random stream per (seed, init, member, lead step), whatever the batch or rank.
``template``: the empty store (coordinates, CF attributes) for a training store.
``output``: the ensemble store in physical units (zarr or netCDF, CF-1.10), written chunk by
chunk from any number of ranks into a partial store, resumable, published atomically.
"""

from simdiff.generate.noise import SAMPLE_INIT, member_generator, member_generators, member_seed
from simdiff.generate.output import (
    create_partial,
    finalize,
    git_commit,
    is_complete,
    missing,
    output_attrs,
    partial_path,
    write_block,
)
from simdiff.generate.template import forecast_template, sample_template

__all__ = [
    "SAMPLE_INIT",
    "create_partial",
    "finalize",
    "forecast_template",
    "git_commit",
    "is_complete",
    "member_generator",
    "member_generators",
    "member_seed",
    "missing",
    "output_attrs",
    "partial_path",
    "sample_template",
    "write_block",
]
