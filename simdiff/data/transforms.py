"""Per-variable transforms applied before normalisation, and their exact inverses.

Transforms act on anything numpy ufuncs accept (numpy, dask, xarray), so the same object
serves out-of-core statistics in ``prepare`` and de-normalisation at the output boundary.
Each transform describes itself with :meth:`spec` (``_target_`` + keyword arguments), which
is what the training store records and :func:`from_spec` rebuilds without Hydra, for the
classes in :mod:`simdiff.base.registry`'s allowlist only (checked before any import).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np

from simdiff.base.errors import DataError
from simdiff.base.registry import build_stored

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


@runtime_checkable
class Domain(Protocol):
    """A transform whose inverse maps onto part of the real line (optional).

    ``domain()`` is ``(lo, hi)`` with None for an open side: every value the inverse returns
    lies in it, whatever the model produced, so generated fields keep the variable's physical
    domain by construction (precipitation and densities are never negative).
    """

    def domain(self) -> tuple[float | None, float | None]: ...


def domain_of(transform: object) -> tuple[float | None, float | None]:
    """``(lo, hi)`` of a transform's inverse; ``(None, None)`` (unbounded) for one without a domain."""
    return transform.domain() if isinstance(transform, Domain) else (None, None)


def censored_below(transform: object) -> float | None:
    """The largest transformed value the inverse maps onto the lower bound (a dry cell):
    ``forward(zero_below)`` for :class:`Log1p` (0 without it), ``min`` for :class:`Clip`; None
    for a variable without a lower bound. Found from the public ``forward``/``inverse`` by
    bisection (to ~1e-12 relative), so any :class:`Domain` transform has it."""
    lo = domain_of(transform)[0]
    if lo is None:
        return None
    inverse = transform.inverse  # type: ignore[attr-defined]
    low = float(transform.forward(np.float64(lo)))  # type: ignore[attr-defined]
    if not float(inverse(np.float64(low))) <= lo:
        raise ValueError(f"{transform}: inverse(forward(lower bound)) is above the bound")
    step = max(abs(low), 1.0)
    high = low + step
    while float(inverse(np.float64(high))) <= lo:
        step *= 2.0
        high = low + step
        if step > 1e12:
            raise ValueError(f"{transform}: the inverse maps every value onto its lower bound")
    for _ in range(200):
        mid = 0.5 * (low + high)
        if mid in (low, high):
            break
        low, high = (mid, high) if float(inverse(np.float64(mid))) <= lo else (low, mid)
    return low


@dataclass(frozen=True)
class Identity:
    """x -> x: an unbounded variable (temperature, geopotential, wind components)."""

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

    The inverse is censored onto the variable's domain ``[0, inf)``: model values below
    ``log1p(zero_below / scale)`` come back as exactly 0, the rest as ``scale * expm1(y)``.
    So generated fields are non-negative by construction, and a dry cell is exactly 0 as in
    the data: with ``zero_below`` at half the data's resolution (the smallest non-zero value a
    gauge or radar reports), a real field's round trip through float32 normalisation is exact
    at its zeros and its wet values alike, and a generated value is dry where the model puts
    it nearer to dry than to the smallest measurable amount (a censored latent variable, the
    classic model of intermittent rain: e.g. Bardossy & Plate 1992, Water Resour. Res. 28, 1247).
    """

    scale: float = 1.0
    zero_below: float = 0.0

    def __post_init__(self) -> None:
        if not self.scale > 0:
            raise ValueError(f"Log1p.scale must be > 0, got {self.scale}")
        if not self.zero_below >= 0:
            raise ValueError(f"Log1p.zero_below must be >= 0 (a physical amount), got {self.zero_below}")

    def forward(self, x: A) -> A:
        return np.log1p(x / self.scale)  # type: ignore[operator,return-value]

    def inverse(self, y: A) -> A:
        x = np.maximum(np.expm1(y), 0) * self.scale  # type: ignore[operator]
        return x if self.zero_below == 0 else x * (x >= self.zero_below)  # type: ignore[operator,return-value]

    def invalid(self, x: A) -> A:
        """True where ``x`` is outside the domain (``x < 0``); ``prepare`` reports these."""
        return x < 0  # type: ignore[operator,return-value]

    def domain(self) -> tuple[float | None, float | None]:
        return (0.0, None)

    def spec(self) -> dict[str, Any]:
        return _spec(self)


@dataclass(frozen=True)
class Clip:
    """x -> x on ``[min, max]``: a bounded (or one-sided) variable without a change of scale.

    The inverse is censored onto ``[min, max]`` (None: open), so generated values stay in the
    variable's physical domain (a fraction in [0, 1], a non-negative speed) by construction;
    values outside it in the data are invalid, and ``prepare`` reports them.
    """

    min: float | None = None
    max: float | None = None

    def __post_init__(self) -> None:
        if self.min is not None and self.max is not None and not self.min < self.max:
            raise ValueError(f"Clip needs min < max, got min={self.min}, max={self.max}")

    def forward(self, x: A) -> A:
        return x

    def inverse(self, y: A) -> A:
        if self.min is not None:
            y = np.maximum(y, self.min)  # type: ignore[call-overload]
        if self.max is not None:
            y = np.minimum(y, self.max)  # type: ignore[call-overload]
        return y

    def invalid(self, x: A) -> A:
        """True where ``x`` lies outside ``[min, max]``."""
        lo = x < (self.min if self.min is not None else -np.inf)  # type: ignore[operator]
        return lo | (x > self.max) if self.max is not None else lo  # type: ignore[operator,return-value]

    def domain(self) -> tuple[float | None, float | None]:
        return (self.min, self.max)

    def spec(self) -> dict[str, Any]:
        return _spec(self)


def from_spec(
    spec: dict[str, Any], *, source: str = "a stored transform spec", key: str = "transforms"
) -> Transform:
    """Rebuild a transform from its :meth:`Transform.spec` (``_target_`` + kwargs).

    The ``_target_`` must be allowed by :mod:`simdiff.base.registry` (checked before anything
    is imported); ``source`` (the file) and ``key`` (e.g. ``transforms.pr``) name it in the
    DataError otherwise.
    """
    obj = build_stored(spec, source=source, key=key)
    if not isinstance(obj, Transform):
        raise DataError(f"{source}: {key} = {spec!r} is not a Transform (no forward/inverse/spec); "
                        "regenerate the store with `simdiff prepare`")
    return obj
