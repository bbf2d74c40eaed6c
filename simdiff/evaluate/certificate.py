"""Train on synthetic, test on real: does an augmented dataset help a downstream model?

The certificate trains one small, fixed downstream model three ways, with the same number of
optimisation steps and the same seeds, and scores each on the *real* test split:

* ``real``: real training pairs only;
* ``real+synthetic``: the real pairs and the synthetic ones, each batch half real and half
  synthetic by default (``synthetic_share``), so neither drowns the other;
* ``synthetic``: synthetic pairs only;

at several fractions of the real training data (the first ``f`` of the training pairs in
sample order: a shorter record). This is the classification accuracy score of Ravuri & Vinyals
(2019), "train on synthetic, test on real", applied to a scientific downstream task.

Two downstream tasks:

* ``next_state``, for a forecasting dataset: the next-state emulator ``x_t -> x_{t+1}``
  (:class:`Emulator`: a small residual U-shaped CNN over the normalised fields, periodic axes
  padded circularly); a synthetic pair is a real state and a draw of its next state. Its score is
  the cell-weighted mean squared error over the valid cells of every test pair, in normalised
  units (persistence, predicting ``x_t``, is reported beside it).
* ``label``, for a labelled dataset (molecules: which of the 12 molecules a density is): a
  classifier of the label from the field (:class:`Classifier`: strided convolutions and a mean
  over the grid, so it sees a field in any orientation the same way up to its receptive field);
  a synthetic example is a draw and the label that conditioned it. Its score is the error rate
  over the real test samples (1 - accuracy, the classification accuracy score's complement, as
  (misclassified + 1/2) / (n + 1): never 0, so a ratio to it stays defined). It is bounded, so
  one over-confident seed cannot swamp a ratio as its cross-entropy could; the mean
  cross-entropy is reported beside it, and the class prior of the real training samples is the
  baseline.

Ratios are per seed (the same seed gives the same initial weights and the same batch stream
generator in every arm), then summarised by their mean and a 95 % Student-t interval over seeds.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from simdiff.nets.conv import GeoConv
from simdiff.nets.padding import crop_to, pad_to_multiple

#: The arms, in the order of the report.
ARMS = ("real", "real+synthetic", "synthetic")
#: Student-t 97.5 % points by degrees of freedom (1..9), for the intervals over seeds.
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262)


@dataclass(frozen=True)
class Downstream:
    """The fixed downstream model and its optimisation (``conf/certify/``)."""

    width: int = 16
    levels: int = 3
    layers: int = 2
    steps: int = 1500
    batch_size: int = 16
    lr: float = 2e-3

    def __post_init__(self) -> None:
        for name in ("width", "levels", "layers", "steps", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"certify.downstream.{name}={getattr(self, name)}: give a count >= 1")
        if not self.lr > 0:
            raise ValueError(f"certify.downstream.lr={self.lr}: give a positive learning rate")


def _convs(a: int, b: int, layers: int, periodic: Sequence[bool], norm: bool = False) -> nn.Sequential:
    parts: list[nn.Module] = []
    for i in range(layers):
        parts += [GeoConv(a if i == 0 else b, b, 3, periodic), *([_norm(b)] if norm else []), nn.GELU()]
    return nn.Sequential(*parts)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class Emulator(nn.Module):
    """``x_{t+1} = x_t + f(x_t)``, ``f`` a small U-shaped CNN over (B, C, [D], H, W).

    ``levels`` scales of width ``width * 2**l``, each ``layers`` 3x3 convolutions with GELU
    (periodic axes wrapped); stride-2 convolutions go down, nearest-neighbour upsampling and a
    skip connection come back up, so the receptive field spans ``~2**levels`` times a plain
    stack's (the streamfunction of a potential-vorticity field is not local). Fields are padded to
    a multiple of ``2**(levels - 1)`` and cropped back.
    """

    def __init__(self, channels: int, periodic: Sequence[bool], spec: Downstream) -> None:
        super().__init__()
        self.periodic = tuple(bool(p) for p in periodic)
        widths = [spec.width * 2**level for level in range(spec.levels)]
        self.down = nn.ModuleList()
        self.encode = nn.ModuleList([_convs(channels, widths[0], spec.layers, periodic)])
        for a, b in itertools.pairwise(widths):
            self.down.append(GeoConv(a, a, 3, periodic, stride=2))
            self.encode.append(_convs(a, b, spec.layers, periodic))
        self.decode = nn.ModuleList(_convs(b + a, a, spec.layers, periodic)
                                    for a, b in itertools.pairwise(widths))
        self.out = GeoConv(widths[0], channels, 3, periodic)
        self.multiple = 2 ** (spec.levels - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, shape = pad_to_multiple(x, [self.multiple] * len(self.periodic), self.periodic)
        skips = []
        for i, block in enumerate(self.encode):
            if i:
                h = self.down[i - 1](h)
            h = block(h)
            skips.append(h)
        for i in range(len(self.decode) - 1, -1, -1):
            h = nn.functional.interpolate(h, size=skips[i].shape[2:], mode="nearest")
            h = self.decode[i](torch.cat([h, skips[i]], dim=1))
        return x + crop_to(self.out(h), shape)


def _weighted_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (((pred - target) ** 2) * weights).sum() / (weights.sum() * pred.shape[0])


class Classifier(nn.Module):
    """Logits of ``classes`` labels from a field (B, C, [D], H, W).

    A 4x4 patch embedding (a stride-4 convolution, learnt, so no detail inside a patch is lost to
    averaging) into ``width`` channels, then ``levels`` resolutions of width ``width * 2**l``, each
    ``layers`` 3x3 convolutions with group norm and GELU (a stride-2 convolution between them;
    periodic axes wrapped), a mean over the grid and a linear layer. The patch embedding keeps a
    32^3 voxel grid affordable on a CPU (600 steps of 32 in ~27 s on 2 cores); the group norms
    keep the optimisation stable across seeds.
    """

    def __init__(self, channels: int, classes: int, periodic: Sequence[bool], spec: Downstream) -> None:
        super().__init__()
        widths = [spec.width * 2**level for level in range(spec.levels)]
        parts: list[nn.Module] = [GeoConv(channels, widths[0], 4, periodic, stride=4, pad=False),
                                  _norm(widths[0]), nn.GELU(),
                                  _convs(widths[0], widths[0], spec.layers, periodic, norm=True)]
        for a, b in itertools.pairwise(widths):
            parts += [GeoConv(a, b, 3, periodic, stride=2), _norm(b), nn.GELU(),
                      _convs(b, b, spec.layers, periodic, norm=True)]
        self.body = nn.Sequential(*parts)
        self.head = nn.Linear(widths[-1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).flatten(2).mean(-1))


def _fit(
    model: nn.Module,
    parts: Sequence[tuple[np.ndarray, np.ndarray]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    spec: Downstream,
    seed: int,
    shares: Sequence[float] | None,
) -> nn.Module:
    """``spec.steps`` steps of Adam (cosine learning-rate decay) on batches of ``parts``: drawn
    uniformly from all parts together, or ``round(share * batch_size)`` from each part (the last
    part the rest). Deterministic for a seed on one machine."""
    if not parts or any(len(x) == 0 for x, _ in parts):
        raise ValueError("certificate: every part needs training examples")
    b = spec.batch_size
    counts: list[int] | None = None
    if shares is not None:
        if len(shares) != len(parts):
            raise ValueError(f"certificate: {len(shares)} shares for {len(parts)} parts")
        counts = [round(float(sh) * b) for sh in shares[:-1]]
        counts.append(b - sum(counts))
        if min(counts) < 1:
            raise ValueError(f"certificate: shares {list(shares)} of a batch of {b} leave a part out")
    xs = [torch.from_numpy(x) for x, _ in parts]
    x_all = torch.cat(xs)
    y_all = torch.cat([torch.from_numpy(y) for _, y in parts])
    offsets = np.cumsum([0] + [len(x) for x in xs])
    opt = torch.optim.Adam(model.parameters(), lr=spec.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=spec.steps)
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(spec.steps):
        if counts is None:
            idx = rng.integers(0, int(offsets[-1]), b)
        else:
            idx = np.concatenate([offsets[i] + rng.integers(0, len(xs[i]), k) for i, k in enumerate(counts)])
        idx = torch.from_numpy(idx)
        loss = loss_fn(model(x_all[idx]), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def _seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def train_emulator(
    parts: Sequence[tuple[np.ndarray, np.ndarray]],
    weights: np.ndarray,
    periodic: Sequence[bool],
    spec: Downstream,
    seed: int,
    shares: Sequence[float] | None = None,
) -> nn.Module:
    """The downstream emulator trained on pairs ``inputs[i] -> targets[i]`` for ``spec.steps``
    steps of Adam (cosine learning-rate decay), weighted mean squared error.

    Args:
        parts: one or more ``(inputs, targets)``, each (N, C, [D], H, W) float32 normalised
            fields, 0 at masked cells (e.g. the real pairs and the synthetic ones).
        weights: (C, [D], H, W) the loss weight of each cell (cell weight x validity).
        periodic: per spatial axis, True where it wraps.
        seed: the initial weights and the batch stream.
        shares: per part, its share of every batch (``round(share * batch_size)`` pairs, the
            last part the rest); None: batches drawn uniformly from all parts together.

    Returns:
        The trained model (eval mode). Deterministic for a seed on one machine.
    """
    model = _seeded(seed, lambda: Emulator(parts[0][0].shape[1], periodic, spec))
    w = torch.from_numpy(np.asarray(weights, dtype=np.float32))
    return _fit(model, parts, lambda pred, y: _weighted_mse(pred, y, w), spec, seed, shares)


def train_classifier(
    parts: Sequence[tuple[np.ndarray, np.ndarray]],
    classes: int,
    periodic: Sequence[bool],
    spec: Downstream,
    seed: int,
    shares: Sequence[float] | None = None,
) -> nn.Module:
    """The downstream classifier trained on ``(fields, labels)`` parts (fields (N, C, [D], H, W)
    float32, labels (N,) int64 in ``0..classes-1``) with cross-entropy; otherwise as
    :func:`train_emulator`."""
    model = _seeded(seed, lambda: Classifier(parts[0][0].shape[1], classes, periodic, spec))
    return _fit(model, parts, nn.functional.cross_entropy, spec, seed, shares)


@torch.no_grad()
def downstream_error(model: nn.Module | None, inputs: np.ndarray, targets: np.ndarray, weights: np.ndarray,
                     batch_size: int = 64) -> float:
    """Weighted mean squared error of ``model`` (None: persistence, predicting the input) over
    every test pair."""
    w = torch.from_numpy(np.asarray(weights, dtype=np.float32))
    total = 0.0
    for i in range(0, len(inputs), batch_size):
        x, y = torch.from_numpy(inputs[i : i + batch_size]), torch.from_numpy(targets[i : i + batch_size])
        pred = x if model is None else model(x)
        total += float(_weighted_mse(pred, y, w)) * len(x)
    return total / len(inputs)


@torch.no_grad()
def label_scores(model: nn.Module | None, fields: np.ndarray, labels: np.ndarray, prior: np.ndarray,
                 batch_size: int = 64) -> dict[str, float]:
    """Mean cross-entropy (nats) and accuracy of ``model`` over every test sample; None: the
    class prior ``prior`` (classes,) predicted for every sample (a floor of 1e-6 per class)."""
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    if model is None:
        p = np.maximum(np.asarray(prior, dtype=np.float64), 1e-6)
        logits = torch.from_numpy(np.log(p / p.sum())).float().expand(len(y), -1)
    else:
        logits = torch.cat([model(torch.from_numpy(fields[i : i + batch_size]))
                            for i in range(0, len(fields), batch_size)])
    return {"cross_entropy": float(nn.functional.cross_entropy(logits, y)),
            "accuracy": float((logits.argmax(1) == y).double().mean())}


def interval(values: Sequence[float]) -> dict[str, float | None]:
    """Mean and 95 % Student-t interval of per-seed values (None bounds for one seed)."""
    v = np.asarray(values, dtype=np.float64)
    mean = float(v.mean())
    if v.size < 2:
        return {"mean": mean, "lower": None, "upper": None}
    half = T975[min(v.size - 2, len(T975) - 1)] * float(v.std(ddof=1)) / math.sqrt(v.size)
    return {"mean": mean, "lower": mean - half, "upper": mean + half}


def summarise(errors: dict[str, dict[str, list[float]]], fractions: Sequence[float],
              baseline: dict[str, Any]) -> dict:
    """The certificate's table from per-seed test errors.

    Args:
        errors: ``errors[arm][fraction key]`` = test errors by seed (``synthetic`` under key
            ``"all"``: it uses no real training data).
        fractions: the real-data fractions.
        baseline: the trivial model's score on the test set, ``{"name", "error"}`` (persistence;
            the class prior).

    Returns:
        ``{"by_fraction": {f: {"real", "real+synthetic", "synthetic": interval of the error,
        "ratio_real+synthetic", "ratio_synthetic": interval of the per-seed ratio to real,
        "verdict"}}, "baseline": baseline}``.
    """
    out: dict = {"baseline": dict(baseline), "by_fraction": {}}
    syn = errors["synthetic"]["all"]
    for f in fractions:
        key = fraction_key(f)
        real, mixed = errors["real"][key], errors["real+synthetic"][key]
        mixed_ratio = interval([m / r for m, r in zip(mixed, real, strict=True)])
        entry = {
            "real": interval(real),
            "real+synthetic": interval(mixed),
            "synthetic": interval(syn),
            "ratio_real+synthetic": mixed_ratio,
            "ratio_synthetic": interval([s / r for s, r in zip(syn, real, strict=True)]),
        }
        upper, lower = mixed_ratio["upper"], mixed_ratio["lower"]
        if upper is not None and upper < 1.0:
            entry["verdict"] = "synthetic data helps (the interval of real+synthetic / real lies below 1)"
        elif lower is not None and lower > 1.0:
            entry["verdict"] = "synthetic data hurts (the interval of real+synthetic / real lies above 1)"
        else:
            entry["verdict"] = "no measurable effect (the interval of real+synthetic / real contains 1)"
        out["by_fraction"][key] = entry
    return out


def fraction_key(f: float) -> str:
    """A fraction's key in the certificate: ``"0.05"``, ``"1"``."""
    return f"{float(f):g}"
