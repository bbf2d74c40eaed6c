"""Lightning's records reach the console once, through the root's handlers, without advertising."""

from __future__ import annotations

import io
import logging
import os
import warnings

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


def test_the_prepend_srun_hint_only_inside_a_slurm_job(tmp_path, monkeypatch):
    """Lightning warns "prepend srun" wherever an srun executable exists; outside a SLURM job
    (a workstation or login node) that is noise on every command, inside one it may be right."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    srun = tmp_path / "srun"
    srun.write_text("#!/bin/sh\n")
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)

    def hints() -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            lightning_logs_once()
            SLURMEnvironment._validate_srun_used()
        return [str(w.message) for w in caught if "srun" in str(w.message)]

    assert hints() == []
    monkeypatch.setenv("SLURM_JOB_ID", "7")  # an sbatch script that runs simdiff without srun
    assert len(hints()) == 1


def test_library_warnings_reach_the_log_file_not_the_console(tmp_path):
    """A warning raised inside an installed package (Lightning's deprecation notes) is written to
    run_dir/logs only; one raised in simdiff's own code still prints on the console too."""
    import sysconfig

    from simdiff.cli.app import library_warnings_to_log

    root = logging.getLogger()
    console_stream = io.StringIO()
    console = logging.StreamHandler(console_stream)  # Hydra's console handler
    logfile = logging.FileHandler(tmp_path / "run.log")  # Hydra's run_dir/logs handler
    library = sysconfig.get_paths()["purelib"] + "/lightning/pytorch/utilities/_pytree.py"
    with warnings.catch_warnings():  # restores showwarning (captureWarnings replaces it)
        warnings.simplefilter("always")
        root.addHandler(console)
        root.addHandler(logfile)
        try:
            library_warnings_to_log()
            library_warnings_to_log()  # idempotent: one filter per console handler
            warnings.warn_explicit("`isinstance(treespec, LeafSpec)` is deprecated", DeprecationWarning,
                                   library, 21)
            warnings.warn_explicit("a simdiff warning", UserWarning, "/work/simdiff/runs/x.py", 3)
        finally:
            root.removeHandler(console)
            root.removeHandler(logfile)
            logfile.close()
            logging.captureWarnings(False)
    on_console = console_stream.getvalue()
    in_file = (tmp_path / "run.log").read_text()
    assert "LeafSpec" not in on_console and "a simdiff warning" in on_console
    assert "LeafSpec" in in_file and "a simdiff warning" in in_file
    assert len(console.filters) == 1 and not logfile.filters
