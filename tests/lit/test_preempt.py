"""Pre-emption signal names (simdiff.lit.preempt); the fits it stops are in test_autoencoder_resume.py."""

from __future__ import annotations

import signal

import pytest

from simdiff.base.errors import DataError
from simdiff.lit.preempt import EXIT_PREEMPTED, Preempted, PreemptionSignal, parse_signals


def test_signal_names_with_or_without_sig_and_numbers():
    want = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)
    assert parse_signals(["USR1", "sigusr2", "TERM", "USR1"]) == want
    assert PreemptionSignal([int(signal.SIGUSR1)]).signals == (signal.SIGUSR1,)


@pytest.mark.parametrize("bad", ["USR3", "KILL", "STOP", ""])
def test_a_signal_a_job_cannot_catch_is_refused_by_name(bad):
    with pytest.raises(DataError, match=rf"preemption.signals: '{bad}' is not a signal"):
        parse_signals([bad])


def test_preempted_exits_with_its_own_code_and_says_why():
    err = Preempted("pre-empted (SIGUSR1): wrote last.ckpt at step 5; not requeued")
    assert isinstance(err, SystemExit) and err.code == EXIT_PREEMPTED == 3
    assert "step 5" in str(err)


def test_outside_slurm_the_hand_over_requeues_nothing(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    sig = PreemptionSignal(["USR1"])
    sig.install()
    try:
        signal.raise_signal(signal.SIGUSR1)
        assert sig.received == signal.SIGUSR1 and sig.requested(None)
    finally:
        with pytest.raises(Preempted, match="not requeued"):
            sig.hand_over(rank_zero=True, what="wrote x")
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_an_earlier_fits_handler_is_not_taken_for_a_launchers():
    """Lightning puts back the handler it found (an earlier fit's) when a fit ends: the next fit
    must see the handler behind it, or it would hand its signal to a dead fit instead of requeuing."""
    first = PreemptionSignal(["USR1"])
    first.install()
    first.uninstall()
    signal.signal(signal.SIGUSR1, first._catch)  # as Lightning leaves it
    second = PreemptionSignal(["USR1"])
    second.install()
    try:
        assert second._previous[signal.SIGUSR1] == signal.SIG_DFL
    finally:
        second.uninstall()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
