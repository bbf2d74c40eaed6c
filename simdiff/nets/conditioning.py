"""The conditioner: a batch's conditions turned into the denoiser's two condition inputs.

A conditional denoiser ``D(x; sigma, c)`` takes its conditions in two forms (Ho & Salimans
2022; the conditioning of EDM's class-conditional nets, Karras et al. 2022):

* ``spatial`` (B, C_s, [D], H, W), concatenated to the noisy state: the previous state(s)
  ``x_t, x_{t-1}, ...`` when forecasting ``x_{t+1}`` (oldest first, as the loader gives them),
  then static fields (e.g. the latent cell weights, which carry cos(lat), or a land mask),
  then per-sample fields (``atoms``: a molecule's geometry as Gaussian atom densities on the
  latent grid, :mod:`simdiff.data.stores.atoms`), then one indicator channel per droppable
  spatial condition (1 present, 0 dropped);
* ``vector`` (B, E), added to the noise-level embedding: time features (sin/cos of day of
  year and hour), scalar covariates (e.g. forcing) through small MLPs, and class labels
  (e.g. molecule identity) through an embedding table; their sum.

Classifier-free guidance needs the unconditional model too, trained by dropping conditions at
random: each condition ``k`` is dropped for a sample with probability ``dropout[k]``. A dropped
vector condition contributes zero; a dropped spatial condition is zeroed and its indicator
channel says so, so "dropped" is never confused with "the state is zero". At sampling,
``drop={"label": ones}`` gives the unconditional estimate that guidance mixes with the
conditional one (:func:`simdiff.diffusion.guidance.classifier_free_guidance`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from simdiff.data.loading.patch import crop_shared

DROPPABLE = ("previous", "time_features", "covariates", "label", "atoms")


def _mlp(n_in: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, n_out), nn.SiLU(), nn.Linear(n_out, n_out))


class Conditioner(nn.Module):
    """Builds ``{"spatial", "vector"}`` for the denoiser net from a batch's conditions.

    Args:
        emb_dim: E, the width of the denoiser's noise embedding.
        state_channels: C, channels of one (latent) state.
        previous: previous states concatenated (0: none; 1: x_t; 2: x_t, x_{t-1}).
        static_channels: channels of the static fields (given at construction as ``static``).
        static: (C_static, [D], H, W) fixed fields, concatenated to every sample.
        time_features: F, number of time features (0: not used).
        covariates: K, number of scalar covariates (0: not used).
        labels: number of label classes (0: not used).
        atoms: channels of the per-sample ``atoms`` fields (0: not used).
        dropout: per condition name in ``DROPPABLE``, the training drop probability.
        generated: add one indicator channel per row, ``generated`` (B,) in the batch: 1 where
            the newest previous state is the model's own (a rollout's leads >= 2; in training, a
            state perturbed by ``condition_noise``), 0 where it is data (lead 1). Needs
            ``previous`` >= 1.
    """

    def __init__(
        self,
        emb_dim: int,
        state_channels: int,
        *,
        previous: int = 0,
        static: torch.Tensor | None = None,
        time_features: int = 0,
        covariates: int = 0,
        labels: int = 0,
        atoms: int = 0,
        dropout: Mapping[str, float] | None = None,
        generated: bool = False,
    ) -> None:
        super().__init__()
        if generated and int(previous) < 1:
            raise ValueError("Conditioner: the generated flag says whether the previous state is the "
                             "model's own, so it needs previous >= 1 (conditioning.previous)")
        dropout = dict(dropout or {})
        unknown = sorted(set(dropout) - set(DROPPABLE))
        if unknown:
            raise ValueError(f"Conditioner: dropout for unknown conditions {unknown}; "
                             f"known: {list(DROPPABLE)}")
        for name, p in dropout.items():
            if not 0.0 <= float(p) < 1.0:
                raise ValueError(f"Conditioner: dropout[{name!r}] must be in [0, 1), got {p}")
        self.emb_dim = int(emb_dim)
        self.state_channels = int(state_channels)
        self.previous = int(previous)
        if static is not None:
            self.register_buffer("static", static.to(torch.float32))
        else:
            self.static = None
        self.n_time_features = int(time_features)
        self.n_covariates = int(covariates)
        self.n_labels = int(labels)
        self.n_atoms = int(atoms)
        self.generated = bool(generated)
        self.dropout = {k: float(v) for k, v in dropout.items() if self.uses(k)}
        self.time_mlp = _mlp(self.n_time_features, self.emb_dim) if self.n_time_features else None
        self.covariate_mlp = _mlp(self.n_covariates, self.emb_dim) if self.n_covariates else None
        self.label_emb = nn.Embedding(self.n_labels, self.emb_dim) if self.n_labels else None

    def uses(self, name: str) -> bool:
        """Whether condition ``name`` is configured."""
        return {
            "previous": self.previous > 0,
            "time_features": self.n_time_features > 0,
            "covariates": self.n_covariates > 0,
            "label": self.n_labels > 0,
            "atoms": self.n_atoms > 0,
        }[name]

    @property
    def spatial_channels(self) -> int:
        """C_s, the channels of ``spatial`` (0 when there is none)."""
        n = self.previous * self.state_channels + (0 if self.static is None else int(self.static.shape[0]))
        n += self.n_atoms + int(self.generated)
        return n + sum(1 for k in ("previous", "atoms") if self.uses(k) and k in self.dropout)

    @property
    def has_vector(self) -> bool:
        """Whether ``vector`` is produced."""
        return any(self.uses(k) for k in ("time_features", "covariates", "label"))

    def sample_drop(self, batch: int, *, generator: torch.Generator | None = None,
                    device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """Training drops: per condition with a dropout probability, a (B,) bool, True = dropped."""
        out = {}
        for name in DROPPABLE:
            if name in self.dropout:
                u = torch.rand(batch, generator=generator, device=device)
                out[name] = u < self.dropout[name]
        return out

    def forward(
        self,
        batch_size: int,
        *,
        previous: torch.Tensor | None = None,
        time_features: torch.Tensor | None = None,
        covariates: torch.Tensor | None = None,
        label: torch.Tensor | None = None,
        atoms: torch.Tensor | None = None,
        generated: torch.Tensor | None = None,
        drop: Mapping[str, torch.Tensor] | None = None,
        origin: torch.Tensor | None = None,
        size: tuple[int, ...] | None = None,
    ) -> dict[str, torch.Tensor]:
        """The net's condition inputs.

        Args:
            batch_size: B.
            previous: (B, W-1, C, [D], H, W) previous states, oldest first; the last
                ``self.previous`` are used.
            time_features: (B, F); covariates: (B, K); label: (B,) int64.
            atoms: (B, A, [D], H, W) per-sample fields on the state's grid.
            generated: (B,) 1 where the newest previous state is the model's own, 0 (or None:
                all) where it is data; used with ``self.generated``.
            drop: per condition, (B,) bool, True where it is dropped.
            origin, size: for states that are crops (``simdiff.data.loading.patch``): (B, ndim) crop
                origins and the crop's spatial ``([D], H, W)``; the static fields are cropped
                there, so each row sees the static fields under its own crop.

        Returns:
            ``{"spatial": (B, C_s, [D], H, W)}`` and/or ``{"vector": (B, E)}`` (absent when empty).
        """
        drop = drop or {}
        out: dict[str, torch.Tensor] = {}
        spatial: list[torch.Tensor] = []
        indicator: list[torch.Tensor] = []
        if self.previous:
            if previous is None or previous.shape[1] < self.previous:
                got = None if previous is None else tuple(previous.shape)
                raise ValueError(f"Conditioner: needs {self.previous} previous states (B, W-1 >= "
                                 f"{self.previous}, C, ...), got {got}; "
                                 f"set loader.window >= {self.previous + 1}")
            p = previous[:, -self.previous:].flatten(1, 2)
            if "previous" in self.dropout:
                keep = self._keep(drop.get("previous"), batch_size, p)
                p = p * keep
                indicator.append(keep.expand(-1, 1, *p.shape[2:]))
            spatial.append(p)
            if self.generated:
                flag = (torch.zeros(batch_size, dtype=p.dtype, device=p.device) if generated is None
                        else generated.to(device=p.device, dtype=p.dtype).reshape(batch_size))
                spatial.append(flag.reshape(batch_size, 1, *([1] * (p.ndim - 2))).expand(-1, 1, *p.shape[2:]))
        if self.static is not None:
            dtype = spatial[0].dtype if spatial else self.static.dtype
            if origin is not None:
                if size is None:
                    raise ValueError("Conditioner: cropped states (origin) need the crop's size")
                spatial.append(crop_shared(self.static.to(dtype), origin, size))
            else:
                spatial.append(self.static.to(dtype).expand(batch_size, *self.static.shape))
        if self.n_atoms:
            if atoms is None or atoms.shape[1] != self.n_atoms:
                got = None if atoms is None else tuple(atoms.shape)
                raise ValueError(f"Conditioner: needs atoms (B, {self.n_atoms}, ...), got {got}")
            if origin is not None:
                raise ValueError("Conditioner: atoms fields are not cropped; train on whole fields "
                                 "(diffusion.patch=null)")
            a = atoms.to(spatial[0].dtype if spatial else torch.float32)
            if "atoms" in self.dropout:
                keep = self._keep(drop.get("atoms"), batch_size, a)
                a = a * keep
                indicator.append(keep.expand(-1, 1, *a.shape[2:]))
            spatial.append(a)
        spatial += indicator
        if spatial:
            out["spatial"] = torch.cat(spatial, dim=1)
        vector = None
        for name, value, layer in (("time_features", time_features, self.time_mlp),
                                   ("covariates", covariates, self.covariate_mlp),
                                   ("label", label, self.label_emb)):
            if layer is None:
                continue
            if value is None:
                raise ValueError(f"Conditioner: condition {name!r} is configured but the batch has none")
            e = layer(value.long() if name == "label" else value.float())
            if name in drop:
                e = e * self._keep(drop[name], batch_size, e)
            vector = e if vector is None else vector + e
        if vector is not None:
            out["vector"] = vector
        return out

    @staticmethod
    def _keep(dropped: torch.Tensor | None, batch: int, like: torch.Tensor) -> torch.Tensor:
        """(B, 1, ...) 1.0 where kept, 0.0 where dropped, broadcastable to ``like``."""
        if dropped is None:
            keep = torch.ones(batch, dtype=like.dtype, device=like.device)
        else:
            keep = (~dropped.to(torch.bool)).to(like.dtype).to(like.device)
        return keep.reshape(batch, *([1] * (like.ndim - 1)))
