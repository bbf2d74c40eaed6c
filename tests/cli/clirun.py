"""Running the ``simdiff`` console entry point from CLI tests: to completion, or killed midway."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from simdiff.generate.output import partial_path

ENTRY = [sys.executable, "-m", "simdiff.cli.main"]
#: Overrides of the tiny trained run (tests/cli/conftest.py ``tiny_run``): debug=tiny, one epoch each.
FAST = ("debug=tiny", "debug.ae_max_epochs=1", "debug.dm_max_epochs=1")


def simdiff(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run ``simdiff ARGS`` in a fresh interpreter and capture its output."""
    return subprocess.run([*ENTRY, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


def kill_when(args: list[str], ready: Callable[[], bool], env: dict[str, str] | None = None,
              after: float = 0.0, timeout: float = 300) -> int | None:
    """Start ``simdiff ARGS``, SIGKILL it ``after`` seconds once ``ready()`` (or after ``timeout`` s).

    Returns the exit code it had already ended with, or None when it was killed.
    """
    proc = subprocess.Popen([*ENTRY, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None and not ready():
        time.sleep(0.05)
    time.sleep(after)
    ended = proc.poll()
    if ended is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return ended


def kill_midway(args: list[str], target: Path, left: Callable[[Path], int], total: int, kill_at: int) -> None:
    """Start ``simdiff ARGS`` writing ``target`` and SIGKILL it once ``0 < left(target) <= kill_at``
    units (blocks, samples) of ``total`` are still to write (or after 300 s)."""

    def ready() -> bool:
        if not partial_path(target).exists():
            return False
        try:
            n = left(target)
        except Exception:  # the skeleton is being created
            n = total
        return 0 < n <= kill_at

    kill_when(args, ready)
