"""MoleculeDensities: Kohn-Sham DFT electron densities of small G2 molecules on a cubic grid.

Each sample ``i`` draws, from its own random stream ``default_rng([seed, i])``:

1. a molecule from ``molecules`` (names of ase's G2 collection, Curtiss et al.,
   J. Chem. Phys. 106, 1063 (1997)), at its G2 geometry;
2. a rotation uniform on SO(3) about the centre of mass (a uniform unit quaternion,
   Shoemake, Graphics Gems III (1992) p. 124), when ``rotate``;
3. an isotropic Gaussian displacement of every atom, std ``perturbation_bohr``, after
   which the centre of mass is moved back to the origin.

The density ``rho(r) = sum_{mu nu} D_{mu nu} phi_mu(r) phi_nu(r)`` of the converged
restricted (closed shell) or unrestricted (open shell, spin from the G2 magnetic moments)
Kohn-Sham solution (PySCF) is evaluated on ``grid^3`` points spaced ``h = box_bohr / grid``
and centred on the centre of mass: the coordinate of index ``k`` is ``(k - (grid-1)/2) h``,
so a 90 degree rotation about a grid axis maps the grid onto itself.

Field: ``density (sample, z, y, x)`` in e bohr^-3; conditions ``label (sample)`` (index into
``molecules``, attr ``label_names``), ``n_electrons (sample)``, ``atom_numbers (sample, atom)``
(0 = padding), ``atom_positions (sample, atom, cartesian)`` (bohr, grid frame, NaN = padding),
``n_atoms (sample)``. Geometry: non-periodic, weights h^3, lattice ``box_bohr * I``.

Cache: a zarr store ``{cache_dir}/molecules/{key}.zarr`` where ``key`` hashes every
parameter that changes a density (not ``n_samples``/``max_samples``: sample ``i`` depends
only on ``(seed, i)``, so a longer run extends a shorter one). Each density is written, then
its ``done`` flag; an interrupted generation resumes at the first sample not done, and the
store's ``complete`` attribute is set when all ``n_samples`` are done. The store skeleton is
built beside the target and renamed into place. Generate from one process at a time.

Reference: with ``reference="promolecule"`` (the preset's default) each sample also gets its
promolecular density (:func:`promolecule_on_grid`: the free atoms at the same geometry, same
basis and grid, no SCF), kept in the same cache as ``promolecule`` with its own ``promolecule_done``
flags (added to an existing cache on first use, so cached densities stay valid). The Field
carries it as ``Field.reference``: the model learns the density relative to it, the smooth
bonding deformation, while the nuclear cusps come from the promolecule exactly.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dask.array as dsa
import numpy as np
import xarray as xr
import zarr
from ase.build import molecule as ase_molecule
from ase.collections import g2
from rich.progress import Progress

from simdiff.base.atomic import exclusive
from simdiff.base.errors import DataError
from simdiff.data.field import Field
from simdiff.data.geometry import Geometry, lattice_array
from simdiff.data.sources.cube import ANGSTROM_PER_BOHR
from simdiff.data.sources.molecular import checked_transforms
from simdiff.data.transforms import Transform

DEFAULT_MOLECULES = ("H2O", "NH3", "CH4", "HF", "CO", "N2", "HCN", "C2H2", "H2CO", "CH3OH", "C2H4", "LiH")
CACHE_FORMAT = 1
_SAMPLE_VARS = ("density", "label", "n_electrons", "atom_numbers", "atom_positions", "n_atoms", "done")
#: what ``MoleculeDensities(reference=...)`` accepts; the promolecule's cache arrays
REFERENCES = (None, "promolecule")
_REFERENCE_VARS = ("promolecule", "promolecule_done")


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A (3, 3) rotation matrix uniform on SO(3): a normalised 4D Gaussian is a uniform quaternion."""
    q = rng.standard_normal(4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def grid_axis(grid: int, box_bohr: float) -> np.ndarray:
    """(grid,) coordinates ``(k - (grid-1)/2) * box_bohr / grid`` in bohr, centred on 0."""
    return (np.arange(grid) - (grid - 1) / 2) * (box_bohr / grid)


def g2_molecule(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """A G2 molecule centred on its centre of mass.

    Returns:
        ``(numbers (atom,), positions (atom, cartesian) bohr, masses (atom,) amu, spin)``
        with ``spin = 2S`` from the G2 magnetic moments.
    """
    if name not in g2.names:
        raise DataError(f"molecules: {name!r} is not in ase's G2 collection; pick from {sorted(g2.names)}")
    atoms = ase_molecule(name)
    masses = atoms.get_masses()
    pos = atoms.positions / ANGSTROM_PER_BOHR
    pos = pos - masses @ pos / masses.sum()
    spin = round(float(atoms.get_initial_magnetic_moments().sum()))
    if (int(atoms.numbers.sum()) - spin) % 2:
        raise DataError(f"molecules: {name!r} has {atoms.numbers.sum()} electrons but spin 2S={spin}")
    return atoms.numbers.astype(np.int64), pos, masses, spin


def density_on_grid(
    numbers: np.ndarray,
    positions_bohr: np.ndarray,
    axis_bohr: np.ndarray,
    basis: str,
    xc: str,
    spin: int = 0,
    charge: int = 0,
    conv_tol: float = 1e-9,
    xc_grid_level: int = 3,
) -> np.ndarray:
    """Self-consistent Kohn-Sham density on the cubic grid ``axis_bohr^3``.

    Args:
        numbers: (atom,) atomic numbers.
        positions_bohr: (atom, cartesian) positions in bohr.
        axis_bohr: (n,) grid coordinates shared by x, y and z.
        basis, xc: PySCF basis and exchange-correlation functional names.
        spin: 2S; RKS when 0, UKS otherwise.
        charge: net charge.
        conv_tol: SCF energy convergence threshold (hartree).
        xc_grid_level: PySCF integration grid level for the XC potential (0-9).

    Returns:
        (z, y, x) float64 total density rho in e bohr^-3.
    """
    from pyscf import dft, gto

    mol = gto.M(
        atom=[(int(z), tuple(p)) for z, p in zip(numbers, positions_bohr, strict=True)],
        unit="Bohr",
        basis=basis,
        spin=spin,
        charge=charge,
        verbose=0,
    )
    mf = dft.RKS(mol) if spin == 0 else dft.UKS(mol)
    mf.xc = xc
    mf.conv_tol = conv_tol
    mf.grids.level = xc_grid_level
    mf.kernel()
    if not mf.converged:
        raise RuntimeError(f"SCF did not converge for atoms {numbers.tolist()} ({basis}, {xc})")
    dm = mf.make_rdm1()
    if dm.ndim == 3:
        dm = dm[0] + dm[1]
    return _rho_on_grid(mol, dm, (axis_bohr, axis_bohr, axis_bohr))


def _rho_on_grid(mol: Any, dm: np.ndarray, axes: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """The density of density matrix ``dm`` on the grid ``axes`` (z, y, x in bohr): (z, y, x)."""
    from pyscf import dft

    z, y, x = np.meshgrid(*axes, indexing="ij")
    points = np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1)
    rho = np.empty(len(points))
    for start in range(0, len(points), 16384):
        block = points[start : start + 16384]
        rho[start : start + 16384] = dft.numint.eval_rho(mol, dft.numint.eval_ao(mol, block), dm)
    return rho.reshape(z.shape)


def promolecule_on_grid(
    numbers: np.ndarray,
    positions_bohr: np.ndarray,
    axes: tuple[np.ndarray, np.ndarray, np.ndarray],
    basis: str,
) -> np.ndarray:
    """The promolecular density on the grid ``axes`` (z, y, x in bohr): the superposition of the
    spherically averaged free-atom densities (PySCF's atomic guess, Almlöf et al. 1982) at the
    same geometry, in the same basis. No SCF: about 0.1 s for a small molecule at 32^3. It
    carries the nuclear cusps exactly where the molecule's density has them, and is the baseline
    a generated density has to beat.
    """
    from pyscf import gto, scf

    keep = np.asarray(numbers) > 0
    numbers = np.asarray(numbers)[keep]
    mol = gto.M(
        atom=[(int(z), tuple(p)) for z, p in zip(numbers, np.asarray(positions_bohr)[keep], strict=True)],
        unit="Bohr",
        basis=basis,
        spin=int(numbers.sum()) % 2,
        verbose=0,
    )
    return _rho_on_grid(mol, scf.hf.init_guess_by_atom(mol), axes)


class MoleculeDensities:
    """Built-in dataset: PySCF electron densities of small molecules (a FieldSource).

    Args:
        molecules: G2 names (``ase.collections.g2``); ``label`` indexes this list.
        n_samples: number of densities.
        grid: points per axis of the cubic grid.
        box_bohr: edge of the cubic box; must hold every atom plus ``margin_bohr``.
        margin_bohr: least distance from any atom to the box face.
        basis: PySCF basis set.
        xc: exchange-correlation functional.
        rotate: random rotation uniform on SO(3) per sample.
        perturbation_bohr: std of the Gaussian displacement of each coordinate.
        seed: sample ``i`` uses ``numpy.random.default_rng([seed, i])``.
        cache_dir: the cache lives in ``{cache_dir}/molecules/``.
        max_samples: open only the first samples (computing only those).
        transforms: per-variable transforms before normalisation (e.g. Log1p on density).
        conv_tol: SCF convergence threshold (hartree).
        xc_grid_level: PySCF XC integration grid level (3 is PySCF's default; 1 is ~2x faster).
        progress: show a rich progress bar while generating.
        reference: ``"promolecule"``: give each density its promolecular reference field
            (``Field.reference``; the model then learns the deformation from it); None: none.
    """

    def __init__(
        self,
        molecules: Sequence[str] = DEFAULT_MOLECULES,
        n_samples: int = 1024,
        grid: int = 32,
        box_bohr: float = 16.0,
        margin_bohr: float = 4.0,
        basis: str = "6-31g",
        xc: str = "pbe",
        rotate: bool = True,
        perturbation_bohr: float = 0.05,
        seed: int = 0,
        cache_dir: str | Path = "~/.cache/simdiff",
        max_samples: int | None = None,
        transforms: Mapping[str, Transform] | None = None,
        conv_tol: float = 1e-9,
        xc_grid_level: int = 3,
        progress: bool = True,
        reference: str | None = None,
    ) -> None:
        if reference not in REFERENCES:
            raise DataError(f"molecules: reference={reference!r} is not one of {list(REFERENCES)}")
        self.reference = reference
        if not molecules:
            raise ValueError("molecules is empty; name at least one G2 molecule")
        if n_samples < 1 or grid < 2 or box_bohr <= 0 or margin_bohr < 0 or perturbation_bohr < 0:
            raise ValueError(
                f"need n_samples >= 1, grid >= 2, box_bohr > 0, margin_bohr >= 0, perturbation_bohr >= 0; "
                f"got {n_samples}, {grid}, {box_bohr}, {margin_bohr}, {perturbation_bohr}"
            )
        self.molecules = [str(m) for m in molecules]
        self.n_samples = int(n_samples)
        self.grid = int(grid)
        self.box_bohr = float(box_bohr)
        self.margin_bohr = float(margin_bohr)
        self.basis = basis
        self.xc = xc
        self.rotate = bool(rotate)
        self.perturbation_bohr = float(perturbation_bohr)
        self.seed = int(seed)
        self.cache_dir = Path(os.path.expanduser(str(cache_dir)))
        self.max_samples = max_samples
        for name in transforms or {}:
            if name != "density":
                raise DataError(f"molecules: no variable {name!r} to transform; available: ['density']")
        self.transforms: dict[str, Transform] = checked_transforms(transforms)
        self.conv_tol = float(conv_tol)
        self.xc_grid_level = int(xc_grid_level)
        self.progress = progress
        self.n_computed = 0
        """Densities this instance has computed (SCF runs); cache hits do not count."""
        self._species = [g2_molecule(m) for m in self.molecules]
        for name, (_, pos, _, _) in zip(self.molecules, self._species, strict=True):
            reach = float(np.linalg.norm(pos, axis=1).max()) + 4 * self.perturbation_bohr + self.margin_bohr
            if reach > self.box_bohr / 2:
                raise ValueError(
                    f"box_bohr={self.box_bohr} is too small for {name}: an atom can sit "
                    f"{reach - self.margin_bohr:.2f} bohr from the centre; with margin_bohr="
                    f"{self.margin_bohr} that needs box_bohr >= {2 * reach:.2f}"
                )

    # -- identity of the cache ------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """Every parameter that changes a density (the cache key)."""
        return {
            "format": CACHE_FORMAT,
            "molecules": self.molecules,
            "grid": self.grid,
            "box_bohr": self.box_bohr,
            "basis": self.basis,
            "xc": self.xc,
            "rotate": self.rotate,
            "perturbation_bohr": self.perturbation_bohr,
            "seed": self.seed,
            "conv_tol": self.conv_tol,
            "xc_grid_level": self.xc_grid_level,
        }

    @property
    def store_path(self) -> Path:
        """``{cache_dir}/molecules/{sha256(params)[:16]}.zarr``."""
        key = hashlib.sha256(json.dumps(self.params(), sort_keys=True).encode()).hexdigest()[:16]
        return self.cache_dir / "molecules" / f"{key}.zarr"

    # -- one sample -----------------------------------------------------------------------
    def sample_geometry(self, i: int) -> tuple[int, np.ndarray, np.ndarray, int]:
        """Sample ``i``'s ``(label, numbers (atom,), positions (atom, cartesian) bohr, spin)``."""
        rng = np.random.default_rng([self.seed, i])
        label = int(rng.integers(len(self.molecules)))
        numbers, pos, masses, spin = self._species[label]
        if self.rotate:
            pos = pos @ random_rotation(rng).T
        pos = pos + rng.normal(0.0, self.perturbation_bohr, size=pos.shape)
        pos = pos - masses @ pos / masses.sum()
        half = self.box_bohr / 2 - self.margin_bohr
        if np.abs(pos).max() > half:
            raise ValueError(
                f"sample {i} ({self.molecules[label]}): an atom lies {np.abs(pos).max():.2f} bohr from the "
                f"centre, beyond box_bohr/2 - margin_bohr = {half:.2f}; raise box_bohr"
            )
        return label, numbers, pos, spin

    def compute(self, i: int) -> dict[str, np.ndarray]:
        """Run the SCF for sample ``i``: its density (z, y, x) and labels."""
        label, numbers, pos, spin = self.sample_geometry(i)
        rho = density_on_grid(
            numbers,
            pos,
            grid_axis(self.grid, self.box_bohr),
            self.basis,
            self.xc,
            spin=spin,
            conv_tol=self.conv_tol,
            xc_grid_level=self.xc_grid_level,
        )
        self.n_computed += 1
        n_max = max(len(s[0]) for s in self._species)
        atom_numbers = np.zeros(n_max, dtype=np.int64)
        atom_positions = np.full((n_max, 3), np.nan)
        atom_numbers[: len(numbers)] = numbers
        atom_positions[: len(numbers)] = pos
        return {
            "density": rho.astype(np.float32),
            "label": np.int64(label),
            "n_electrons": np.int64(numbers.sum()),
            "atom_numbers": atom_numbers,
            "atom_positions": atom_positions,
            "n_atoms": np.int64(len(numbers)),
        }

    # -- the cache ------------------------------------------------------------------------
    def _create_store(self, capacity: int) -> None:
        path = self.store_path
        path.parent.mkdir(parents=True, exist_ok=True)
        g, n_max = self.grid, max(len(s[0]) for s in self._species)
        axis = grid_axis(self.grid, self.box_bohr)

        def blank(dtype: Any, *shape: int, per_chunk: int = 64) -> dsa.Array:
            # zarr writes each chunk atomically; densities get a chunk each, labels share one
            return dsa.zeros((capacity, *shape), dtype=dtype, chunks=(per_chunk, *shape))

        ds = xr.Dataset(
            {
                "density": (
                    ("sample", "z", "y", "x"),
                    blank(np.float32, g, g, g, per_chunk=1),
                    {"units": "bohr-3", "long_name": "electron density"},
                ),
                "label": ("sample", blank(np.int64), {"label_names": self.molecules}),
                "n_electrons": ("sample", blank(np.int64)),
                "atom_numbers": (("sample", "atom"), blank(np.int64, n_max)),
                "atom_positions": (
                    ("sample", "atom", "cartesian"),
                    blank(np.float64, n_max, 3),
                    {"units": "bohr"},
                ),
                "n_atoms": ("sample", blank(np.int64)),
                "done": ("sample", blank(bool)),
            },
            coords={
                "x": ("x", axis, {"units": "bohr", "long_name": "x from the centre of mass"}),
                "y": ("y", axis, {"units": "bohr", "long_name": "y from the centre of mass"}),
                "z": ("z", axis, {"units": "bohr", "long_name": "z from the centre of mass"}),
            },
            attrs={"simdiff_cache": "molecules", "params": json.dumps(self.params()), "complete": False},
        )
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            ds.to_zarr(tmp / "store.zarr", mode="w", compute=False, consolidated=False, zarr_format=3)
            os.replace(tmp / "store.zarr", path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _open_group(self) -> zarr.Group:
        path = self.store_path
        if not path.exists():
            self._create_store(self.n_samples)
        group = zarr.open_group(str(path), mode="r+")
        if group.attrs.get("params") != json.dumps(self.params()):
            raise DataError(f"{path}: cache parameters differ from this dataset's; delete the directory")
        capacity = group["done"].shape[0]
        if capacity < self.n_samples:
            for name in (*_SAMPLE_VARS, *(n for n in _REFERENCE_VARS if n in group)):
                arr = group[name]
                arr.resize((self.n_samples, *arr.shape[1:]))
            group.attrs["complete"] = False
        return group

    def _reference_arrays(self, group: zarr.Group) -> None:
        """Add the promolecule and its flags to a cache that lacks them (densities untouched)."""
        if all(n in group for n in _REFERENCE_VARS):
            return
        capacity, g = group["done"].shape[0], self.grid
        group.create_array("promolecule", shape=(capacity, g, g, g), chunks=(1, g, g, g), dtype="float32",
                           fill_value=0.0, dimension_names=["sample", "z", "y", "x"], overwrite=True,
                           attributes={"units": "bohr-3", "long_name": "promolecular electron "
                                       "density (free atoms at the same geometry, same basis)"})
        group.create_array("promolecule_done", shape=(capacity,), chunks=(64,), dtype="bool",
                           fill_value=False, dimension_names=["sample"], overwrite=True)

    def compute_reference(self, i: int) -> np.ndarray:
        """Sample ``i``'s promolecular density (z, y, x) on its grid."""
        _, numbers, pos, _ = self.sample_geometry(i)
        return promolecule_on_grid(numbers, pos, (grid_axis(self.grid, self.box_bohr),) * 3,
                                   self.basis).astype(np.float32)

    def generate(self, n: int | None = None) -> Path:
        """Compute every missing density among the first ``n`` (default ``n_samples``)."""
        n = self.n_samples if n is None else min(n, self.n_samples)
        with exclusive(self.store_path.with_suffix(".lock")):  # one writer per cache entry
            return self._generate(n)

    def _generate(self, n: int) -> Path:
        group = self._open_group()
        done = np.asarray(group["done"][:n], dtype=bool)
        todo = np.flatnonzero(~done)
        with Progress(disable=not self.progress or len(todo) == 0, transient=True) as bar:
            task = bar.add_task(f"PySCF densities ({self.basis}/{self.xc}, {self.grid}^3)", total=len(todo))
            for i in todo:
                values = self.compute(int(i))
                for name, value in values.items():
                    group[name][int(i)] = value
                group["done"][int(i)] = True  # last: a sample is done only once fully written
                bar.advance(task)
        if self.reference == "promolecule":
            self._reference_arrays(group)
            left = np.flatnonzero(~np.asarray(group["promolecule_done"][:n], dtype=bool))
            with Progress(disable=not self.progress or len(left) == 0, transient=True) as bar:
                task = bar.add_task(f"promolecular densities ({self.basis}, {self.grid}^3)", total=len(left))
                for i in left:
                    group["promolecule"][int(i)] = self.compute_reference(int(i))
                    group["promolecule_done"][int(i)] = True  # after its field, as for densities
                    bar.advance(task)
        capacity = group["done"].shape[0]
        if n == capacity and (len(todo) or not group.attrs.get("complete")):
            if bool(np.asarray(group["done"][:], dtype=bool).all()):
                group.attrs["complete"] = True
        return self.store_path

    def open(self) -> Field:
        """Generate what is missing, then open the cached densities lazily."""
        m = self.n_samples if self.max_samples is None else min(self.n_samples, self.max_samples)
        path = self.generate(m)
        ds = xr.open_zarr(path, consolidated=False).isel(sample=slice(0, m))
        ds = ds.assign_coords(sample=np.arange(m), cartesian=["x", "y", "z"])
        ds.attrs = {"title": "PySCF electron densities of G2 molecules", "params": ds.attrs["params"]}
        data = ds[["density"]]
        conditions = ds[["label", "n_electrons", "atom_numbers", "atom_positions", "n_atoms"]].load()
        conditions["label"].attrs["label_names"] = list(self.molecules)
        spatial = {d: ds[d] for d in ("z", "y", "x")}
        h = self.box_bohr / self.grid
        shape = (self.grid,) * 3
        geometry = Geometry(
            dims=("z", "y", "x"),
            periodic=frozenset(),
            weights=xr.DataArray(
                np.full(shape, h**3), dims=("z", "y", "x"), coords=spatial, attrs={"units": "bohr3"}
            ),
            mask=xr.DataArray(np.ones(shape, dtype=bool), dims=("z", "y", "x"), coords=spatial),
            lattice=lattice_array(("x", "y", "z"), np.eye(3) * self.box_bohr),
            attrs={
                "origin_bohr": [float(ds["x"][0])] * 3,
                "voxel_bohr": (np.eye(3) * h).tolist(),
                "voxel_volume_bohr3": h**3,
                "centred_on": "centre of mass",
            },
        )
        reference = None
        if self.reference == "promolecule":
            reference = ds[["promolecule"]].rename(promolecule="density")
        return Field(data=data, geometry=geometry, conditions=conditions, sources=(str(path),),
                     reference=reference)
