"""One runner for every generated output: launch, skip, partial store, blocks by rank, publish.

A :class:`Job` (a forecast, independent samples, an augmented dataset, any later generator)
says what its output looks like (:meth:`Job.template`), which of its units are still to be
written in a partial store (:meth:`Job.pending`), how the units group into blocks, and how to
compute and write one block. :func:`publish` does the rest, the same way for all of them:

1. rank 0 skips a complete output made with the same config (unless ``force``), else creates
   (or reuses, to resume) the partial store beside the target;
2. every rank reads the same list of unwritten units and writes its own share of the blocks
   (block ``k`` goes to rank ``k mod world_size``; no gather), with a progress bar on rank 0;
3. rank 0 checks the job is whole (:meth:`Job.finish`) and publishes the store atomically.

A killed run re-run with the same command writes only what is missing; a pre-empted one
(SLURM's warning signal) stops between units and requeues itself to do so.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import xarray as xr

from simdiff.generate.output import create_partial, finalize, is_complete, partial_path
from simdiff.generate.template import WRITTEN
from simdiff.lit.preempt import PreemptionSignal

log = logging.getLogger("simdiff")


class Ranks(Protocol):
    """What :func:`publish` needs of a launcher (Lightning Fabric has it)."""

    global_rank: int
    world_size: int

    def barrier(self) -> None: ...


class Job(Protocol):
    """A generated output: see the module docstring."""

    stage: str  # the log prefix, e.g. "generate"
    unit: str  # what the progress bar counts, e.g. "members"

    def template(self) -> xr.Dataset: ...

    def attrs(self) -> dict[str, Any]:
        """The output's global attributes (:func:`simdiff.generate.output.output_attrs`); rank 0 only."""
        ...

    def pending(self, target: Path) -> Sequence[Any]: ...

    def blocks(self, pending: Sequence[Any]) -> list[Any]: ...

    def size(self, block: Any) -> int: ...

    def run(self, block: Any, target: Path) -> Iterator[int]:
        """Compute and write ``block``; yield the units settled as they are."""
        ...

    def finish(self, target: Path) -> None:
        """Rank 0, before publishing: raise when the output cannot be published."""
        ...


def same_config(target: Path, config: str) -> bool:
    """True when the complete output at ``target`` was made with the config text ``config``."""
    ds = xr.open_zarr(target) if target.suffix == ".zarr" else xr.open_dataset(target)
    with ds:
        return ds.attrs.get("simdiff_config_sha256") == hashlib.sha256(config.encode()).hexdigest()


def up_to_date(target: Path, config: str, force: bool) -> bool:
    """A complete output with the same config is there and ``force`` is off: nothing to do."""
    return not force and is_complete(target) and same_config(target, config)


def publish(job: Job, target: Path, *, config: str, ranks: Ranks, force: bool = False,
            preemption: PreemptionSignal | None = None) -> bool:
    """Write and publish ``job``'s output at ``target``; False when it was already complete.

    ``config`` is the YAML text whose sha256 the output's attrs carry (``attrs()`` must put it
    there): a complete output with the same one is skipped, a partial one is resumed. With
    ``preemption``, a pre-emption signal stops this process once the units being written are
    settled in the partial store: the job is requeued (:mod:`simdiff.lit.preempt`) and its next
    run writes the rest.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    rank = ranks.global_rank
    template = job.template()
    if rank == 0:
        if up_to_date(target, config, force):
            log.info("%s: %s is complete with the same config; skipping", job.stage, target)
            ranks.barrier()
            return False
        create_partial(target, template, job.attrs(), force=force)
    ranks.barrier()
    if up_to_date(target, config, force):
        return False
    todo = job.pending(target)
    ranks.barrier()  # every rank has read the same list before any rank writes
    mine = job.blocks(todo)[rank :: ranks.world_size]
    total = sum(job.size(b) for b in mine)
    units = int(template[WRITTEN].size)  # one flag per unit (member x init, or row)
    log.info(
        "%s: %d %s to write (%d done before), %d on rank %d of %d, to %s",
        job.stage,
        len(todo),
        job.unit,
        units - len(todo),
        total,
        rank,
        ranks.world_size,
        target,
    )
    t0 = time.perf_counter()
    done = 0
    with Progress(
        TextColumn(job.stage), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), disable=rank != 0
    ) as bar:
        task = bar.add_task(job.unit, total=total)
        if preemption is not None:
            preemption.install()
        try:
            for block in mine:
                for n in job.run(block, target):
                    done += n
                    bar.advance(task, n)
                    if preemption is not None and preemption.received is not None:
                        bar.stop()
                        preemption.hand_over(rank_zero=rank == 0, what=(
                            f"{done} of this rank's {total} {job.unit} are in {partial_path(target)}"))
        finally:
            if preemption is not None:
                preemption.uninstall()
    wall = time.perf_counter() - t0
    log.info(
        "%s: rank %d wrote %d %s in %.1f s (%.2f %s/s)",
        job.stage,
        rank,
        done,
        job.unit,
        wall,
        done / wall if wall > 0 else 0.0,
        job.unit,
    )
    ranks.barrier()
    if rank == 0:
        job.finish(target)
        finalize(target, force=True)
        log.info("%s: published %s", job.stage, target)
    return True
