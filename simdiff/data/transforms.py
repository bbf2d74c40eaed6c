"""Per-variable transforms applied before normalisation, and their exact inverses.

Transforms act on anything numpy ufuncs accept (numpy, dask, xarray), so the same object
serves out-of-core statistics in ``prepare`` and de-normalisation at the output boundary.
Each transform describes itself with :meth:`spec` (``_target_`` + keyword arguments), which
is what the training store records and :func:`from_spec` rebuilds without Hydra, for the
classes in :mod:`simdiff.data.registry`'s allowlist only (checked before any import).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np

from simdiff.data.errors import DataError
from simdiff.data.registry import build_stored

A = TypeVar("A")


@runtime_checkable
class Transform(Protocol):
    """An invertible, elementwise map applied to one variable before normalisation."""

    def forward(self, x: A) -> A: ...

    def inverse(self, y: A) -> A: ...

    def spec(self) -> dict[str, Any]: ...


@runtime_checkable
class Bounded(Protocol):
    """A transform defined on part of the real line only (optional; e.g. Log1p needs x >= 0)."""

    def invalid(self, x: A) -> A:
        """Boolean array, True where ``x`` is outside the transform's domain."""
        ...


def _spec(obj: object) -> dict[str, Any]:
    cls = type(obj)
    return {"_target_": f"{cls.__module__}.{cls.__qualname__}", **asdict(obj)}  # type: ignore[call-overload]


@dataclass(frozen=True)
class Identity:
    """x -> x."""

    def forward(self, x: A) -> A:
        return x

    def inverse(self, y: A) -> A:
        return y

    def spec(self) -> dict[str, Any]:
        return _spec(self)


@dataclass(frozen=True)
class Log1p:
    """x -> log(1 + x / scale), for zero-inflated, heavy-tailed non-negative fields.

    ``scale`` sets where the map turns from linear to logarithmic: about a typical
    non-zero value (e.g. 1e-4 kg m-2 s-1 for precipitation flux, 1e-3 e/bohr^3 for
    densities). Negative inputs are invalid; ``prepare`` reports them instead of
    clipping them silently.
    """

    scale: float = 1.0

    def __post_init__(self) -> None:
        if not self.scale > 0:
            raise ValueError(f"Log1p.scale must be > 0, got {self.scale}")

    def forward(self, x: A) -> A:
        return np.log1p(x / self.scale)  # type: ignore[operator,return-value]

    def inverse(self, y: A) -> A:
        return np.expm1(y) * self.scale  # type: ignore[operator,return-value]

    def invalid(self, x: A) -> A:
        """True where ``x`` is outside the domain (``x < 0``); ``prepare`` reports these."""
        return x < 0  # type: ignore[operator,return-value]

    def spec(self) -> dict[str, Any]:
        return _spec(self)


def from_spec(
    spec: dict[str, Any], *, source: str = "a stored transform spec", key: str = "transforms"
) -> Transform:
    """Rebuild a transform from its :meth:`Transform.spec` (``_target_`` + kwargs).

    The ``_target_`` must be allowed by :mod:`simdiff.data.registry` (checked before anything
    is imported); ``source`` (the file) and ``key`` (e.g. ``transforms.pr``) name it in the
    DataError otherwise.
    """
    obj = build_stored(spec, source=source, key=key)
    if not isinstance(obj, Transform):
        raise DataError(f"{source}: {key} = {spec!r} is not a Transform (no forward/inverse/spec); "
                        "regenerate the store with `simdiff prepare`")
    return obj
