"""A training store's inverse normalisation in torch, differentiable: normalised fields -> physical amounts.

:func:`simdiff.data.stores.stats.denormalise` maps a store's normalised fields back to physical
units with numpy and xarray, outside any graph. A loss on a physical quantity, such as the
electron count Σρ·dV of a decoded density, needs the same map inside the graph, so its gradient
reaches the network. :class:`PhysicalAmount` is that map for the variables whose transform is
:class:`~simdiff.data.transforms.Log1p` (non-negative, extensive amounts: densities,
precipitation), relative to a per-sample reference field and standardised by the store's
reference-level profile where the store has them:

    u = z std + mean,    d = m(t) + s(t) u  (profile),    y = d + t,    x = scale max(expm1(y), 0),

with ``t = log1p(reference / scale)`` (:mod:`simdiff.data.stores.profile`, whose piecewise-linear
``m`` and ``s`` are evaluated here with :func:`torch.searchsorted`, constant past the end bins, as
``np.interp``). The Log1p censoring below ``zero_below`` is left out: it is a step, with no
gradient, and moves at most ``zero_below`` per cell.

The reference levels of every store sample are held in memory (float32, one field per sample
and referenced variable) and picked by each batch's ``index``; they are not saved in checkpoints.
"""

from __future__ import annotations

import numpy as np
import torch

from simdiff.data.stores import profile as level_profile
from simdiff.data.stores.stats import statistics
from simdiff.data.stores.training import TrainingStore
from simdiff.data.transforms import Log1p

#: Transformed values are capped here before ``expm1``: e^30 times the Log1p scale is far past any
#: physical amount, and the cap keeps the count term of a wild early reconstruction finite (its
#: squared relative error would overflow float32 otherwise).
Y_MAX = 30.0


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """``np.interp(x, xp, fp)`` for increasing ``xp``, elementwise, in torch."""
    if xp.numel() == 1:
        return fp.expand_as(x).clone()
    k = torch.searchsorted(xp, x.contiguous()).clamp(1, xp.numel() - 1)
    x0, x1, f0, f1 = xp[k - 1], xp[k], fp[k - 1], fp[k]
    w = ((x - x0) / (x1 - x0)).clamp(0, 1)
    return f0 + w * (f1 - f0)


class PhysicalAmount(torch.nn.Module):
    """Normalised ``(B, C, [D], Y, X)`` fields of store samples ``index`` -> physical amounts.

    Build with :meth:`from_store`. Every channel must have a :class:`Log1p` transform: the map
    is meant for amounts whose sums are physical (a density's electron count), and an
    affine variable (temperature) has no such sum.
    """

    def __init__(self, names: list[str], scale: np.ndarray, mean: np.ndarray, std: np.ndarray,
                 levels: dict[int, np.ndarray], profiles: dict[int, level_profile.Profile | None]) -> None:
        super().__init__()
        self.names = list(names)
        # (C,) one value per channel, or (C, D, 1, 1) one per level: a leading batch axis here,
        # trailing spatial ones in forward
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32), persistent=False)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32)[None], persistent=False)
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32)[None], persistent=False)
        self.referenced = sorted(levels)
        for c in self.referenced:
            self.register_buffer(f"level_{c}", torch.as_tensor(levels[c], dtype=torch.float32),
                                 persistent=False)
            p = profiles[c]
            if p is not None:
                for part in ("level", "mean", "scale"):
                    self.register_buffer(f"profile_{part}_{c}",
                                         torch.as_tensor(getattr(p, part), dtype=torch.float32),
                                         persistent=False)

    @classmethod
    def from_store(cls, store: TrainingStore) -> PhysicalAmount:
        """The map of ``store``'s normalisation; a ValueError naming the variable whose transform
        is not Log1p."""
        names = list(store.variables)
        transforms = store.transforms
        bad = [n for n in names if not isinstance(transforms.get(n), Log1p)]
        if bad:
            raise ValueError(
                f"{store.path}: a physical amount (autoencoder.loss.count_weight > 0) needs a Log1p "
                f"transform on every variable (non-negative amounts whose sum is physical); "
                f"{bad} have {[type(transforms[n]).__name__ if n in transforms else 'none' for n in bad]}; "
                "set autoencoder.loss.count_weight=0 for this dataset"
            )
        ds = store.dataset()
        stats = statistics(ds)
        mean, std = (stats[k].transpose("channel", ...).values.astype(np.float32) for k in ("mean", "std"))
        if mean.ndim == 2:  # per level: (C, D) broadcasts as (1, C, D, 1, 1)
            mean, std = mean[..., None, None], std[..., None, None]
        scale = np.array([transforms[n].scale for n in names], dtype=np.float32)
        levels, profiles = {}, {}
        if "reference" in ds:
            refs = [str(c) for c in ds["reference_channel"].values]
            for c, name in enumerate(names):
                if name in refs:
                    ref = ds["reference"].sel(reference_channel=name).values.astype(np.float64)
                    levels[c] = np.log1p(ref / transforms[name].scale).astype(np.float32)
                    profiles[c] = level_profile.from_dataset(ds, name)
        return cls(names, scale, mean, std, levels, profiles)

    def forward(self, z: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Physical amounts (B, C, [D], Y, X), float32, non-negative; ``index`` (B,) the store
        samples (their reference fields)."""
        spatial = (1,) * (z.ndim - self.mean.ndim)
        std, mean = (a.reshape(*a.shape, *spatial) for a in (self.std, self.mean))
        y = z.float() * std + mean
        if self.referenced:
            parts = list(y.unbind(1))
            for c in self.referenced:
                t = getattr(self, f"level_{c}")[index.to(self.scale.device)]
                u = parts[c]
                if hasattr(self, f"profile_level_{c}"):
                    lv, m, s = (getattr(self, f"profile_{k}_{c}") for k in ("level", "mean", "scale"))
                    u = _interp(t, lv, m) + _interp(t, lv, s) * u
                parts[c] = u + t
            y = torch.stack(parts, 1)
        return self.scale.reshape(1, -1, *(1,) * (z.ndim - 2)) * torch.expm1(y.clamp(max=Y_MAX)).clamp_min(0)
