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

The downstream task of a forecasting dataset is the next-state emulator ``x_t -> x_{t+1}``
(:class:`Emulator`: a small residual U-shaped CNN over the normalised fields, periodic axes
padded circularly); a synthetic pair is a real state and a draw of its next state. Its score is the
cell-weighted mean squared error over the valid cells of every test pair, in normalised units
(persistence, predicting ``x_t``, is reported beside it).

Ratios are per seed (the same seed gives the same initial weights and the same batch stream
generator in every arm), then summarised by their mean and a 95 % Student-t interval over seeds.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

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
    steps: int = 300
    batch_size: int = 16
    lr: float = 2e-3

    def __post_init__(self) -> None:
        for name in ("width", "levels", "layers", "steps", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"certify.downstream.{name}={getattr(self, name)}: give a count >= 1")
        if not self.lr > 0:
            raise ValueError(f"certify.downstream.lr={self.lr}: give a positive learning rate")


def _convs(a: int, b: int, layers: int, periodic: Sequence[bool]) -> nn.Sequential:
    parts: list[nn.Module] = []
    for i in range(layers):
        parts += [GeoConv(a if i == 0 else b, b, 3, periodic), nn.GELU()]
    return nn.Sequential(*parts)


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


def train_emulator(
    parts: Sequence[tuple[np.ndarray, np.ndarray]],
    weights: np.ndarray,
    periodic: Sequence[bool],
    spec: Downstream,
    seed: int,
    shares: Sequence[float] | None = None,
) -> Emulator:
    """The downstream model trained on pairs ``inputs[i] -> targets[i]`` for ``spec.steps`` steps
    of Adam (cosine learning-rate decay), weighted mean squared error.

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
    if not parts or any(len(x) == 0 for x, _ in parts):
        raise ValueError("train_emulator: every part needs training pairs")
    b = spec.batch_size
    counts: list[int] | None = None
    if shares is not None:
        if len(shares) != len(parts):
            raise ValueError(f"train_emulator: {len(shares)} shares for {len(parts)} parts")
        counts = [round(float(sh) * b) for sh in shares[:-1]]
        counts.append(b - sum(counts))
        if min(counts) < 1:
            raise ValueError(f"train_emulator: shares {list(shares)} of a batch of {b} leave a part out")
    xs = [torch.from_numpy(x) for x, _ in parts]
    ys = [torch.from_numpy(y) for _, y in parts]
    x_all, y_all = (torch.cat(t) for t in (xs, ys))
    offsets = np.cumsum([0] + [len(x) for x in xs])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Emulator(x_all.shape[1], periodic, spec)
    opt = torch.optim.Adam(model.parameters(), lr=spec.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=spec.steps)
    w = torch.from_numpy(np.asarray(weights, dtype=np.float32))
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(spec.steps):
        if counts is None:
            idx = rng.integers(0, int(offsets[-1]), b)
        else:
            idx = np.concatenate([offsets[i] + rng.integers(0, len(xs[i]), k) for i, k in enumerate(counts)])
        idx = torch.from_numpy(idx)
        loss = _weighted_mse(model(x_all[idx]), y_all[idx], w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


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


def interval(values: Sequence[float]) -> dict[str, float | None]:
    """Mean and 95 % Student-t interval of per-seed values (None bounds for one seed)."""
    v = np.asarray(values, dtype=np.float64)
    mean = float(v.mean())
    if v.size < 2:
        return {"mean": mean, "lower": None, "upper": None}
    half = T975[min(v.size - 2, len(T975) - 1)] * float(v.std(ddof=1)) / math.sqrt(v.size)
    return {"mean": mean, "lower": mean - half, "upper": mean + half}


def summarise(errors: dict[str, dict[str, list[float]]], fractions: Sequence[float],
              persistence: float) -> dict:
    """The certificate's table from per-seed test errors.

    Args:
        errors: ``errors[arm][fraction key]`` = test errors by seed (``synthetic`` under key
            ``"all"``: it uses no real training data).
        fractions: the real-data fractions.
        persistence: the persistence error on the test pairs.

    Returns:
        ``{"by_fraction": {f: {"real", "real+synthetic", "synthetic": interval of the error,
        "ratio_real+synthetic", "ratio_synthetic": interval of the per-seed ratio to real,
        "verdict"}}, "persistence": ...}``.
    """
    out: dict = {"persistence": persistence, "by_fraction": {}}
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
