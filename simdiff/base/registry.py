"""Which ``_target_``s simdiff will build: an allowlist checked before anything is imported or called.

Two kinds of spec reach an importer:

* **Stored specs**, read back from files simdiff wrote earlier and anyone could have edited:
  the ``transforms`` attribute of a training or latent store (rebuilt by
  :func:`simdiff.data.transforms.from_spec`) and the networks in the ``config.yaml`` saved
  beside the autoencoder and diffusion checkpoints (rebuilt by ``encode``, ``generate``,
  ``augment`` and ``evaluate``). Their ``_target_`` must be one of the classes in
  :data:`STORED` (what simdiff ships and stores) or one registered on purpose with
  :func:`register`; strings that still hold an interpolation (``${...}``) are refused too,
  because Hydra would resolve them, and ``${oc.create:...}`` builds new ``_target_`` nodes.
* **Config targets**, from the composed Hydra config (presets, experiment files, overrides),
  checked by the CLI before any stage instantiates anything (:func:`check_config`). A target
  must be stored-spec class, or sit under one of :data:`CONFIG_PREFIXES` (simdiff and the parts
  of torch and Lightning a config builds: optimisers, layers, the Trainer, callbacks, loggers,
  strategies, plugins), or be listed in the config's ``allowed_targets``. A target under a
  prefix is then resolved and must be a class, or a module-level function, defined under an
  allowed prefix: ``simdiff.data.stores.prepare.os.system`` names ``os.system`` through an import and
  is refused, as are methods (``TorchCheckpointIO.load_checkpoint`` with ``self`` passed as a
  keyword would unpickle any file) and private names.

Whole ``torch.`` and ``lightning.`` are not allowed: ``torch.hub.load`` runs a repository's
``hubconf.py``, ``torch.load`` unpickles, ``torch.utils.cpp_extension.load_inline`` compiles
and runs C++. Everything refused raises :class:`~simdiff.base.errors.DataError` (exit code 2
from the CLI) naming the file, the key and the value, and how to allow a class on purpose.

This module is Hydra-free and imports nothing but the standard library until a target has
passed the string check.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from simdiff.base.errors import DataError

#: Classes (and functions) simdiff ships whose specs it stores and rebuilds from files:
#: transforms (store attrs), the autoencoder, its bottlenecks and loss, the denoiser and the
#: samplers (the ``config.yaml`` beside each checkpoint). Exact dotted paths, as written.
STORED: frozenset[str] = frozenset({
    "simdiff.data.transforms.Identity",
    "simdiff.data.transforms.Log1p",
    "simdiff.data.transforms.Clip",
    "simdiff.nets.autoencoder.Autoencoder",
    "simdiff.nets.bottleneck.BoundedBottleneck",
    "simdiff.nets.bottleneck.KLBottleneck",
    "simdiff.nets.losses.ReconstructionLoss",
    "simdiff.nets.unet.UNet",
    "simdiff.diffusion.samplers.sample_euler",
    "simdiff.diffusion.samplers.sample_heun",
    "simdiff.diffusion.samplers.sample_dpmpp_2m",
})

#: Targets of the shipped config tree that are not stored specs (exact paths: no import needed
#: to check them).
SHIPPED: frozenset[str] = frozenset({
    "lightning.Trainer",
    "lightning.pytorch.Trainer",
    "lightning.pytorch.callbacks.EarlyStopping",
    "lightning.pytorch.callbacks.RichProgressBar",
    "simdiff.runs.modes.Forecast",  # generate/mode: the generation modes (the rest of runs/ is denied)
    "simdiff.runs.modes.Sample",
    "simdiff.runs.modes.Conditional",
    # simdiff's own nodes of every composed config: checked by name, so that a command that does
    # not train (prepare, generate, evaluate) does not import Lightning's trainer to check them
    "simdiff.data.loading.datamodule.SimdiffDataModule",
    "simdiff.data.stores.prepare.PrepareOptions",
    "simdiff.data.stores.cluster.LocalCluster",
    "simdiff.data.stores.cluster.SlurmCluster",
    "simdiff.data.stores.cluster.SchedulerAddress",
    "simdiff.data.sources.climate.ClimateSource",
    "simdiff.data.sources.molecular.CubeSource",
    "simdiff.data.sources.simulators.qg_source.QGSource",
    "simdiff.data.sources.simulators.molecules.MoleculeDensities",
    "simdiff.lit.autoencoder.AutoencoderModule",
    "simdiff.lit.diffusion.DiffusionModule",
    "simdiff.lit.progress.StageProgressBar",
    "simdiff.diffusion.sampling.Sampling",
    "simdiff.generate.augment.BoundsFilter",
})

#: Where config targets may come from (a prefix ends with "."); see the module docstring.
CONFIG_PREFIXES: tuple[str, ...] = (
    "simdiff.",
    "torch.optim.",
    "torch.nn.",
    *(f"{pkg}.{sub}." for pkg in ("lightning.pytorch", "pytorch_lightning")
      for sub in ("trainer", "callbacks", "loggers", "strategies", "plugins", "profilers", "accelerators")),
    "lightning.fabric.plugins.",  # cluster environments, precision and checkpoint-IO plugins live here
    "lightning_fabric.plugins.",
)

#: Never from a config, although under an allowed prefix: the CLI (it would run other
#: commands), this module (it would widen the allowlist) and the run library (it writes,
#: copies and publishes files; its generation modes are in :data:`SHIPPED`).
CONFIG_DENIED: tuple[str, ...] = ("simdiff.cli.", "simdiff.base.registry.", "simdiff.runs.")

_registered: set[str] = set()

_FIX = ("If you wrote this class and trust it, allow it on purpose: in Python "
        "`simdiff.base.registry.register({value!r})`, on the command line or in your config "
        "`allowed_targets=[{value}]` (a prefix ending in '.' allows a whole package)")


def _name(target: object) -> str:
    if isinstance(target, str):
        return target
    module, qualname = getattr(target, "__module__", None), getattr(target, "__qualname__", None)
    if not (isinstance(module, str) and isinstance(qualname, str)):
        raise TypeError(f"register() takes classes, functions or dotted paths, got {target!r}")
    return f"{module}.{qualname}"


def register(*targets: object) -> None:
    """Allow ``targets`` to be rebuilt from stored specs and named in configs.

    Each is a class or function, or its dotted path; a path ending in ``.`` allows everything
    defined under that package. Call it before the stage that reads the spec back (the CLI
    calls it with the config's ``allowed_targets``).
    """
    for t in targets:
        name = _name(t)
        if not name.strip(".") or " " in name:
            raise ValueError(f"not a dotted path: {name!r}")
        _registered.add(name)


def registered() -> frozenset[str]:
    """What :func:`register` added in this process (exact paths and ``pkg.`` prefixes)."""
    return frozenset(_registered)


def _matches(path: str, entries: Iterable[str]) -> bool:
    return any(path == e or (e.endswith(".") and path.startswith(e)) for e in entries)


def is_stored_allowed(path: str) -> bool:
    """True when a stored spec may name ``path``: :data:`STORED` or registered."""
    return path in STORED or _matches(path, _registered)


def iter_targets(tree: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted key, value)`` of every ``_target_`` in a nest of mappings and lists."""
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            sub = f"{key}.{k}" if key else str(k)
            if k == "_target_":
                yield sub, v
            else:
                yield from iter_targets(v, sub)
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from iter_targets(v, f"{key}[{i}]")


def _interpolations(tree: Any, key: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            yield from _interpolations(v, f"{key}.{k}" if key else str(k))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from _interpolations(v, f"{key}[{i}]")
    elif isinstance(tree, str) and "${" in tree:
        yield key, tree


def _refuse_interpolations(tree: Any, source: str, key: str, why: str) -> None:
    for k, v in _interpolations(tree, key):
        raise DataError(f"{source}: {k} = {v!r} holds an interpolation; {why}. Refused: a stage would "
                        "resolve it again when it builds this node, and ${oc.create:...} or "
                        "${oc.decode:...} can build a new _target_ there. Fix: write the plain value")


def check_stored(spec: Any, *, source: str, key: str) -> None:
    """Refuse (DataError) a stored spec unless every ``_target_`` in it is allowed.

    Args:
        spec: the spec as read from the file (nested mappings and lists).
        source: the file it was read from (named in the message).
        key: where in the file (e.g. ``transforms.pr`` or ``autoencoder.net``).
    """
    found = False
    for k, value in iter_targets(spec, key):
        found = True
        if not (isinstance(value, str) and is_stored_allowed(value)):
            raise DataError(
                f"{source}: {k} = {value!r} is not a class simdiff rebuilds from stored specs "
                f"(allowed: {', '.join(sorted(STORED | _registered))}); nothing was imported or run. "
                "The file was edited or written by other code: regenerate it with the simdiff stage "
                "that writes it. " + _FIX.format(value=value)
            )
    if not found:
        raise DataError(f"{source}: {key} has no _target_; expected a spec written by simdiff "
                        "(`_target_` + keyword arguments). Regenerate the file with the stage that writes it")
    _refuse_interpolations(spec, source, key, "specs simdiff stores are resolved")


def locate(path: str) -> Any:
    """Import the module part of ``path`` and return the attribute it names (no check: call a
    ``check_*`` first)."""
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"no module in {path!r}")


def build_stored(spec: Mapping[str, Any], *, source: str, key: str) -> Any:
    """Check a flat stored spec (``_target_`` + keyword arguments) and call its target."""
    check_stored(spec, source=source, key=key)
    kwargs = dict(spec)
    target = kwargs.pop("_target_")
    try:
        return locate(target)(**kwargs)
    except (ImportError, AttributeError, TypeError, ValueError) as err:
        raise DataError(f"{source}: {key} = {dict(spec)!r} cannot be rebuilt: {err}. Regenerate the "
                        "file with the simdiff stage that writes it") from err


def build_spec(spec: Mapping[str, Any], *, source: str, key: str, **extra: Any) -> Any:
    """Check a stored spec (``_target_`` nodes, nested) against the allowlist, then build it.

    Nested nodes are built first, as Hydra's ``instantiate`` does; a node with ``_partial_:
    true`` becomes a :func:`functools.partial`. ``extra`` keyword arguments go to the top node
    (the data-dependent ones a stage passes, e.g. ``in_channels``). No Hydra: the Python API
    rebuilds a trained run's networks with this.

    Raises:
        DataError: a ``_target_`` outside the allowlist (nothing imported or called), or a
            spec that does not fit its class.
    """
    check_stored(spec, source=source, key=key)

    def build(node: Any, top: bool) -> Any:
        if isinstance(node, Mapping):
            if "_target_" not in node:
                return {k: build(v, False) for k, v in node.items()}
            kwargs = {k: build(v, False) for k, v in node.items() if k not in ("_target_", "_partial_")}
            if top:
                kwargs.update(extra)
            target = locate(str(node["_target_"]))
            return functools.partial(target, **kwargs) if node.get("_partial_") else target(**kwargs)
        if isinstance(node, (list, tuple)):
            return [build(v, False) for v in node]
        return node

    try:
        return build(spec, True)
    except (ImportError, AttributeError, TypeError) as err:
        raise DataError(f"{source}: {key} cannot be rebuilt: {err}. Regenerate the file with the "
                        "simdiff stage that writes it") from err


def _defined_under(obj: Any, prefixes: Iterable[str]) -> bool:
    """True for a class, or a module-level function, whose home module is under ``prefixes``."""
    if not (inspect.isclass(obj) or (inspect.isfunction(obj) and "." not in obj.__qualname__)):
        return False
    module = getattr(obj, "__module__", None)
    return isinstance(module, str) and any(f"{module}.".startswith(p) for p in prefixes)


def config_target_allowed(path: str, allowed: Iterable[str] = ()) -> bool:
    """Whether a config may name ``path`` (see the module docstring); imports only allowed modules."""
    extra = [*_registered, *allowed]
    if path in STORED or path in SHIPPED or path in extra:
        return True
    if any(part.startswith("_") for part in path.split(".")) or _matches(path, CONFIG_DENIED):
        return False
    prefixes = [*CONFIG_PREFIXES, *(e for e in extra if e.endswith("."))]
    if not _matches(path, prefixes):
        return False
    try:
        obj = locate(path)
    except (ImportError, AttributeError):
        return False  # refused rather than left to an importer that may resolve it otherwise
    return _defined_under(obj, prefixes) and not _matches(f"{obj.__module__}.", CONFIG_DENIED)


def check_config(config: Mapping[str, Any], *, source: str, allowed: Iterable[str] = ()) -> None:
    """Refuse (DataError) a resolved config with a ``_target_`` a config may not name.

    Args:
        config: the resolved config as plain mappings and lists.
        source: what it came from (named in the message).
        allowed: the user's extra dotted paths or ``pkg.`` prefixes (``allowed_targets``).
    """
    allowed = list(allowed)
    for k, value in iter_targets(config):
        if not (isinstance(value, str) and config_target_allowed(value, allowed)):
            raise DataError(
                f"{source}: {k} = {value!r} is not a target simdiff instantiates from a config (or it does "
                "not exist: check the spelling); nothing was instantiated or written. Allowed: simdiff's "
                "classes and functions, torch.optim and torch.nn classes, Lightning's Trainer, callbacks, "
                "loggers, strategies, plugins, profilers and accelerators (not methods, private names, "
                "or names reached through an import; see simdiff/base/registry.py). "
                + _FIX.format(value=value)
            )
    _refuse_interpolations(config, source, "", "an escaped interpolation (\\${...}) survives resolving")
