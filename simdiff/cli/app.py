"""How a sub-command becomes a Hydra app over the shared ``conf/`` tree.

Every sub-command is a task function ``(cfg) -> None`` run by :func:`run_app`, which
registers simdiff's OmegaConf resolvers, points Hydra at the config tree, refuses a config
whose ``_target_``s are not allowed (:func:`check_targets`, before the task instantiates
anything) and turns bad input (:class:`~simdiff.base.errors.DataError`) into one clear line and
exit code 2.

It also keeps the clock that stage time budgets count from (:func:`stage_started`): the
start of the process for its first task, so Python's start-up, the imports and the config
composition count against the budget as they count against the job's wall time; the start
of each later task (Hydra multirun jobs, the stages ``simdiff run`` chains, which restart it
with :func:`restart_stage_clock`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import sysconfig
import time
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import Any

import hydra
import psutil
from omegaconf import DictConfig, OmegaConf

from simdiff.base.errors import DataError
from simdiff.base.registry import check_config, register
from simdiff.lit.preempt import Preempted
from simdiff.runs.completion import slurm_step

log = logging.getLogger("simdiff")

REPO_ROOT = Path(__file__).resolve().parents[2]
EXIT_BAD_INPUT = 2


_stage_clock: dict[str, float | None] = {"started": None}


def process_started() -> float:
    """``time.monotonic()`` at the start of this process."""
    return time.monotonic() - max(time.time() - psutil.Process().create_time(), 0.0)


def restart_stage_clock() -> None:
    """Start the clock of the next task or stage now (after the first task of the process)."""
    _stage_clock["started"] = time.monotonic()


def stage_started() -> float:
    """``time.monotonic()`` from which the running stage's time budget counts."""
    started = _stage_clock["started"]
    return process_started() if started is None else started


def config_dir() -> Path:
    """The config tree: inside an installed wheel, else ``conf/`` of the source checkout."""
    packaged = Path(str(files("simdiff"))) / "conf"
    return packaged if packaged.is_dir() else REPO_ROOT / "conf"


#: Longest folder name of a sweep point before it is shortened (file systems allow 255 bytes).
POINT_NAME_MAX = 160


def point_name(overrides: str) -> str:
    """The folder of a sweep point, from its overrides (Hydra's ``job.override_dirname``: the
    job's ``key=value`` overrides sorted and joined by ``,``, without the keys in
    ``hydra.job.config.override_dirname.exclude_keys``).

    ``/`` in a value is written ``%2F`` (one folder per point); ``default`` when there are none;
    past :data:`POINT_NAME_MAX` characters the name is cut and ends with the sha256 of the whole.
    """
    name = overrides.replace("%", "%25").replace("/", "%2F") or "default"
    if len(name) > POINT_NAME_MAX:
        digest = hashlib.sha256(name.encode()).hexdigest()[:16]
        name = f"{name[: POINT_NAME_MAX - 17]}-{digest}"
    return name


def sweep_point(sweep_dir: str | None, overrides: str) -> str:
    """``run_dir`` when none is given: ``sweep_dir/POINT`` (:func:`point_name`), the same folder
    for the same overrides whenever the point runs (a requeued or re-submitted job finds its
    checkpoints and completion records)."""
    if sweep_dir is None:
        raise ValueError("run_dir is required: run_dir=DIR, or for a sweep (-m) sweep_dir=DIR "
                         "(each point's run_dir is then DIR/<its overrides>)")
    return str(Path(sweep_dir) / point_name(overrides))


def log_stamp(now: str) -> str:
    """The folder of one invocation's logs under ``run_dir/logs/COMMAND/``: ``now`` (its start
    time), except in a SLURM step of several tasks (``srun`` starting one DDP rank per task).
    There the ranks share ``slurm-JOB.STEP-runN`` (N: how often the job was requeued before),
    rank 0 writing into it and rank R into its ``rankR/``: one folder per job, however far apart
    the ranks start, instead of one timestamped folder per rank."""
    step = slurm_step()
    if step is None:
        return now
    job, step_id, requeued = step
    stamp = f"slurm-{job}.{step_id}-run{requeued}"
    rank = int(os.environ.get("SLURM_PROCID") or 0)
    return stamp if rank == 0 else f"{stamp}/rank{rank}"


def _if_set(value: Any, then: Any, otherwise: Any) -> Any:
    return otherwise if value is None else then


def _register_resolvers() -> None:
    resolvers: dict[str, Callable[..., Any]] = {
        "simdiff.repo_root": lambda: str(REPO_ROOT),
        "simdiff.point": point_name,
        "simdiff.sweep_point": sweep_point,
        "simdiff.log_stamp": log_stamp,  # ${simdiff.log_stamp:${now:...}}
        "simdiff.if_set": _if_set,  # ${simdiff.if_set:VALUE,THEN,OTHERWISE}: OTHERWISE when VALUE is null
    }
    for name, resolver in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


def to_plain(cfg: DictConfig, *keys: str) -> dict[str, Any]:
    """Resolved plain-dict copy of the config nodes ``keys`` (for provenance and comparison)."""
    return {k: OmegaConf.to_container(cfg[k], resolve=True) for k in keys if k in cfg}


def check_targets(cfg: DictConfig) -> None:
    """Refuse (DataError) a composed config that names a ``_target_`` simdiff does not instantiate.

    Walks the whole resolved config (presets, experiment files, overrides) with
    :func:`simdiff.base.registry.check_config`, extended by the config's ``allowed_targets``,
    which are then registered so that stages may also rebuild them from stored specs.
    """
    from omegaconf.errors import OmegaConfBaseException

    allowed = [str(a) for a in (cfg.get("allowed_targets") or [])]
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        raise DataError(f"the config does not resolve, so its _target_s cannot be checked: {err}. "
                        "Fix the override or config file it names") from err
    check_config(plain, source="the config (presets, experiment files and overrides)",  # type: ignore[arg-type]
                 allowed=allowed)
    register(*allowed)


def _check_group_choice(key: str, value: str) -> None:
    """``group=option`` (``generate/mode=sample``): refuse an option with no file in ``conf/GROUP/``."""
    group = key.lstrip("+~").split("@")[0]
    folder = config_dir() / group
    if not group or "." in group or not folder.is_dir() or group.startswith("hydra"):
        return
    if "(" in value or "$" in value:
        return  # a sweep function or an interpolation: Hydra reads it
    for option in value.split(","):
        option = option.strip()
        if option and option != "null" and not (folder / f"{option}.yaml").is_file():
            choices = sorted(p.stem for p in folder.glob("*.yaml"))
            raise DataError(f"{group}={option}: no such option in {folder}; choose one of {choices}")


def _check_run_dir(value: str) -> None:
    """``run_dir=DIR``: refuse a folder that cannot be created or written (before Hydra writes its logs)."""
    if not value or "$" in value:
        return
    path = Path(value).expanduser().absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise DataError(f"run_dir={value}: {existing} is a file, not a folder; choose a run_dir in a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DataError(f"run_dir={value}: {existing} is not writable (permission denied); choose a run_dir "
                        "you can write, or fix the folder's permissions")


def check_argv(argv: list[str]) -> None:
    """Refuse (DataError) what Hydra would otherwise report with exit code 1 or a traceback: an
    unknown config group option, and a run_dir that cannot be written."""
    for arg in argv:
        key, eq, value = arg.partition("=")
        if not eq or key.startswith("-"):
            continue
        if key == "run_dir":
            _check_run_dir(value)
        elif "." not in key.split("@")[0]:
            _check_group_choice(key, value)


class _LibraryWarningsToFile(logging.Filter):
    """On a console handler: drops the Python warnings raised inside installed packages
    (Lightning's deprecation notes and data-loader hints), which still reach ``run_dir/logs``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "py.warnings":
            return True
        where = str(record.args[0] if record.args else record.msg).split(":", 1)[0]
        return not where.startswith(_LIBRARY_PATHS)


_LIBRARY_PATHS = tuple({sysconfig.get_paths()[k] for k in ("purelib", "platlib", "stdlib")})


def library_warnings_to_log() -> None:
    """Python warnings become log records (``py.warnings``); the root's console handlers drop
    those raised inside installed packages, its file handler (``run_dir/logs``) keeps them all.
    Nothing is silenced: simdiff's own warnings still print, and the full log has every one.
    Only when the root has handlers (a CLI command under Hydra): as a library, warnings stay
    Python's."""
    root = logging.getLogger()
    if not root.handlers:
        return
    logging.captureWarnings(True)
    for handler in root.handlers:
        if type(handler) is logging.StreamHandler and not any(
                isinstance(f, _LibraryWarningsToFile) for f in handler.filters):
            handler.addFilter(_LibraryWarningsToFile())


def check_cache_dir(cfg: DictConfig) -> None:
    """Refuse an empty ``cache_dir`` (``SIMDIFF_CACHE=`` set to nothing): the simulators' caches
    would land in the current folder, e.g. a source checkout."""
    value = cfg.get("cache_dir")
    if value is not None and not str(value).strip():
        raise DataError(f"cache_dir={value!r} is empty (is SIMDIFF_CACHE set to an empty string? it is "
                        f"{os.environ.get('SIMDIFF_CACHE')!r}): the built-in datasets would cache their "
                        "simulations in the current folder. Unset SIMDIFF_CACHE, set it to a folder, or "
                        "pass cache_dir=DIR")


def run_app(name: str, task: Callable[[DictConfig], Any], argv: list[str]) -> None:
    """Run ``task`` as the Hydra app ``simdiff NAME`` with the overrides in ``argv``."""
    _register_resolvers()
    try:
        check_argv(argv)
    except DataError as err:
        print(f"simdiff {name}: {err}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)

    @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
    def _main(cfg: DictConfig) -> None:
        library_warnings_to_log()
        try:
            check_targets(cfg)
            check_cache_dir(cfg)
            task(cfg)
        except DataError as err:
            log.error("%s", err)
            print(f"simdiff {name}: {err}", file=sys.stderr)
            sys.exit(EXIT_BAD_INPUT)
        except Preempted as err:  # its checkpoint is written: the same command resumes (exit code 3)
            log.warning("simdiff %s: %s; the same command resumes from it", name, err)
            raise
        except Exception:
            # into the job's own log too: a launcher (submitit) keeps the exception in the job's
            # result and its log would otherwise hold no traceback
            log.exception("simdiff %s failed", name)
            raise
        finally:
            restart_stage_clock()  # a next job (multirun) counts from its own start

    sys.argv = [f"simdiff {name}", *argv, f"hydra.job.name={name}"]
    _main()
