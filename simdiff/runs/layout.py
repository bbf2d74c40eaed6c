"""The layout of a run directory: every path a stage reads or writes, in one place.

::

  run_dir/
    data/train.zarr            prepare: the training store (data/config.yaml beside it)
    autoencoder/               train-autoencoder: config.yaml, checkpoints/, autoencoder.ckpt,
                               reconstruction.json/png, logs/
    latents.zarr               encode
    diffusion/                 train-diffusion: config.yaml, checkpoints/, diffusion.ckpt,
                               train_summary.json, logs/
    forecast.zarr | .nc        generate (forecast mode)
    samples.zarr | .nc         generate (sample mode)
    conditional.zarr | .nc     generate (conditional mode: members per conditioning sample)
    cubes/                     generate (conditional mode on voxel grids): one Gaussian cube per member
    augmented.zarr | .nc       augment
    certificate.json           certify: a downstream model trained on real, real + synthetic and
                               synthetic pairs, scored on the real test split
    report/                    evaluate: metrics.json, metrics.csv, figures, index.html
    logs/                      one folder per sub-command invocation (Hydra)

No other module spells these names: stages and the Python API ask a :class:`RunDir`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from simdiff.data.stores.prepare import STORE_NAME

#: Output formats and their suffixes.
SUFFIX = {"zarr": ".zarr", "netcdf": ".nc"}


@dataclass(frozen=True)
class RunDir:
    """The paths of one run directory (nothing is created or checked here)."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    # prepare
    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def store(self) -> Path:
        """The training store."""
        return self.data_dir / STORE_NAME

    # the training stages
    def stage_dir(self, stage: str) -> Path:
        """``autoencoder`` or ``diffusion``: a training stage's folder."""
        if stage not in ("autoencoder", "diffusion"):
            raise ValueError(f"no training stage {stage!r}: autoencoder or diffusion")
        return self.root / stage

    def config(self, stage: str) -> Path:
        """The resolved config a training stage saved beside its checkpoints."""
        return self.stage_dir(stage) / "config.yaml"

    def final(self, stage: str) -> Path:
        """The final checkpoint a training stage publishes last (``autoencoder.ckpt``, ``diffusion.ckpt``)."""
        return self.stage_dir(stage) / f"{stage}.ckpt"

    def checkpoints(self, stage: str) -> Path:
        """A training stage's resume points (``last.ckpt``, ``best.ckpt``)."""
        return self.stage_dir(stage) / "checkpoints"

    @property
    def train_summary(self) -> Path:
        return self.stage_dir("diffusion") / "train_summary.json"

    # encode
    @property
    def latents(self) -> Path:
        return self.root / "latents.zarr"

    # outputs
    def output(self, kind: str, fmt: str = "zarr") -> Path:
        """``forecast``, ``samples``, ``conditional`` or ``augmented``, as zarr or netcdf."""
        if kind not in ("forecast", "samples", "conditional", "augmented"):
            raise ValueError(f"no output {kind!r}: forecast, samples, conditional or augmented")
        if fmt not in SUFFIX:
            raise ValueError(f"format {fmt!r}: use zarr or netcdf")
        return self.root / f"{kind}{SUFFIX[fmt]}"

    @property
    def cubes(self) -> Path:
        """Gaussian cube files of a conditional output on a voxel grid."""
        return self.root / "cubes"

    @property
    def certificate(self) -> Path:
        """certify: the downstream certificate of the augmented dataset."""
        return self.root / "certificate.json"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def metrics(self) -> Path:
        return self.report / "metrics.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"
