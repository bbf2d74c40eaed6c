"""Pre-emption and time limits on a cluster: checkpoint at the signal, requeue, resume exactly.

A scheduler warns a job some time before it pre-empts it or its time runs out: SLURM sends the
signal of ``#SBATCH --signal=USR1@120`` to the job's tasks (``B:USR1@120``: to the batch shell
only), and hydra-submitit-launcher's jobs get ``USR2`` (submitit's default). Training stages
catch these with :class:`PreemptionSignal`; at the end of the current optimizer step (on every
rank: a rank that got the signal tells the others through the strategy) the step checkpoint
(:class:`simdiff.lit.resume.StepCheckpoint`) writes ``last.ckpt`` exactly as its own cadence
would, and the signal is handed over:

* a handler that was installed before simdiff's (submitit's) runs next: it requeues the job with
  the same command and exits;
* otherwise, inside a SLURM job with ``requeue`` on, rank 0 runs ``scontrol requeue $SLURM_JOB_ID``
  (the job must be requeueable: ``sbatch --requeue``, the default where ``JobRequeue=1``);

and :class:`Preempted` ends the stage without publishing anything. The requeued job runs the
same command: the stage resumes from ``last.ckpt`` and ends with an uninterrupted run's weights.
Lightning's own SLURM handler (an ``hpc_ckpt_N.ckpt`` that simdiff's resume would not find) is
not installed, because Lightning leaves a signal that already has a handler alone.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from collections.abc import Sequence
from typing import Any

from simdiff.base.errors import DataError

log = logging.getLogger("simdiff")

#: exit code of a pre-empted stage: its checkpoint is written, run the same command again
EXIT_PREEMPTED = 3


class Preempted(SystemExit):
    """A training stage stopped at a pre-emption signal after writing its resume checkpoint."""

    def __init__(self, message: str) -> None:
        super().__init__(EXIT_PREEMPTED)
        self.message = message

    def __str__(self) -> str:
        return self.message


def parse_signals(names: Sequence[str], *, key: str = "preemption.signals") -> tuple[signal.Signals, ...]:
    """``["USR1", "SIGUSR2"]`` -> signals; a DataError naming ``key`` for an unknown or fatal one."""
    out = []
    for name in names:
        text = str(name).upper()
        text = text if text.startswith("SIG") else f"SIG{text}"
        sig = getattr(signal.Signals, text, None)
        if sig is None or sig in (signal.SIGKILL, signal.SIGSTOP):
            raise DataError(
                f"{key}: {name!r} is not a signal a job can catch; use names such as USR1, USR2 or TERM "
                "(the signal of `#SBATCH --signal=USR1@120`; submitit sends USR2)"
            )
        out.append(sig)
    return tuple(dict.fromkeys(out))


class PreemptionSignal:
    """Catches the pre-emption signals while installed; see the module docstring.

    Args:
        signals: what to catch (default SIGUSR1 and SIGUSR2).
        requeue: in a SLURM job without a handler of its own, requeue it with ``scontrol``.
    """

    def __init__(self, signals: Sequence[str | int] = ("USR1", "USR2"), requeue: bool = True) -> None:
        names = [signal.Signals(s).name if isinstance(s, int) else str(s) for s in signals]
        self.signals = parse_signals(names)
        self.requeue = bool(requeue)
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}  # installed: the handlers found
        self._restored: dict[signal.Signals, Any] = {}  # uninstalled: the handlers put back

    def install(self) -> None:
        """Install the handlers (main thread only; elsewhere nothing is caught)."""
        if self._previous or threading.current_thread() is not threading.main_thread():
            return
        for sig in self.signals:
            self._previous[sig] = _unwrap(signal.getsignal(sig), sig)
            signal.signal(sig, self._catch)

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._restored, self._previous = {**self._restored, **self._previous}, {}

    def _catch(self, signum: int, frame: Any) -> None:
        sig = signal.Signals(signum)
        if self._previous:
            self.received = sig  # acted on at the next step end, outside the handler
            return
        # Uninstalled, yet called: Lightning puts back the handlers it found when a fit ends by
        # an exception (this one). Behave as the handler that was there before.
        previous = self._restored.get(sig, signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def requested(self, strategy: Any) -> bool:
        """True on every rank once any rank got a signal (a collective call: every rank makes it)."""
        mine = self.received is not None
        return bool(strategy.reduce_boolean_decision(mine, all=False)) if strategy is not None else mine

    def hand_over(self, *, rank_zero: bool, what: str) -> None:
        """After the checkpoint: let the launcher requeue the job, or requeue it; raise Preempted."""
        sig = self.received or self.signals[0]
        previous = self._previous.get(sig)
        self.uninstall()
        action = "not requeued (not a SLURM job; run the same command again)"
        if callable(previous):
            log.warning("pre-empted (%s): %s; handing over to the launcher's handler", sig.name, what)
            previous(int(sig), None)  # submitit: requeues the job and exits
            action = "handed over to the launcher"
        elif self.requeue and os.environ.get("SLURM_JOB_ID"):
            job = os.environ["SLURM_JOB_ID"]
            action = f"SLURM job {job} requeued"
            if rank_zero:
                # said first: the requeue ends this run at once, often before Preempted is logged
                log.warning("pre-empted (%s): %s; SLURM job %s requeued next (scontrol requeue), which "
                            "ends this run; the requeued run resumes", sig.name, what, job)
                done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
                if done.returncode != 0:
                    action = f"`scontrol requeue {job}` failed: {(done.stderr or done.stdout).strip()}"
        raise Preempted(f"pre-empted ({sig.name}): {what}; {action}")


def _unwrap(handler: Any, sig: signal.Signals) -> Any:
    """The handler behind a :class:`PreemptionSignal`'s own (an earlier fit's, which Lightning
    puts back when that fit ends), so that one is never mistaken for a launcher's."""
    owner = getattr(handler, "__self__", None)
    while isinstance(owner, PreemptionSignal):
        handler = owner._previous.get(sig, owner._restored.get(sig, signal.SIG_DFL))
        owner = getattr(handler, "__self__", None)
    return handler
