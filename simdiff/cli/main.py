"""The ``simdiff`` console script: ``simdiff SUB-COMMAND [hydra overrides]``.

This module imports the sub-commands (Hydra, torch, Lightning) only when :func:`main` runs:
worker processes started with multiprocessing's spawn (``prepare/cluster=local``'s dask workers)
import the main module again, and each would otherwise carry ~340 MB of libraries it never uses
(tests/cli/test_cli.py checks it).
"""

from __future__ import annotations

import os
import sys

from simdiff import __version__

SUBCOMMAND_ENV = "SIMDIFF_SUBCOMMAND"
USAGE = """usage: simdiff SUB-COMMAND run_dir=DIR [key=value ...] [-m]

Latent diffusion for scientific simulation data. Every sub-command is a Hydra app over
one config tree: pass overrides as key=value, `-m` for a multirun sweep, `--help` after a
sub-command for its config, `debug=tiny` to finish in seconds on a CPU.

sub-commands:
{rows}
  {run:<18} every stage in turn: the main job (default data: the built-in QG simulator)

example:
  simdiff run run_dir=runs/qg
  simdiff prepare run_dir=runs/sst data=ersst
"""


def usage() -> str:
    from simdiff.cli.stages import STAGES

    rows = "\n".join(f"  {s.name:<18} {s.help}" for s in STAGES)
    return USAGE.format(rows=rows, run="run")


def main(argv: list[str] | None = None) -> None:
    """Dispatch to the sub-command's Hydra app."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        sys.exit(0 if argv else 2)
    if argv[0] == "--version":
        print(f"simdiff {__version__}")
        return
    from simdiff.cli.app import run_app
    from simdiff.cli.stages import STAGES, run_all

    name, rest = argv[0], argv[1:]
    stages = {s.name: s for s in STAGES}
    relaunched = os.environ.get(SUBCOMMAND_ENV)
    if name not in stages and name != "run" and relaunched and "LOCAL_RANK" in os.environ:
        # A DDP worker that Lightning re-launched from sys.argv, which Hydra saw without the
        # sub-command: take it from the environment the parent process passed down.
        name, rest = relaunched, argv
    os.environ[SUBCOMMAND_ENV] = name
    if name == "run":
        run_app(name, run_all, rest)
        return
    if name not in stages:
        print(f"simdiff: unknown sub-command {name!r}\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    stage = stages[name]
    run_app(name, stage.run, rest)


if __name__ == "__main__":
    main()
