"""``simdiff certify``: the augmented dataset's downstream certificate -> ``run_dir/certificate.json``.

A small fixed model trained on real pairs, real + synthetic pairs and synthetic pairs, at
several fractions of the real data and over several seeds, scored on the real test split
(:mod:`simdiff.runs.certify`). ``simdiff evaluate`` puts it in the report when it is there.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from simdiff.base.errors import DataError
from simdiff.cli.augment import output_path as augment_output_path
from simdiff.cli.nodes import plain_node
from simdiff.evaluate.certificate import Downstream
from simdiff.runs.completion import Identity
from simdiff.runs.layout import RunDir

log = logging.getLogger("simdiff")


def settings(cfg: DictConfig):  # -> simdiff.runs.certify.Certify
    """The ``certify`` node as library values (DataError on a bad one, before anything runs)."""
    from simdiff.runs.certify import Certify, fractions_of

    node = cfg.certify
    try:
        downstream = Downstream(**plain_node(node.downstream))
    except (TypeError, ValueError) as err:
        raise DataError(f"certify.downstream: {err}") from None
    share = node.synthetic_share
    return Certify(task=str(node.task), fractions=fractions_of(node.fractions), seeds=int(node.seeds),
                   synthetic_share=None if share is None else float(share), downstream=downstream)


def identity(cfg: DictConfig) -> Identity:
    """certify depends on its node, the seed, the training store and the augmented dataset."""
    run = RunDir(cfg.run_dir)
    settings(cfg)
    augmented = augment_output_path(cfg)
    if not augmented.exists():
        raise DataError(f"{augmented}: no augmented dataset to certify; run `simdiff augment "
                        f"run_dir={cfg.run_dir}` first (workflows/augment_dataset/ runs both)")
    config = {"certify": plain_node(cfg.certify), "seed": int(cfg.seed)}
    return Identity(config, {"training store": run.store, "augmented": augmented}, [run.certificate])


def certify_stage(cfg: DictConfig) -> None:
    """Train the downstream model in every cell (resuming finished ones) and publish the certificate."""
    from simdiff.generate.output import open_output
    from simdiff.runs.certify import certify

    run = RunDir(cfg.run_dir)
    path = augment_output_path(cfg)
    out = certify(run, open_output(path), path, settings(cfg), seed=int(cfg.seed))
    for key, entry in out["by_fraction"].items():
        mixed, syn = entry["ratio_real+synthetic"], entry["ratio_synthetic"]
        n = out["pairs"]["real_by_fraction"][key]
        log.info("certify: %s of the real examples (%d): real+synthetic / real %.3f, synthetic / real %.3f: "
                 "%s", key, n, mixed["mean"], syn["mean"], entry["verdict"])
    log.info("certify: %s", run.certificate)
