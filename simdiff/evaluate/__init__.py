"""Evaluation: metrics (xarray in, xarray out), spectra, plots and reports.

Layering: evaluate may import ``simdiff.data``; only ``simdiff.cli`` imports evaluate.
"""

from simdiff.evaluate.calibration import rank_histogram, spread_skill
from simdiff.evaluate.crps import crps
from simdiff.evaluate.distribution import quantiles, wasserstein1
from simdiff.evaluate.energy_score import energy_score
from simdiff.evaluate.memorisation import memorisation
from simdiff.evaluate.reconstruction import reconstruction_report
from simdiff.evaluate.spectra import (
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
    "reconstruction_report",
    "spectrum_ratio_low",
    "spread_skill",
    "wasserstein1",
    "windowed_spectrum",
    "zonal_spectrum",
]
