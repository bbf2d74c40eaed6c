"""Metrics: probabilistic and distributional scores, spectra (xarray in, xarray out).

Pure numpy/scipy/xarray: no simdiff import, so every layer above (``lit`` for validation
scores, ``evaluate`` for the report, benchmarks) may use them. The report, its baselines and
its plots stay in :mod:`simdiff.evaluate`.
"""

from simdiff.metrics.calibration import rank_histogram, spread_skill
from simdiff.metrics.crps import crps
from simdiff.metrics.distribution import quantiles, wasserstein1
from simdiff.metrics.energy_score import energy_score
from simdiff.metrics.memorisation import memorisation
from simdiff.metrics.spectra import (
    field_spectrum,
    isotropic_spectrum,
    spectrum_ratio_low,
    windowed_spectrum,
    zonal_spectrum,
)

__all__ = [
    "crps",
    "energy_score",
    "field_spectrum",
    "isotropic_spectrum",
    "memorisation",
    "quantiles",
    "rank_histogram",
    "spectrum_ratio_low",
    "spread_skill",
    "wasserstein1",
    "windowed_spectrum",
    "zonal_spectrum",
]
