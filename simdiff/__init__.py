"""simdiff: latent diffusion for scientific simulation data.

Labelled xarray in, labelled xarray out. See DESIGN in the README for the data flow:
adapter -> Field -> train.zarr -> autoencoder -> latents.zarr -> diffusion -> outputs.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("simdiff")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__", "open_run"]


def __getattr__(name: str):
    """``simdiff.open_run`` without importing torch on ``import simdiff``."""
    if name == "open_run":
        from simdiff.runs.api import open_run

        return open_run
    raise AttributeError(f"module 'simdiff' has no attribute {name!r}")
