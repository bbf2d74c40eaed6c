"""QGSource: the built-in two-layer QG turbulence dataset as a FieldSource (datasets/qg/README.md).

The source spins the model of :mod:`simdiff.data.sources.simulators.qg` up from small random PV to
statistically steady turbulence, then keeps ``n_snapshots`` snapshots, one every
``snapshot_every`` steps, of the eddy PV ``q`` and streamfunction ``psi`` on both layers.

The trajectory is cached once per parameter set in ``cache_dir/qg/qg-<hash>.zarr`` (zarr v3),
keyed by a hash of every argument that changes the numbers. Generation works in
``cache_dir/qg/qg-<hash>.partial/`` (``trajectory.zarr`` + ``state.npz``): snapshots are written
chunk by chunk and the model state is saved beside them after each chunk (atomically), so a
killed run resumes where it stopped and gives bit-identical numbers. The finished store is
marked ``complete`` and moved to its final path by an atomic rename; a complete store is opened
without recomputation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import torch
import xarray as xr
import zarr
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from simdiff.base.atomic import exclusive
from simdiff.base.errors import DataError
from simdiff.data.field import Field
from simdiff.data.geometry import Geometry
from simdiff.data.sources.simulators.qg import SECONDS_PER_DAY, QGModel, QGParams, QGState, torch_threads

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
INITIAL_AMPLITUDE = 1.0e-6  # s^-1, std of the white-noise PV that seeds the instability
SPINUP_SAVE_EVERY = 2000  # steps between saved states during spin-up
STEADY_TOLERANCE = 0.3  # relative change of mean energy over the last two spin-up windows


class QGSource:
    """Two-layer QG turbulence on a doubly periodic beta-plane, cached as zarr.

    Args:
        nx: grid points along x and y.
        length: domain side in m.
        beta: planetary vorticity gradient in m^-1 s^-1.
        deformation_radius: first baroclinic deformation radius in m.
        delta: layer-thickness ratio ``H_1 / H_2``.
        u1, u2: mean zonal velocity of the upper and lower layer in m s^-1.
        bottom_drag: linear drag rate on the lower layer in s^-1.
        dt: time step in s.
        hyperviscous_time: e-folding time (s) of the smallest retained scale.
        spinup_days: model days run before the first snapshot is kept.
        snapshot_every: model steps between kept snapshots.
        n_snapshots: snapshots kept after spin-up.
        seed: seed of the initial random PV.
        cache_dir: folder for the cached trajectory (a ``qg/`` folder is made in it).
        max_samples: return only the first ``max_samples`` snapshots (does not change the cache).
        transforms: per-variable transforms applied before normalisation (none by default).
        progress: show a rich progress bar while generating.
    """

    def __init__(
        self,
        nx: int = 64,
        length: float = 1.0e6,
        beta: float = 1.5e-11,
        deformation_radius: float = 15.0e3,
        delta: float = 0.25,
        u1: float = 0.025,
        u2: float = 0.0,
        bottom_drag: float = 5.787e-7,
        dt: float = 7200.0,
        hyperviscous_time: float = 864000.0,
        spinup_days: float = 1825.0,
        snapshot_every: int = 60,
        n_snapshots: int = 3000,
        seed: int = 0,
        cache_dir: str | os.PathLike[str] = "~/.cache/simdiff",
        max_samples: int | None = None,
        transforms: Mapping[str, object] | None = None,
        progress: bool = True,
    ) -> None:
        self.params = QGParams(
            nx=nx,
            length=length,
            beta=beta,
            deformation_radius=deformation_radius,
            delta=delta,
            u1=u1,
            u2=u2,
            bottom_drag=bottom_drag,
            dt=dt,
            hyperviscous_time=hyperviscous_time,
        )
        for name, value, low in (("snapshot_every", snapshot_every, 1), ("n_snapshots", n_snapshots, 1)):
            if int(value) != value or value < low:
                raise DataError(f"QGSource: {name}={value!r} must be an integer >= {low}")
        if spinup_days < 0:
            raise DataError(f"QGSource: spinup_days={spinup_days!r} must be >= 0")
        if max_samples is not None and max_samples < 1:
            raise DataError(f"QGSource: max_samples={max_samples!r} must be >= 1 or null")
        self.spinup_days = float(spinup_days)
        self.snapshot_every = int(snapshot_every)
        self.n_snapshots = int(n_snapshots)
        self.seed = int(seed)
        self.cache_dir = Path(cache_dir).expanduser()
        self.max_samples = max_samples
        self.transforms: Mapping[str, object] = dict(transforms or {})
        self.progress = progress
        self.chunk = min(64, self.n_snapshots)  # snapshots per zarr chunk and per write

    # -- identity of the trajectory --------------------------------------------------------
    @property
    def spinup_steps(self) -> int:
        return round(self.spinup_days * SECONDS_PER_DAY / self.params.dt)

    @property
    def key(self) -> dict[str, Any]:
        """Every argument that changes the numbers (the cache key)."""
        return {
            "cache_format": CACHE_FORMAT,
            **self.params.as_dict(),
            "spinup_steps": self.spinup_steps,
            "snapshot_every": self.snapshot_every,
            "n_snapshots": self.n_snapshots,
            "seed": self.seed,
            "initial_amplitude": INITIAL_AMPLITUDE,
        }

    @property
    def path(self) -> Path:
        """Final path of the complete cached trajectory."""
        digest = hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:16]
        return self.cache_dir / "qg" / f"qg-{digest}.zarr"

    @property
    def work_dir(self) -> Path:
        """Where an unfinished trajectory and its model state live."""
        return self.path.with_suffix(".partial")

    # -- FieldSource ---------------------------------------------------------------------------
    def open(self) -> Field:
        """The cached trajectory (generated first if needed) as a dask-backed Field.

        Returns:
            Field with ``q`` (s^-1) and ``psi`` (m^2 s^-1) over ``(time, level, y, x)``.
        """
        if not self.is_complete():
            self.generate()
        # Select the variables by name: a zarr group lists its members in filesystem order,
        # and the channel order of everything downstream must not depend on that.
        ds = xr.open_zarr(self.path, consolidated=False)[["q", "psi"]]
        if self.max_samples is not None:
            ds = ds.isel(time=slice(0, self.max_samples))
        geometry = Geometry(
            dims=("level", "y", "x"),
            periodic=frozenset({"x", "y"}),
            weights=xr.ones_like(ds["q"].isel(time=0, drop=True), dtype=np.float32).load(),
            mask=xr.ones_like(ds["q"].isel(time=0, drop=True), dtype=bool).load(),
            attrs={"grid_spacing_m": self.params.dx},
        )
        return Field(data=ds, geometry=geometry, conditions=xr.Dataset(), sources=(str(self.path),))

    def is_complete(self) -> bool:
        """True when the final store exists and is marked complete."""
        if not self.path.is_dir():
            return False
        try:
            attrs = dict(zarr.open_group(str(self.path), mode="r").attrs)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            return False
        if attrs.get("qg_key") != json.loads(json.dumps(self.key)):
            raise DataError(
                f"{self.path}: cached QG trajectory was made with other parameters "
                f"({attrs.get('qg_key')}); delete it or use another cache_dir"
            )
        return bool(attrs.get("complete"))

    # -- generation -------------------------------------------------------------------------
    def generate(self, stop_after: int | None = None) -> Path:
        """Run (or resume) the simulation and publish the complete store.

        Args:
            stop_after: stop once at least this many snapshots are written and leave a
                resumable partial store (for time-boxed jobs); None runs to the end.

        Returns:
            The final store path (or the work dir when stopped early).
        """
        # One process builds a cache entry; another that asks for it meanwhile (the points of a
        # sweep share cache_dir) waits for it, then finds it complete.
        with exclusive(self.path.with_suffix(".lock")):
            if self.is_complete():
                return self.path
            with torch_threads(1):
                return self._generate(stop_after)

    def _generate(self, stop_after: int | None) -> Path:
        model = QGModel(self.params)
        store = self.work_dir / "trajectory.zarr"
        state_file = self.work_dir / "state.npz"
        if state_file.is_file() and store.is_dir():
            state, n_written, energies = self._load_state(state_file)
        else:
            shutil.rmtree(self.work_dir, ignore_errors=True)
            self.work_dir.mkdir(parents=True)
            self._create_store(store)
            state, n_written, energies = model.random_state(self.seed, INITIAL_AMPLITUDE), 0, np.zeros(0)
        total = self.spinup_steps + (self.n_snapshots - 1) * self.snapshot_every
        steps_per_day = max(1, round(SECONDS_PER_DAY / self.params.dt))
        with Progress(
            TextColumn("[bold]QG[/] {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            disable=not self.progress,
        ) as bar:
            task = bar.add_task("spin-up", total=total, completed=state.step)
            while state.step < self.spinup_steps:
                n = min(SPINUP_SAVE_EVERY, self.spinup_steps - state.step)
                e = []
                for _ in range(n):
                    state = model.step(state)
                    if state.step % steps_per_day == 0:
                        e.append(model.energy(state.qh))
                self._check_finite(state, "spin-up")
                energies = np.concatenate([energies, np.asarray(e)])
                self._save_state(state_file, state, 0, energies)
                bar.update(task, completed=state.step)
            if n_written == 0:
                self._check_steady(energies, steps_per_day)
            bar.update(task, description="snapshots")
            group = zarr.open_group(str(store), mode="r+")
            while n_written < self.n_snapshots:
                if stop_after is not None and n_written >= stop_after:
                    return self.work_dir
                n = min(self.chunk, self.n_snapshots - n_written)
                q = np.empty((n, 2, self.params.nx, self.params.nx), dtype=np.float32)
                psi = np.empty_like(q)
                for i in range(n):
                    if n_written + i > 0:
                        for _ in range(self.snapshot_every):
                            state = model.step(state)
                    q[i] = model.to_physical(state.qh).numpy()
                    psi[i] = model.to_physical(model.invert(state.qh)).numpy()
                self._check_finite(state, "snapshots")
                group["q"][n_written : n_written + n] = q
                group["psi"][n_written : n_written + n] = psi
                n_written += n
                self._save_state(state_file, state, n_written, energies)
                bar.update(task, completed=state.step)
        group.attrs["complete"] = True
        os.replace(store, self.path)
        shutil.rmtree(self.work_dir)
        return self.path

    def _create_store(self, path: Path) -> None:
        """Write the empty store: coords, attrs and unfilled ``q``/``psi`` arrays."""
        p, n, c = self.params, self.params.nx, self.chunk
        x = (np.arange(n) + 0.5) * p.dx
        days = np.arange(self.n_snapshots) * self.snapshot_every * p.dt / SECONDS_PER_DAY
        h1, h2 = p.layer_fractions
        empty = da.zeros((self.n_snapshots, 2, n, n), dtype=np.float32, chunks=(c, 2, n, n))
        dims = ("time", "level", "y", "x")
        ds = xr.Dataset(
            {
                "q": (
                    dims,
                    empty,
                    {"units": "s-1", "long_name": "eddy quasi-geostrophic potential vorticity"},
                ),
                "psi": (dims, empty, {"units": "m2 s-1", "long_name": "eddy streamfunction"}),
            },
            coords={
                "time": ("time", days, {"units": "days", "long_name": "model time since the end of spin-up"}),
                "level": (
                    "level",
                    np.array([1, 2], dtype=np.int32),
                    {"long_name": "layer (1 upper, 2 lower)", "thickness_fraction": [h1, h2]},
                ),
                "y": ("y", x, {"units": "m", "long_name": "y (northward) distance", "axis": "Y"}),
                "x": ("x", x, {"units": "m", "long_name": "x (eastward) distance", "axis": "X"}),
            },
            attrs={
                "title": "two-layer quasi-geostrophic turbulence (simdiff built-in simulator)",
                "Conventions": "CF-1.10",
                "source": "simdiff.data.sources.simulators.qg (pseudo-spectral, AB3, 2/3 de-aliasing)",
                "references": "Phillips 1954; Flierl 1978; Arbic & Flierl 2004; datasets/qg/README.md",
                "qg_key": self.key,
                "complete": False,
            },
        )
        ds.to_zarr(path, mode="w", compute=False, consolidated=False, zarr_format=3)

    def _save_state(self, path: Path, state: QGState, n_written: int, energies: np.ndarray) -> None:
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **state.to_numpy(), n_written=np.asarray(n_written), energies=energies)
        os.replace(tmp, path)

    def _load_state(self, path: Path) -> tuple[QGState, int, np.ndarray]:
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
        return QGState.from_numpy(arrays), int(arrays["n_written"]), arrays["energies"]

    def _check_finite(self, state: QGState, phase: str) -> None:
        if not bool(torch.isfinite(torch.view_as_real(state.qh)).all()):
            day = state.step * self.params.dt / SECONDS_PER_DAY
            raise DataError(
                f"{self.work_dir}: QG variable q became NaN/inf during {phase} at step {state.step} "
                f"(day {day:.0f}) with dt={self.params.dt} s; use a smaller dt (e.g. {self.params.dt / 2:g}) "
                f"or a shorter hyperviscous_time (stronger small-scale damping)"
            )

    def _check_steady(self, energies: np.ndarray, steps_per_day: int) -> None:
        """Log whether mean energy over the last two eighths of spin-up agree (README: spin-up)."""
        w = len(energies) // 8
        if w < 2:
            log.warning("QG spin-up of %.0f days is too short to check for a steady state", self.spinup_days)
            return
        a, b = energies[-2 * w : -w].mean(), energies[-w:].mean()
        change = abs(b - a) / a
        if change > STEADY_TOLERANCE:
            log.warning(
                "QG energy changed by %.0f%% over the last %d spin-up days: not yet statistically "
                "steady; raise spinup_days",
                100 * change,
                2 * w,
            )
