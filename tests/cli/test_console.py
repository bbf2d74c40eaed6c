"""Lightning's records reach the console once, through the root's handlers, without advertising."""

from __future__ import annotations

import io
import logging

from simdiff.cli.nodes import lightning_logs_once


def test_lightning_records_print_once_and_tips_for_paid_services_not_at_all(capsys):
    root = logging.getLogger()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)  # stands for Hydra's console and file handlers
    root.addHandler(handler)
    try:
        lightning_logs_once()
        lightning_logs_once()  # idempotent: one filter, no handler added back
        log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
        log.info("GPU available: False, used: False")
        log.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]")
        logging.getLogger("lightning.fabric.utilities.seed").info("Seed set to 0")
    finally:
        root.removeHandler(handler)
    assert stream.getvalue().splitlines() == ["GPU available: False, used: False", "Seed set to 0"]
    assert "INFO:" not in capsys.readouterr().err  # the package's own console handler is gone
    assert len(logging.getLogger("lightning.pytorch.utilities.rank_zero").filters) == 1
