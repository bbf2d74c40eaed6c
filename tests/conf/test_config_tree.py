"""Every option of the config tree (``conf/``), composed, checked and instantiated.

The options are the YAML files under ``conf/`` found on disk (every file but the root
``config.yaml``), so a new preset is covered the day it is added, and fails here if it cannot be
chosen, composed or built. For each, the root config is composed with that option chosen
(Hydra's compose API over :func:`simdiff.cli.app.config_dir`, simdiff's resolvers registered as
:func:`simdiff.cli.app.run_app` registers them), under every key a defaults list selects its
group by (``optimizer`` twice: ``optimizer@autoencoder.module.optimizer`` and
``optimizer@diffusion.module.optimizer``); then

* its ``_target_``s are checked as every sub-command checks them (:func:`check_targets`);
* every ``_target_`` node of the composed config is instantiated: the data source (presets over
  the shared reference files resolve ``${shared_data}`` to the real folder, and their files must
  exist; a preset whose ``source`` is ``???`` gets a real shared file of its kind), the prepare
  options, the loader's DataModule (it opens its store lazily, so none is needed), both networks
  with the data-dependent kwargs the stages pass (``in_channels``, ``periodic``, condition
  channels), both training modules with their optimiser and schedule built, the early stopping
  callback, the samplers, the augment filter, and the Trainer with its callbacks; any other
  ``_target_`` node is instantiated as it stands, so a new node is built here too;
* options under ``hydra/`` are composed with the Hydra node and instantiated from it.

A Trainer with ``accelerator: gpu`` (``trainer=gpu``, ``trainer=ddp``) cannot be built on a CPU
machine: its composed values are checked as written, and it is built with only the accelerator
and device count set to the CPU (``bf16-mixed`` and the DDP strategy build on the CPU too); on a
machine with CUDA it is built as written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from simdiff.base.registry import iter_targets, locate
from simdiff.cli.app import _register_resolvers, check_targets, config_dir
from simdiff.data.sources.paths import expand_source

CONF = config_dir()
#: (group, option) of every YAML file under conf/ but the root config, e.g. ("hydra/launcher", "basic").
OPTIONS = sorted((p.parent.relative_to(CONF).as_posix(), p.stem)
                 for p in CONF.rglob("*.yaml") if p.parent != CONF)
#: A real shared file for a data preset that leaves ``source`` to the user (``???``), by its source class.
SAMPLE_SOURCES = {
    "simdiff.data.sources.climate.ClimateSource": "climate/xrtutorial_sst.mnmean.nc",
    "simdiff.data.sources.molecular.CubeSource": "molecular/cclib_nh3.cube",
}
#: Nodes built with what the stages pass (the rest are instantiated as they stand).
STAGE_BUILT = ("data", "loader", "autoencoder.net", "autoencoder.module", "diffusion.net", "diffusion.module",
               "trainer")


def _compose(overrides: list[str], hydra: bool = False) -> DictConfig:
    _register_resolvers()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=["run_dir=/nonexistent/run", *overrides],
                       return_hydra_config=hydra)


@pytest.fixture(scope="module")
def selectors() -> dict[str, list[str]]:
    """Group -> the override keys that choose an option of it (from the composed defaults lists)."""
    keys: dict[str, list[str]] = {}
    for key in _compose([], hydra=True).hydra.runtime.choices:
        keys.setdefault(key.split("@")[0], []).append(key)
    return keys


def test_every_group_on_disk_is_found():
    groups = {g for g, _ in OPTIONS}
    assert {"data", "autoencoder", "bottleneck", "diffusion", "optimizer", "experiment", "trainer",
            "hydra/launcher", "debug"} <= groups


def _periodic(factors: Any) -> list[bool]:
    """Periodic flags for a field of the rank the net's factors ask for (at least 2D), x periodic."""
    ndim = max([2, *(len(f) for f in factors)])
    return [False] * (ndim - 1) + [True]


def _check_optimizer(module: Any, node: DictConfig) -> None:
    """``configure_optimizers`` builds the chosen class with the stage's numbers, one group, a schedule."""
    built = module.configure_optimizers()
    opt = built["optimizer"]
    assert type(opt) is locate(node._target_)
    assert len(opt.param_groups) == 1
    group = opt.param_groups[0]
    assert group["initial_lr"] == node.lr  # the schedule's peak; group["lr"] is its first step
    assert (group["weight_decay"], group["eps"]) == (node.weight_decay, node.eps)
    assert group["betas"] == tuple(node.betas)
    assert built["lr_scheduler"]["interval"] == "step"


#: What has been built, by part and resolved config: a node that several options share (most
#: options change one node) is built once per session, which keeps this module fast.
_BUILT: set[tuple[str, str]] = set()


def _first_time(part: str, *resolved: Any) -> bool:
    """True the first time ``part`` is to be built from these resolved config values."""
    key = (part, repr(resolved))
    if key in _BUILT:
        return False
    _BUILT.add(key)
    return True


def _build_autoencoder(ae: DictConfig) -> None:
    periodic = _periodic(ae.net.factors)
    net = instantiate(ae.net, in_channels=2, periodic=periodic)
    shape = (8,) * len(periodic)
    loss = instantiate(ae.loss)
    physical = None
    if loss.count_weight > 0:  # as the stage does from its store: two Log1p channels, no reference
        from simdiff.lit.physical import PhysicalAmount

        physical = PhysicalAmount(["a", "b"], np.ones(2), np.zeros(2), np.ones(2), {}, {})
    module = instantiate(ae.module, net=net, loss=loss, weights=torch.ones(shape),
                         mask=torch.ones(shape, dtype=torch.bool), seed=0, signature={}, physical=physical,
                         _convert_="all")
    _check_optimizer(module, ae.module.optimizer)


def _build_diffusion(dmc: DictConfig, sampler: DictConfig) -> None:
    from simdiff.diffusion.denoiser import ConditionalDenoiser
    from simdiff.nets.conditioning import Conditioner

    cond = dmc.conditioning
    conditioner = Conditioner(int(dmc.net.emb_dim), 2, previous=int(cond.previous), time_features=4,
                              atoms=3 if cond.get("atoms") else 0, dropout=dict(cond.dropout))
    periodic = [False, True] if dmc.get("fold_depth", True) else _periodic(dmc.net.factors)
    unet = instantiate(dmc.net, in_channels=2, out_channels=2, periodic=periodic,
                       cond_channels=conditioner.spatial_channels)
    model = ConditionalDenoiser(unet, conditioner, sigma_data=float(dmc.sigma_data),
                                residual=bool(dmc.residual), residual_scale=torch.ones(2))
    sampling = instantiate(sampler)  # as train-diffusion: joined after instantiate (a dataclass)
    module = instantiate(dmc.module, model=model, weights=torch.ones((4,) * len(periodic)), seed=0,
                         signature={}, _convert_="all", _partial_=True)(sampling=sampling)
    assert module.sigmas()[0] == pytest.approx(float(sampler.sigma_max))
    _check_optimizer(module, dmc.module.optimizer)


def _build_trainer(cfg: DictConfig, tmp_path: Path) -> None:
    trainer_cfg = cfg.trainer
    if trainer_cfg.accelerator == "gpu" and not torch.cuda.is_available():
        trainer_cfg = OmegaConf.merge(trainer_cfg, {"accelerator": "cpu", "devices": 1})
    callbacks = [*instantiate(trainer_cfg.get("callbacks") or []),
                 instantiate(cfg.autoencoder.early_stopping)]
    trainer = instantiate(trainer_cfg, callbacks=callbacks, max_epochs=1, default_root_dir=str(tmp_path),
                          logger=False, enable_checkpointing=False)
    assert trainer.max_epochs == 1


def _build_stages(cfg: DictConfig, plain: dict[str, Any], tmp_path: Path) -> None:
    """Instantiate the nodes of :data:`STAGE_BUILT` with the kwargs the stages pass (each once);
    ``plain`` is ``cfg`` resolved."""
    if _first_time("data", plain["data"]):
        instantiate(cfg.data, _convert_="object")  # as `prepare` does
    if _first_time("loader", plain["loader"], plain["autoencoder"]):
        dm = instantiate(cfg.loader, batch_size=cfg.autoencoder.batch_size, patch=cfg.autoencoder.patch)
        assert not dm.path.exists()  # built without a store
    if _first_time("autoencoder", plain["autoencoder"]):
        _build_autoencoder(cfg.autoencoder)
    if _first_time("diffusion", plain["diffusion"], plain["sampler"]):
        _build_diffusion(cfg.diffusion, cfg.sampler)
    if _first_time("trainer", plain["trainer"], plain["autoencoder"]):
        _build_trainer(cfg, tmp_path)
    if _first_time("certify", plain["certify"]):
        from simdiff.cli.certify import settings

        settings(cfg)  # as `certify` does: the node as library values, checked


def _build_hydra_node(group: str, option: str, cfg: DictConfig) -> None:
    """Build an option of a ``hydra/`` group as Hydra builds it (Hydra refuses its own classes to
    :func:`hydra.utils.instantiate`)."""
    from hydra.core.plugins import Plugins
    from hydra.plugins.launcher import Launcher

    assert cfg.hydra.runtime.choices[group] == option
    assert group == "hydra/launcher", f"conf/{group}/: teach this test how Hydra builds it"
    launcher = Plugins.instance().instantiate_launcher(hydra_context=None, task_function=lambda _: None,
                                                       config=cfg)
    assert isinstance(launcher, Launcher)


def _target_nodes(plain: dict[str, Any]) -> list[str]:
    """Dotted paths of every node with a ``_target_`` (``trainer.callbacks[0]``, ``data``, ...)."""
    return [key[: -len("._target_")] for key, _ in iter_targets(plain)]


def _under(path: str, parents: tuple[str, ...]) -> bool:
    return any(path == p or path.startswith((f"{p}.", f"{p}[")) for p in parents)


def _data_overrides(cfg: DictConfig, request: pytest.FixtureRequest) -> list[str]:
    """``shared_data=...`` and, for a preset that asks for its ``source``, a real file of its kind."""
    extra: list[str] = []
    if "${shared_data}" in OmegaConf.to_yaml(cfg.data) or OmegaConf.is_missing(cfg.data, "source"):
        shared = request.getfixturevalue("shared_data")  # skips without the shared files
        extra.append(f"shared_data={shared}")
        if OmegaConf.is_missing(cfg.data, "source"):
            target = cfg.data._target_
            assert target in SAMPLE_SOURCES, f"data preset with source ??? and a new class {target}: " \
                                             "add a shared file of its kind to SAMPLE_SOURCES"
            extra.append(f"data.source={shared / SAMPLE_SOURCES[target]}")
    return extra


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}/{o}" for g, o in OPTIONS])
def test_option_composes_checks_and_instantiates(group, option, selectors, request, tmp_path):
    keys = selectors.get(group)
    assert keys, (f"conf/{group}/{option}.yaml cannot be chosen: no defaults list names the group "
                  f"{group!r} (chosen groups: {sorted(selectors)})")
    for key in keys:
        override = f"{key}={option}"
        if group.startswith("hydra/"):
            _build_hydra_node(group, option, _compose([override], hydra=True))
            continue
        cfg = _compose([override])
        extra = _data_overrides(cfg, request)
        if extra:
            cfg = _compose([override, *extra])
        check_targets(cfg)
        plain = OmegaConf.to_container(cfg, resolve=True)
        if plain["data"].get("source") is not None and plain["data"]["_target_"] in SAMPLE_SOURCES:
            assert expand_source(plain["data"]["source"])  # the shared files exist
        if group == "trainer" and option in ("gpu", "ddp"):
            assert (cfg.trainer.accelerator, cfg.trainer.precision) == ("gpu", "bf16-mixed")
        _build_stages(cfg, plain, tmp_path)
        for path in (p for p in _target_nodes(plain) if not _under(p, STAGE_BUILT)):
            node = OmegaConf.select(cfg, path)
            if _first_time(path, OmegaConf.to_container(node, resolve=True)):
                instantiate(node)


def test_optimizer_presets_carry_the_stage_numbers():
    """The stages' numbers win over the optimizer preset's, whichever preset is chosen."""
    for option in ("adamw", "adam"):
        cfg = _compose([f"optimizer@autoencoder.module.optimizer={option}",
                        f"optimizer@diffusion.module.optimizer={option}"])
        ae, dm = cfg.autoencoder.module.optimizer, cfg.diffusion.module.optimizer
        assert (ae.lr, ae.weight_decay, list(ae.betas), ae.eps) == (2.0e-3, 0.0, [0.9, 0.999], 1.0e-8)
        assert (dm.lr, dm.weight_decay, list(dm.betas), dm.eps) == (3.0e-4, 0.0, [0.9, 0.99], 1.0e-8)
        assert ae._partial_ and dm._partial_


def test_experiment_qg_is_the_default_main_job():
    assert _compose(["experiment=qg"]) == _compose([])


def test_the_qg_preset_chooses_its_presets_and_qg_long_trains_them_longer():
    """data=qg picks conf/{autoencoder,diffusion}/qg.yaml; experiment=qg_long is the same
    configuration with 30 epochs for each net (and budgets that let them run); the QG preset's
    forecaster sees two previous states with the generated flag, sampled over 20 levels."""
    default = _compose([], hydra=True)
    choices = default.hydra.runtime.choices
    assert (choices.autoencoder, choices.diffusion, choices.sampler) == ("qg", "qg", "dpmpp_2m")
    assert default.autoencoder.net.fold_depth and default.sampler.steps == 20
    cond = default.diffusion.conditioning
    assert cond.previous == 2 and cond.generated and default.diffusion.module.condition_noise > 0
    long = _compose(["experiment=qg_long"], hydra=True)
    assert (long.hydra.runtime.choices.autoencoder, long.hydra.runtime.choices.diffusion) == ("qg", "qg")
    assert long.autoencoder.max_epochs == long.diffusion.max_epochs == 30
    assert default.autoencoder.max_epochs < 30 and default.diffusion.max_epochs < 30
    plain = _compose([], hydra=False)
    for key in ("autoencoder", "diffusion"):  # nothing else differs
        differ = {k for k in plain[key] if plain[key][k] != long[key][k]}
        assert differ == {"max_epochs", "max_time"}, (key, differ)
    assert long.data == plain.data and long.sampler == plain.sampler
    # the hour-long configuration before the preset, as the README's rows name it
    old = _compose(["data=qg", "autoencoder=default", "diffusion=default", "sampler=heun",
                    "sampler.steps=18"])
    assert not old.autoencoder.net.fold_depth and old.sampler.steps == 18
    assert list(old.autoencoder.net.factors) == [[2, 2], [2, 2]]


def test_experiment_ersst_chooses_the_ersst_presets():
    cfg = _compose(["experiment=ersst"], hydra=True)
    choices = cfg.hydra.runtime.choices
    assert (choices.data, choices.autoencoder, choices.diffusion, choices.sampler) == (
        "ersst", "ersst", "ersst", "dpmpp_2m")
    assert cfg.sampler.steps == 10
    assert cfg.data.source.endswith("/climate/xrtutorial_sst.mnmean.nc")
    # a command-line choice still wins over the experiment's
    chosen = _compose(["experiment=ersst", "autoencoder=default"], hydra=True).hydra.runtime.choices
    assert chosen.autoencoder == "default"


def test_the_progress_display_is_not_part_of_a_training_stage_identity():
    """A run trained with one progress bar is skipped (not refused) under another: the training
    stages' identities leave display-only callbacks out, and keep every other callback."""
    from simdiff.cli.autoencoder import stage_config as ae_config
    from simdiff.cli.diffusion import stage_config as dm_config

    bars = ["lightning.pytorch.callbacks.RichProgressBar", "simdiff.lit.progress.StageProgressBar"]
    for build in (ae_config, dm_config):
        configs = [build(_compose([f"+trainer.callbacks=[{{_target_: {bar}}}]"]), {"shape": [1]})
                   for bar in bars]
        assert configs[0] == configs[1] and configs[0]["trainer"]["callbacks"] == []
        early = "lightning.pytorch.callbacks.EarlyStopping"
        kept = build(_compose([f"trainer.callbacks=[{{_target_: {early}, monitor: val/loss}}]"]), {})
        assert kept["trainer"]["callbacks"] == [{"_target_": early, "monitor": "val/loss"}]


def test_data_noise_off_leaves_a_diffusion_identity_as_it_was():
    """``diffusion.module.data_noise`` at its default 0 is left out of the stage's identity (runs
    trained before the key are resumed, not refused); set, it is part of it."""
    from simdiff.cli.diffusion import stage_config as dm_config

    off = dm_config(_compose([]), {})
    assert "data_noise" not in off["diffusion"]["module"]
    on = dm_config(_compose(["diffusion.conditioning.generated=true", "diffusion.module.data_noise=0.5"]), {})
    assert on["diffusion"]["module"]["data_noise"] == 0.5


def test_the_readme_certify_command_sets_its_fractions_and_seeds():
    from simdiff.base.errors import DataError
    from simdiff.cli.certify import settings

    got = settings(_compose(["experiment=augment_dataset", "certify.fractions=[0.1,1.0]", "certify.seeds=5"]))
    assert got.fractions == (0.1, 1.0) and got.seeds == 5 and got.synthetic_share == 0.5
    assert got.downstream.levels == 3 and got.downstream.steps == 1500
    with pytest.raises(DataError, match=r"certify\.fractions"):
        settings(_compose(["certify.fractions=[0,1.0]"]))
    with pytest.raises(DataError, match=r"certify\.downstream"):
        settings(_compose(["certify.downstream.steps=0"]))
    # the molecules preset certifies with the label classifier (README: `simdiff certify ...
    # data=molecules`), and augment's README command sets its sample count
    assert settings(_compose(["data=molecules"])).task == "label"
    assert _compose(["data=molecules", "augment.samples=480"]).augment.samples == 480
