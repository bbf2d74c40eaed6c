"""What a chemist knows before computing a density, as conditions on the latent grid.

A store of molecular fields (``simdiff.data.sources.simulators.molecules`` or Gaussian cube
files) carries each sample's atoms: ``atom_numbers (S, atom)`` (0 = padding) and
``atom_positions (S, atom, cartesian)`` in bohr (NaN = padding). The latent store turns them
into two conditions of the diffusion model:

* ``atoms (S, 3, d, h, w)``: a smoothed atomic-density picture of the geometry on the latent
  grid, Gaussians of width ``sigma`` (half the latent cell, in bohr) about every atom, one
  channel per kind: hydrogen, heavy-atom nuclear charge ``Z``, heavy-atom count. Each
  Gaussian integrates to 1 (to ``Z``) over space, so channel 1 sums to the heavy atoms'
  electrons of the neutral molecule. The channels are divided by their root mean square
  over the train split (``atoms_scale``), so the net sees O(1) inputs.
* ``covariates`` gains ``n_electrons`` / 10 (the electron count; ``Σ Z`` of the atoms when the
  store does not state it, i.e. a neutral molecule).

Frames. The store's ``z``/``y``/``x`` coordinates are distances in bohr along the grid axes.
On the built-in set they are Cartesian about the centre of mass, in the atoms' frame. Cube
files state the atoms in the file's frame with an ``origin`` per sample and the voxel vectors in
the geometry attrs (``voxel_bohr``), so each atom is first put on the grid's axes: fractional
voxel index ``f`` solving ``V^T f = r - origin``, distance ``f_k |v_k|``. On a periodic cell
the Gaussians are not wrapped (the grid holds the atoms of one cell).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from simdiff.base.errors import DataError

#: The channels of ``atoms``, in order.
ATOM_CHANNELS = ("hydrogen", "heavy_charge", "heavy_count")
#: Scale of the ``n_electrons`` covariate (so it is O(1) for small molecules).
ELECTRON_SCALE = 10.0


def has_atoms(store) -> bool:
    """Whether a training store carries atoms (molecular conditions can be built)."""
    return store.has("atom_numbers") and store.has("atom_positions")


def grid_frame(store, positions: np.ndarray) -> np.ndarray:
    """``positions (S, A, 3)`` (x, y, z in the store's frame) -> distances along the grid's x, y, z."""
    geo = dict(store.attrs["geometry"].get("attrs", {}))
    if not store.has("origin") or "voxel_bohr" not in geo:
        return positions
    voxel = np.asarray(geo["voxel_bohr"], dtype=np.float64)  # rows: v_1 (x), v_2 (y), v_3 (z)
    rel = positions - store.array("origin")[:, None, :]
    frac = np.linalg.solve(voxel.T, rel.reshape(-1, 3).T).T.reshape(rel.shape)
    return frac * np.linalg.norm(voxel, axis=1)


def cell_centres(coords: np.ndarray, factor: int, n_latent: int) -> np.ndarray:
    """Centres of the latent cells along one axis: means of ``factor`` source coordinates, the
    axis continued past its end at its spacing where the autoencoder pads it to a multiple."""
    c = np.asarray(coords, dtype=np.float64)
    pad = n_latent * factor - c.size
    if pad < 0:
        raise ValueError(f"{c.size} coordinates do not fit {n_latent} latent cells of {factor}")
    if pad:
        step = c[-1] - c[-2] if c.size > 1 else 1.0
        c = np.concatenate([c, c[-1] + step * np.arange(1, pad + 1)])
    return c.reshape(n_latent, factor).mean(axis=1)


def atom_channels(
    numbers: np.ndarray, positions: np.ndarray, axes: Sequence[np.ndarray], sigma: float
) -> np.ndarray:
    """Gaussian atom densities on a grid.

    Args:
        numbers: (S, A) atomic numbers, 0 = padding.
        positions: (S, A, 3) x, y, z in bohr in the grid's frame (NaN = padding).
        axes: cell centres along z, y, x (bohr).
        sigma: Gaussian width (bohr).

    Returns:
        (S, 3, nz, ny, nx) float64: per :data:`ATOM_CHANNELS`, ``Σ_a w(Z_a) g(r - r_a)`` with
        ``g`` the normalised 3D Gaussian.
    """
    z, y, x = (np.asarray(a, dtype=np.float64) for a in axes)
    out = np.zeros((numbers.shape[0], len(ATOM_CHANNELS), z.size, y.size, x.size))
    norm = (2 * np.pi * sigma**2) ** -0.5
    for s in range(numbers.shape[0]):
        for a in np.flatnonzero(numbers[s] > 0):
            px, py, pz = positions[s, a]
            g = (norm * np.exp(-0.5 * ((z - pz) / sigma) ** 2))[:, None, None] \
                * (norm * np.exp(-0.5 * ((y - py) / sigma) ** 2))[None, :, None] \
                * (norm * np.exp(-0.5 * ((x - px) / sigma) ** 2))[None, None, :]
            zn = int(numbers[s, a])
            if zn == 1:
                out[s, 0] += g
            else:
                out[s, 1] += zn * g
                out[s, 2] += g
    return out


def subcell_axis(centres: np.ndarray, width: float, subcells: int) -> np.ndarray:
    """Centres of ``subcells`` equal sub-cells of every latent cell along one axis, cell by cell."""
    offsets = width * ((np.arange(subcells) + 0.5) / subcells - 0.5)
    return (np.asarray(centres, dtype=np.float64)[:, None] + offsets[None, :]).reshape(-1)


def fold_subcells(fields: np.ndarray, subcells: int) -> np.ndarray:
    """``(S, C, d*s, h*s, w*s)`` rendered on sub-cells -> ``(S, C*s^3, d, h, w)``: each latent
    cell's ``s^3`` sub-cells become channels (channel ``c*s^3 + (kz*s + ky)*s + kx``)."""
    s = int(subcells)
    n, c, dz, dy, dx = fields.shape
    d, h, w = dz // s, dy // s, dx // s
    out = fields.reshape(n, c, d, s, h, s, w, s).transpose(0, 1, 3, 5, 7, 2, 4, 6)
    return out.reshape(n, c * s**3, d, h, w)


def molecular_conditions(
    store, latent_shape: Sequence[int], factors: Sequence[int], subcells: int = 1
) -> dict[str, tuple[tuple[str, ...], np.ndarray, dict]]:
    """The ``atoms`` and electron-count conditions of the latent store of ``store``.

    Args:
        store: a training store with atoms (:func:`has_atoms`) on a 3D grid.
        latent_shape: (d, h, w) of the latents.
        factors: the autoencoder's downsampling per axis (z, y, x).
        subcells: ``s``: the atom densities are drawn on ``s`` sub-cells per latent cell and axis
            (Gaussians ``s`` times narrower) and each cell's ``s^3`` sub-cells become channels, so
            the condition places an atom within its latent cell; 1: on the latent cells.

    Returns:
        name -> (dims, values, attrs): ``atoms (S, atom_channel, latent_depth, latent_y,
        latent_x)`` (``3 * subcells^3`` channels) and ``n_electrons (S)``.
    """
    subcells = int(subcells)
    if subcells < 1:
        raise DataError(f"{store.path}: atom sub-cells must be a positive integer, got {subcells}")
    lay = store.layout
    if len(lay.spatial_dims) != 3 or len(latent_shape) != 3:
        raise DataError(f"{store.path}: atoms condition a 3D voxel grid; this store's spatial dims "
                        f"are {list(lay.spatial_dims)}")
    src = store.dataset()
    axes, spacing = [], []
    for d, f, n in zip(lay.spatial_dims, factors, latent_shape, strict=True):
        c = np.asarray(src[d].values, dtype=np.float64)
        axes.append(cell_centres(c, int(f), int(n)))
        spacing.append(abs(float(np.diff(c).mean())) * int(f) if c.size > 1 else 1.0)
    sigma = 0.5 * float(np.mean(spacing)) / subcells
    axes = [subcell_axis(a, w, subcells) for a, w in zip(axes, spacing, strict=True)]
    numbers = np.asarray(store.array("atom_numbers"), dtype=np.int64)
    positions = grid_frame(store, np.asarray(store.array("atom_positions"), dtype=np.float64))
    fields = atom_channels(numbers, positions, axes, sigma)
    train = store.array("split") == 0
    rms = np.sqrt((fields[train] ** 2).mean(axis=(0, 2, 3, 4)))
    rms[rms == 0] = 1.0
    fields = fold_subcells(fields / rms[None, :, None, None, None], subcells).astype(np.float32)
    if store.has("n_electrons"):
        electrons = np.asarray(store.array("n_electrons"), dtype=np.float64)
    else:
        electrons = numbers.sum(axis=1).astype(np.float64)
    return {
        "atoms": (
            (lay.sample_dim, "atom_channel", "latent_depth", "latent_y", "latent_x"),
            fields,
            {"long_name": "Gaussian atom densities on the latent grid / their train rms",
             "atom_channels": list(ATOM_CHANNELS), "subcells": subcells, "sigma_bohr": sigma,
             "atoms_scale": rms.tolist()},
        ),
        "n_electrons": ((lay.sample_dim,), electrons, {"long_name": "electron count", "units": "1"}),
    }
