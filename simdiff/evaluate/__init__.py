"""Evaluation: the reports (forecast/ensemble and reconstruction), their baselines and plots.

The scores themselves live in :mod:`simdiff.metrics`. Layering: evaluate may import
``simdiff.metrics``, ``simdiff.data`` and ``simdiff.base``; only the top (``simdiff.cli``)
imports evaluate.
"""

from simdiff.evaluate.reconstruction import reconstruction_report

__all__ = ["reconstruction_report"]
