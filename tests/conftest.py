"""Shared fixtures: the real reference data in ../shared/data, and tiny synthetic fields."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``$SIMDIFF_SHARED_DATA`` or ``../shared/data`` beside the repository."""
    return Path(os.environ.get("SIMDIFF_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared reference data folder; tests that need it skip when it is absent."""
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"shared reference data not found at {path} (set SIMDIFF_SHARED_DATA)")
    return path


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked ``longest`` first: pytest-xdist hands tests out in collection order, so a
    test of several minutes collected late runs alone at the end of the suite."""
    items.sort(key=lambda item: item.get_closest_marker("longest") is None)
