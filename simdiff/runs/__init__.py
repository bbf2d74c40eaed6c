"""A run as a library: its layout (:class:`RunDir`), its trained models, the generation modes,
the output runner every generator shares, scoring, and the Python API (:func:`open_run`).

Between the stages' building blocks (generate, evaluate, lit) and the command line (cli):
Hydra-free, so a notebook opens a trained run with ``simdiff.open_run(path)``.
"""

from simdiff.runs.layout import RunDir

__all__ = ["RunDir"]
