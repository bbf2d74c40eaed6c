"""Fixtures shared by the CLI tests: one tiny trained run per session."""

from __future__ import annotations

from pathlib import Path

import pytest
from clirun import FAST, simdiff


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> tuple[Path, tuple[str, ...]]:
    """A tiny QG run (prepare, train-autoencoder, encode, train-diffusion; ``FAST``), built once per
    session, and the overrides it was built with. Tests copy it before they change anything in it."""
    tmp = tmp_path_factory.mktemp("tiny")
    run_dir = tmp / "run"
    common = (*FAST, f"cache_dir={tmp / 'cache'}")
    for stage in ("prepare", "train-autoencoder", "encode", "train-diffusion"):
        out = simdiff(stage, f"run_dir={run_dir}", *common)
        assert out.returncode == 0, out.stderr[-4000:]
    return run_dir, common
