"""Config nodes -> the plain values and library objects the stages pass to :mod:`simdiff.runs`."""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from simdiff.base.errors import DataError


def build(node: Any, **kwargs: Any) -> Any:
    """``instantiate(node, **kwargs)``, with a DataError raised inside (a bad value a class checks)
    passed on as itself, so the user gets its one-line message and exit code 2."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while cause is not None and not isinstance(cause, DataError):
            cause = cause.__cause__
        if isinstance(cause, DataError):
            raise cause from None
        raise


def plain_node(node: DictConfig, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """The resolved node as plain dicts and lists, without the keys ``drop``."""
    plain = OmegaConf.to_container(node, resolve=True)
    assert isinstance(plain, dict)
    for key in drop:
        plain.pop(key, None)
    return plain


def ranks(node: DictConfig) -> Any:
    """The launched Lightning Fabric of a generating stage's ``accelerator/devices/num_nodes/strategy``."""
    from lightning.fabric import Fabric

    lightning_logs_once()
    fabric = Fabric(
        accelerator=node.accelerator,
        devices=node.devices,
        num_nodes=node.num_nodes,
        strategy=node.strategy,
        precision="32-true",
    )
    fabric.launch()
    return fabric


def sampler_spec(cfg: DictConfig, node: DictConfig) -> Any:
    """The :class:`~simdiff.generate.rollout.SamplerSpec` of a generating stage: the root
    ``sampler`` node with the stage's guidance, batch invariance and rollout noise."""
    from simdiff.generate.rollout import SamplerSpec

    sampling = build(cfg.sampler)
    return SamplerSpec(sampling.sampler, sampling.sigmas(), float(node.guidance), tuple(node.guided),
                       bool(node.batch_invariant), int(node.get("member_group", 1)),
                       float(node.get("rollout_noise", 0.0)))


def preemption_signal(cfg: DictConfig) -> Any:
    """The training stages' :class:`simdiff.lit.preempt.PreemptionSignal` from ``cfg.preemption``
    (a DataError naming the key for a bad signal name)."""
    from simdiff.lit.preempt import PreemptionSignal

    node = cfg.get("preemption") or {}
    signals = node.get("signals", ["USR1", "USR2"])
    if not (OmegaConf.is_list(signals) or isinstance(signals, list)):
        raise DataError(f"preemption.signals: {signals!r} is not a list; write e.g. "
                        "preemption.signals=[USR1]")
    return PreemptionSignal(list(signals), requeue=bool(node.get("requeue", True)))


class _NoAdvertising(logging.Filter):
    """Drops Lightning's tips for its paid cloud services ("💡 Tip: For seamless cloud ...")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def lightning_logs_once() -> None:
    """Each Lightning record once, through the handlers Hydra gave the root logger (console and
    ``run_dir/logs``), no advertising, and no "prepend srun" hint outside a SLURM job.

    Importing ``lightning`` gives its package logger a console handler of its own (``INFO: ...``)
    while its records also reach the root's: every line printed twice. That handler is removed
    (idempotent); Lightning's sub-package loggers propagate to the root, as they do whenever the
    root has handlers when they are imported.
    """
    import lightning  # noqa: F401  (adds the handler this removes)

    subs = ("lightning.pytorch", "lightning.fabric") if logging.getLogger().handlers else ()
    for name in ("lightning", *subs):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:  # a console, not a file handler
                logger.removeHandler(handler)
        if name in subs:
            logger.propagate = True
    tips = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _NoAdvertising) for f in tips.filters):
        tips.addFilter(_NoAdvertising())
    if "SLURM_JOB_ID" not in os.environ:
        # Outside any SLURM job (a workstation or login node that has slurm installed) Lightning
        # still tells every command to "prepend srun": it only checks that srun exists. Inside a
        # job the hint can be right (an sbatch script that forgot srun) and stays.
        warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system")
