"""Gaussian cube files: a strict reader and a writer, everything in bohr.

The format (Gaussian 16 manual, ``cubegen``; also written by Psi4, ORCA, CRYSTAL, NCIPLOT)::

    line 1-2   two free comment lines
    line 3     N_atoms  x0 y0 z0  [N_val]     origin; N_atoms < 0: a DSET_IDS record follows
    line 4-6   n_i  v_ix v_iy v_iz            voxel count and voxel vector of axis i = 1, 2, 3;
                                              n_i < 0: the vector (and, for n_1 < 0, the origin
                                              and atom positions) are in angstrom
    next |N_atoms| lines  Z  charge  x y z    atomic number, nuclear charge, position
    [DSET_IDS] m  id_1 ... id_m               only when N_atoms < 0 (may wrap over lines)
    data       n_1 * n_2 * n_3 * m values, axis 3 fastest, and the m datasets interleaved
               fastest of all, i.e. C order of an array ``(n_1, n_2, n_3, m)``.

Units are converted explicitly on reading (1 bohr = 0.529177210903 angstrom, CODATA 2018);
:class:`Cube` always holds bohr. Malformed input raises :class:`DataError` naming the file,
the 1-based line number, what was found and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simdiff.base.atomic import atomic_file
from simdiff.base.errors import DataError

ANGSTROM_PER_BOHR = 0.529177210903
"""CODATA 2018 Bohr radius in angstrom."""


@dataclass(frozen=True)
class CubeHeader:
    """Everything in a cube file except the values; lengths in bohr.

    Attributes:
        comments: the two comment lines, stripped.
        origin: (cartesian=3,) position of voxel (0, 0, 0).
        counts: (axis=3,) voxel counts (n_1, n_2, n_3), always positive.
        voxel: (axis=3, cartesian=3) voxel vectors; row i is the step along axis i.
        atomic_numbers: (atom,) int.
        charges: (atom,) nuclear charges as written (often 0 or Z).
        positions: (atom, cartesian=3) atom positions.
        dataset_ids: the DSET_IDS (e.g. orbital numbers) or None for a plain cube.
        n_values: values per voxel (len(dataset_ids), or N_val, or 1).
        angstrom: True when the file was written in angstrom (negative n_1).
        data_line: 1-based line number where the values start.
        path: the file read, for messages ("<memory>" when not from a file).
    """

    comments: tuple[str, str]
    origin: np.ndarray
    counts: tuple[int, int, int]
    voxel: np.ndarray
    atomic_numbers: np.ndarray
    charges: np.ndarray
    positions: np.ndarray
    dataset_ids: tuple[int, ...] | None = None
    n_values: int = 1
    angstrom: bool = False
    data_line: int = 0
    path: str = "<memory>"

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(n_1, n_2, n_3, n_values)``: the shape of :attr:`Cube.data`."""
        return (*self.counts, self.n_values)

    @property
    def voxel_volume(self) -> float:
        """|det(voxel vectors)| in bohr^3."""
        return float(abs(np.linalg.det(self.voxel)))

    @property
    def cell(self) -> np.ndarray:
        """(axis=3, cartesian=3) full cell edges ``n_i * v_i`` in bohr."""
        return self.voxel * np.asarray(self.counts, dtype=float)[:, None]

    @property
    def n_atoms(self) -> int:
        return int(self.atomic_numbers.shape[0])


@dataclass(frozen=True)
class Cube:
    """A parsed cube file: header plus values.

    Attributes:
        header: the :class:`CubeHeader` (bohr).
        data: (n_1, n_2, n_3, n_values) float64; ``data[i, j, k, s]`` sits at
            ``origin + i v_1 + j v_2 + k v_3``.
    """

    header: CubeHeader
    data: np.ndarray

    def __post_init__(self) -> None:
        if self.data.shape != self.header.shape:
            raise ValueError(f"cube data shape {self.data.shape} does not match header {self.header.shape}")


def _fail(path: str, line: int, found: str, expected: str) -> DataError:
    found = found.strip()
    if len(found) > 80:
        found = found[:77] + "..."
    return DataError(
        f"{path}: line {line}: found {found!r}, expected {expected}; the file is not a valid "
        "Gaussian cube file (fix or regenerate it)"
    )


def _numbers(path: str, lines: list[str], index: int, n: int, what: str, int_first: bool) -> list[float]:
    """Parse ``n`` numbers (first one an int when ``int_first``) from line ``index`` (0-based)."""
    if index >= len(lines):
        raise _fail(path, index + 1, "end of file", what)
    tokens = lines[index].split()
    if len(tokens) < n:
        raise _fail(path, index + 1, lines[index], f"{what} ({n} numbers)")
    try:
        first = int(tokens[0]) if int_first else float(tokens[0])
        return [first, *(float(t) for t in tokens[1:n])]
    except ValueError:
        raise _fail(path, index + 1, lines[index], what) from None


def _parse_header(path: str, lines: list[str]) -> CubeHeader:
    if len(lines) < 6:
        raise _fail(
            path, len(lines) + 1, "end of file", "2 comment lines, the atom-count line and 3 axis lines"
        )
    tokens3 = lines[2].split()
    natoms_raw, x0, y0, z0 = _numbers(
        path, lines, 2, 4, "'N_atoms x0 y0 z0 [N_val]' (N_atoms an integer)", True
    )
    natoms_raw = int(natoms_raw)
    n_val = 1
    if len(tokens3) >= 5:
        try:
            n_val = int(tokens3[4])
        except ValueError:
            raise _fail(path, 3, lines[2], "an integer N_val as the fifth number") from None
        if n_val < 1:
            raise _fail(path, 3, lines[2], "N_val >= 1")
    counts: list[int] = []
    vectors: list[list[float]] = []
    for i in range(3):
        n, vx, vy, vz = _numbers(path, lines, 3 + i, 4, f"axis {i + 1} line 'n_{i + 1} vx vy vz'", True)
        if n == 0:
            raise _fail(path, 4 + i, lines[3 + i], f"a non-zero voxel count n_{i + 1}")
        counts.append(int(n))
        vectors.append([vx, vy, vz])
    signs = {c < 0 for c in counts}
    if len(signs) > 1:
        raise _fail(
            path, 4, " | ".join(lines[3:6]), "voxel counts of one sign (negative means angstrom for all axes)"
        )
    angstrom = counts[0] < 0
    scale = 1.0 / ANGSTROM_PER_BOHR if angstrom else 1.0
    voxel = np.asarray(vectors, dtype=float) * scale
    if abs(np.linalg.det(voxel)) == 0.0:
        raise _fail(path, 4, " | ".join(lines[3:6]), "linearly independent voxel vectors")
    natoms = abs(natoms_raw)
    numbers = np.zeros(natoms, dtype=np.int64)
    charges = np.zeros(natoms, dtype=float)
    positions = np.zeros((natoms, 3), dtype=float)
    for a in range(natoms):
        idx = 6 + a
        z, q, x, y, zz = _numbers(
            path,
            lines,
            idx,
            5,
            f"atom line 'Z charge x y z' for atom {a + 1} of {natoms} (Z an integer)",
            True,
        )
        if z < 0:
            raise _fail(path, idx + 1, lines[idx], "a non-negative atomic number Z")
        numbers[a], charges[a], positions[a] = int(z), q, (x, y, zz)
    positions *= scale
    line = 6 + natoms
    dataset_ids: tuple[int, ...] | None = None
    if natoms_raw < 0:
        tokens: list[str] = []
        start = line
        want = None
        while want is None or len(tokens) < want:
            if line >= len(lines):
                raise _fail(path, line + 1, "end of file", "the DSET_IDS record 'm id_1 ... id_m'")
            tokens += lines[line].split()
            line += 1
            if want is None and tokens:
                try:
                    want = int(tokens[0]) + 1
                except ValueError:
                    raise _fail(
                        path, start + 1, lines[start], "the DSET_IDS record 'm id_1 ... id_m'"
                    ) from None
                if want < 2:
                    raise _fail(path, start + 1, lines[start], "a DSET_IDS count m >= 1")
        try:
            dataset_ids = tuple(int(t) for t in tokens[1:want])
        except ValueError:
            raise _fail(path, start + 1, lines[start], "integer dataset ids in the DSET_IDS record") from None
        if len(tokens) != want:
            raise _fail(path, line, lines[line - 1], f"exactly {want - 1} dataset ids after the count")
        n_val = len(dataset_ids)
    return CubeHeader(
        comments=(lines[0].strip(), lines[1].strip()),
        origin=np.array([x0, y0, z0], dtype=float) * scale,
        counts=(abs(counts[0]), abs(counts[1]), abs(counts[2])),
        voxel=voxel,
        atomic_numbers=numbers,
        charges=charges,
        positions=positions,
        dataset_ids=dataset_ids,
        n_values=n_val,
        angstrom=angstrom,
        data_line=line + 1,
        path=path,
    )


def _read_lines(path: str | Path, max_lines: int | None = None) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            if max_lines is None:
                return f.read().splitlines()
            out = []
            for line in f:
                out.append(line.rstrip("\n"))
                if len(out) >= max_lines:
                    break
            return out
    except OSError as e:
        raise DataError(f"{path}: cannot read the cube file ({e.strerror}); check the path") from None


def read_cube_header(path: str | Path) -> CubeHeader:
    """Read only the header of a cube file (cheap: stops after the atom and DSET_IDS lines)."""
    lines = _read_lines(path, max_lines=6)
    if len(lines) >= 3:
        try:
            natoms = abs(int(lines[2].split()[0]))
        except (ValueError, IndexError):
            natoms = 0
        # atoms, then a DSET_IDS record of at most a few lines (10 ids a line in Gaussian)
        lines = _read_lines(path, max_lines=6 + natoms + 64)
    header = _parse_header(str(path), lines)
    return header


def _parse_values(header: CubeHeader, lines: list[str]) -> np.ndarray:
    start = header.data_line - 1
    expected = int(np.prod(header.shape))
    body = lines[start:]
    try:
        values = np.array(" ".join(body).split(), dtype=float)
    except ValueError:
        for k, text in enumerate(body):
            for token in text.split():
                try:
                    float(token)
                except ValueError:
                    raise _fail(header.path, start + k + 1, text, "numeric voxel values") from None
        raise  # unreachable: some token failed above
    if values.size != expected:
        n1, n2, n3, m = header.shape
        raise DataError(
            f"{header.path}: found {values.size} voxel values from line {header.data_line} to the end, "
            f"expected n_1*n_2*n_3*m = {n1}*{n2}*{n3}*{m} = {expected}; the file is truncated or its "
            "header is wrong (fix or regenerate it)"
        )
    return values.reshape(header.shape)


def read_cube(path: str | Path) -> Cube:
    """Read a Gaussian cube file; lengths are converted to bohr.

    Returns:
        :class:`Cube` with ``data`` of shape (n_1, n_2, n_3, n_values).

    Raises:
        DataError: naming the file, the line and what was expected, for any malformed input.
    """
    lines = _read_lines(path)
    header = _parse_header(str(path), lines)
    return Cube(header=header, data=_parse_values(header, lines))


def _fmt(x: float) -> str:
    return f"{x: .6E}"


def write_cube(path: str | Path, cube: Cube, *, angstrom: bool = False) -> Path:
    """Write ``cube`` atomically (temp file beside ``path``, then rename).

    Args:
        path: target file.
        cube: header (bohr) and data (n_1, n_2, n_3, n_values).
        angstrom: write lengths in angstrom (negative voxel counts) instead of bohr.

    Returns:
        The path written.
    """
    h = cube.header
    path = Path(path)
    scale = ANGSTROM_PER_BOHR if angstrom else 1.0
    sign = -1 if angstrom else 1
    multi = h.dataset_ids is not None
    val = f" {h.n_values:4d}" if not multi and h.n_values != 1 else ""
    natoms = -h.n_atoms if multi else h.n_atoms
    out = [h.comments[0], h.comments[1]]
    o = h.origin * scale
    out.append(f"{natoms:5d} {o[0]:12.6f} {o[1]:12.6f} {o[2]:12.6f}{val}")
    for i in range(3):
        v = h.voxel[i] * scale
        out.append(f"{sign * h.counts[i]:5d} {v[0]:12.6f} {v[1]:12.6f} {v[2]:12.6f}")
    for z, q, p in zip(h.atomic_numbers, h.charges, h.positions * scale, strict=True):
        out.append(f"{int(z):5d} {q:12.6f} {p[0]:12.6f} {p[1]:12.6f} {p[2]:12.6f}")
    if multi:
        ids = [len(h.dataset_ids), *h.dataset_ids]  # type: ignore[arg-type]
        out += [" ".join(f"{i:4d}" for i in ids[k : k + 10]) for k in range(0, len(ids), 10)]
    # one record per (i, j): the n_3 * m values of that row, six to a line
    rows = np.asarray(cube.data, dtype=float).reshape(h.counts[0] * h.counts[1], -1)
    for row in rows:
        for k in range(0, row.size, 6):
            out.append(" ".join(_fmt(x) for x in row[k : k + 6]))
    with atomic_file(path) as f:
        f.write("\n".join(out) + "\n")
    return path
