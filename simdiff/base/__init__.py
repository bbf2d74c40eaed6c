"""Base: what every layer uses, importing nothing else of simdiff.

:class:`~simdiff.base.errors.DataError` (the user-facing error), atomic file writes,
provenance records and the allowlist of ``_target_``s (:mod:`simdiff.base.registry`).
"""
