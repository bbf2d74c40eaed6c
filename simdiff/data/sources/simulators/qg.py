"""Two-layer quasi-geostrophic turbulence on a doubly periodic beta-plane (Phillips model).

The equations, in SI units (Phillips 1954; Flierl 1978; Vallis 2017, *Atmospheric and Oceanic
Fluid Dynamics*, 2nd ed., eqs. 5.133 and 9.54; the parameters of Arbic & Flierl 2004 as used
in the pyqg documentation), for the eddy potential vorticity ``q_i`` (s^-1) and eddy
streamfunction ``psi_i`` (m^2 s^-1) of layer ``i = 1`` (upper), ``2`` (lower)::

    q_1 = lap psi_1 + F_1 (psi_2 - psi_1)                     F_1 = 1 / (r_d^2 (1 + delta))
    q_2 = lap psi_2 + F_2 (psi_1 - psi_2)                     F_2 = delta F_1, delta = H_1/H_2

    d_t q_i + J(psi_i, q_i) + U_i d_x q_i + Q_{i,y} d_x psi_i = -[i = 2] r_ek lap psi_2 - nu lap^4 q_i

    Q_{1,y} = beta + F_1 (U_1 - U_2),    Q_{2,y} = beta - F_2 (U_1 - U_2)

with ``J(a, b) = a_x b_y - a_y b_x``. The flow is the eddy part; the mean shear ``U_1 - U_2``
(whose streamfunction ``-U_i y`` is not periodic) forces it through baroclinic instability.

Numerics: pseudo-spectral on an ``nx x nx`` grid, both layers batched in each FFT call (torch
FFT: about twice as fast as numpy's pocketfft at 64x64 on 2 CPU cores, see
benchmarks/bench_qg.py). The Jacobian is computed in flux form ``d_x(u q) + d_y(v q)``,
``(u, v) = (-psi_y, psi_x)``, on a state truncated by Orszag's (1971) 2/3 rule, so it is free of
aliasing and conserves energy and enstrophy exactly before time discretisation. Time stepping
is third-order Adams-Bashforth (Durran 1991; Euler then AB2 for the first two steps); the
hyperviscous term ``nu lap^4`` is integrated exactly by the factor ``exp(-nu kappa^8 dt)``, with
``nu`` set by the e-folding time ``tau_nu`` of the largest retained wavenumber ``K``:
``nu = 1 / (tau_nu kappa_K^8)``.

Spectral arrays are ``(layer, l, k)`` with ``layer = 2``, ``l`` the ``nx`` y-wavenumbers in FFT
order and ``k`` the ``nx // 2 + 1`` non-negative x-wavenumbers (``rfft2`` layout); physical
arrays are ``(layer, y, x)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import torch
import xarray as xr

SECONDS_PER_DAY = 86400.0


@dataclass(frozen=True)
class QGParams:
    """Physical and numerical parameters of the two-layer model (SI units).

    Attributes:
        nx: grid points along x and y (square, doubly periodic domain).
        length: domain side ``L`` in m.
        beta: planetary vorticity gradient ``beta`` in m^-1 s^-1.
        deformation_radius: first baroclinic deformation radius ``r_d`` in m.
        delta: layer-thickness ratio ``H_1 / H_2``.
        u1, u2: mean zonal velocity of the upper and lower layer in m s^-1.
        bottom_drag: linear drag rate ``r_ek`` on the lower layer in s^-1.
        dt: time step in s.
        hyperviscous_time: e-folding time ``tau_nu`` (s) of the largest retained wavenumber
            under the ``lap^4`` hyperviscosity.
    """

    nx: int = 64
    length: float = 1.0e6
    beta: float = 1.5e-11
    deformation_radius: float = 15.0e3
    delta: float = 0.25
    u1: float = 0.025
    u2: float = 0.0
    bottom_drag: float = 5.787e-7
    dt: float = 7200.0
    hyperviscous_time: float = 7200.0

    def __post_init__(self) -> None:
        if self.nx < 8 or self.nx % 2:
            raise ValueError(f"QGParams.nx must be even and >= 8, got {self.nx}")
        for name in ("length", "deformation_radius", "delta", "dt", "hyperviscous_time"):
            if not getattr(self, name) > 0:
                raise ValueError(f"QGParams.{name} must be > 0, got {getattr(self, name)}")
        if self.bottom_drag < 0:
            raise ValueError(f"QGParams.bottom_drag must be >= 0, got {self.bottom_drag}")

    @property
    def F1(self) -> float:
        """``F_1 = 1 / (r_d^2 (1 + delta))`` in m^-2."""
        return 1.0 / (self.deformation_radius**2 * (1.0 + self.delta))

    @property
    def F2(self) -> float:
        """``F_2 = delta F_1`` in m^-2."""
        return self.delta * self.F1

    @property
    def layer_fractions(self) -> tuple[float, float]:
        """``(H_1 / H, H_2 / H)``."""
        return self.delta / (1.0 + self.delta), 1.0 / (1.0 + self.delta)

    @property
    def dx(self) -> float:
        return self.length / self.nx

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True)
class QGState:
    """The model state: spectral PV, the last tendencies (for Adams-Bashforth) and the step.

    Attributes:
        qh: spectral eddy PV ``(layer, l, k)``, complex128.
        history: previous tendencies ``(n_prev, layer, l, k)``, most recent first, ``n_prev <= 2``.
        step: number of steps taken.
    """

    qh: torch.Tensor
    history: torch.Tensor
    step: int

    def to_numpy(self) -> dict[str, np.ndarray]:
        """Arrays for ``np.savez`` (bit-exact restart)."""
        return {"qh": self.qh.numpy(), "history": self.history.numpy(), "step": np.asarray(self.step)}

    @classmethod
    def from_numpy(cls, arrays: dict[str, np.ndarray]) -> QGState:
        return cls(
            qh=torch.from_numpy(np.array(arrays["qh"])),
            history=torch.from_numpy(np.array(arrays["history"])),
            step=int(arrays["step"]),
        )


class QGModel:
    """Spectral operators and the time step of the two-layer model (see the module docstring).

    Args:
        params: the model parameters.
        dealias: apply the 2/3 rule (turn off only to show aliasing in tests).
    """

    def __init__(self, params: QGParams, dealias: bool = True) -> None:
        self.params = p = params
        n = p.nx
        dk = 2.0 * math.pi / p.length
        self.k = torch.arange(n // 2 + 1, dtype=torch.float64) * dk  # (k,)
        self.l = torch.fft.fftfreq(n, d=1.0 / n, dtype=torch.float64) * dk  # (l,)
        self.kk = self.k[None, :].expand(n, -1)  # (l, k)
        self.ll = self.l[:, None].expand(-1, n // 2 + 1)  # (l, k)
        self.kappa2 = self.kk**2 + self.ll**2  # (l, k)
        # Orszag's 2/3 rule: keep |k|, |l| <= K with 3K < n, so quadratic products alias
        # only onto discarded modes.
        self.cutoff = (n - 1) // 3
        k_idx = torch.arange(n // 2 + 1)[None, :]
        l_idx = torch.fft.fftfreq(n, d=1.0 / n).round().long()[:, None]
        keep = (k_idx <= self.cutoff) & (l_idx.abs() <= self.cutoff)
        self.mask = keep if dealias else torch.ones_like(keep)  # (l, k) bool
        self.mask_c = self.mask.to(torch.complex128)
        # rfft weights: columns k = 0 and the Nyquist column appear once in the full spectrum.
        w = torch.full((n // 2 + 1,), 2.0, dtype=torch.float64)
        w[0] = 1.0
        w[-1] = 1.0
        self.weight = w[None, :].expand(n, -1)  # (l, k)
        # Inversion psi = M^-1 q per wavenumber: M = [[-k2 - F1, F1], [F2, -k2 - F2]].
        F1, F2 = p.F1, p.F2
        det = self.kappa2 * (self.kappa2 + F1 + F2)
        det[0, 0] = 1.0
        self.inv = torch.stack(
            [
                torch.stack([-(self.kappa2 + F2) / det, -F1 / det]),
                torch.stack([-F2 / det, -(self.kappa2 + F1) / det]),
            ]
        )  # (layer_out, layer_in, l, k)
        self.inv[:, :, 0, 0] = 0.0  # the mean of psi is arbitrary: set it to zero
        self.inv = self.inv.to(torch.complex128)
        self.ik = (1j * self.kk).to(torch.complex128)  # (l, k)
        self.il = (1j * self.ll).to(torch.complex128)  # (l, k)
        self.grad = torch.stack([-self.il, self.ik])[:, None]  # (component, 1, l, k): (u, v) from psi
        U = torch.tensor([p.u1, p.u2], dtype=torch.float64)
        Qy = torch.tensor([p.beta + F1 * (p.u1 - p.u2), p.beta - F2 * (p.u1 - p.u2)], dtype=torch.float64)
        drag = torch.stack([torch.zeros_like(self.kappa2), p.bottom_drag * self.kappa2])  # (layer, l, k)
        # The linear terms as one 2x2 operator per wavenumber acting on q (layer_out, layer_in, l, k):
        # -i k U_i q_i - i k Q_{i,y} psi_i + [i = 2] r_ek kappa^2 psi_2, with psi = M^-1 q.
        eye = torch.eye(2, dtype=torch.complex128)[:, :, None, None]
        self.linear = (
            -self.ik * U[:, None, None, None] * eye
            + (-self.ik * Qy[:, None, None, None] + drag[:, None]) * self.inv
        ) * self.mask_c
        kappa_cut = self.cutoff * dk
        nu = 1.0 / (p.hyperviscous_time * kappa_cut**8)
        self.filter = torch.exp(-nu * self.kappa2**4 * p.dt).to(torch.complex128)  # (l, k)

    # -- spectral transforms -------------------------------------------------------------
    def to_spectral(self, a: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Physical ``(..., y, x)`` real -> spectral ``(..., l, k)``, truncated by the 2/3 rule."""
        return torch.fft.rfft2(torch.as_tensor(a, dtype=torch.float64)) * self.mask_c

    def to_physical(self, ah: torch.Tensor) -> torch.Tensor:
        """Spectral ``(..., l, k)`` -> physical ``(..., y, x)`` real."""
        n = self.params.nx
        return torch.fft.irfft2(ah, s=(n, n))

    # -- PV inversion (module docstring, first two equations) --------------------------
    def invert(self, qh: torch.Tensor) -> torch.Tensor:
        """Streamfunction from PV: ``(layer, l, k)`` -> ``(layer, l, k)``."""
        return _matvec(self.inv, qh)

    def pv(self, psih: torch.Tensor) -> torch.Tensor:
        """PV from streamfunction: ``(layer, l, k)`` -> ``(layer, l, k)``."""
        p = self.params
        lap = -self.kappa2 * psih
        return torch.stack([lap[0] + p.F1 * (psih[1] - psih[0]), lap[1] + p.F2 * (psih[0] - psih[1])])

    # -- dynamics ------------------------------------------------------------------------
    def jacobian(self, psih: torch.Tensor, qh: torch.Tensor) -> torch.Tensor:
        """Spectral ``J(psi, q) = d_x(u q) + d_y(v q)`` per layer, 2/3-truncated: ``(layer, l, k)``."""
        fields = self.to_physical(torch.cat([self.grad * psih, qh[None]]))  # (3, layer, y, x): u, v, q
        flux = torch.fft.rfft2(fields[:2] * fields[2])  # (2, layer, l, k): u q, v q
        return (self.ik * flux[0] + self.il * flux[1]) * self.mask_c

    def tendency(self, qh: torch.Tensor, nonlinear: bool = True) -> torch.Tensor:
        """``d_t q`` without hyperviscosity: ``(layer, l, k)`` -> ``(layer, l, k)``."""
        rhs = _matvec(self.linear, qh)
        if nonlinear:
            rhs = rhs - self.jacobian(self.invert(qh), qh)
        return rhs

    def step(self, state: QGState, nonlinear: bool = True) -> QGState:
        """One AB3 step (Euler, AB2 for the first two) followed by the exact hyperviscous factor."""
        dt = self.params.dt
        t0 = self.tendency(state.qh, nonlinear)
        h = state.history
        if h.shape[0] == 0:
            incr = t0
        elif h.shape[0] == 1:
            incr = torch.add(1.5 * t0, h[0], alpha=-0.5)
        else:
            incr = torch.add(t0 * (23.0 / 12.0), h[0], alpha=-16.0 / 12.0).add_(h[1], alpha=5.0 / 12.0)
        qh = torch.add(state.qh, incr, alpha=dt).mul_(self.filter)
        history = torch.stack([t0, h[0]]) if h.shape[0] else t0[None]
        return QGState(qh=qh, history=history, step=state.step + 1)

    def initial_state(self, qh: torch.Tensor) -> QGState:
        """A state at step 0 from spectral PV ``(layer, l, k)`` (truncated by the 2/3 rule)."""
        n = self.params.nx
        empty = torch.zeros((0, 2, n, n // 2 + 1), dtype=torch.complex128)
        return QGState(qh=qh.to(torch.complex128) * self.mask_c, history=empty, step=0)

    def random_state(self, seed: int, amplitude: float = 1.0e-7) -> QGState:
        """Small white-noise PV (std ``amplitude`` s^-1 per layer) that seeds the instability."""
        n = self.params.nx
        rng = np.random.default_rng(seed)
        q = amplitude * rng.standard_normal((2, n, n))
        qh = self.to_spectral(q)
        qh[:, 0, 0] = 0.0
        return self.initial_state(qh)

    # -- diagnostics -----------------------------------------------------------------------
    def spectral_mean(self, ah: torch.Tensor, bh: torch.Tensor) -> torch.Tensor:
        """Domain mean of ``a b`` by Parseval: ``(..., l, k)`` x2 -> ``(...)``."""
        n = self.params.nx
        return (self.weight * (ah * bh.conj()).real).sum(dim=(-2, -1)) / float(n**2) ** 2

    def kinetic_energy(self, qh: torch.Tensor) -> torch.Tensor:
        """Per-layer kinetic energy ``<|grad psi_i|^2> / 2`` in m^2 s^-2: ``(layer,)``."""
        psih = self.invert(qh)
        return 0.5 * self.spectral_mean(self.kappa2 * psih, psih)

    def energy(self, qh: torch.Tensor) -> float:
        """Total energy per unit mass ``sum_i h_i <|grad psi_i|^2>/2 + h_1 F_1 <(psi_1-psi_2)^2>/2``."""
        h1, h2 = self.params.layer_fractions
        ke = self.kinetic_energy(qh)
        psih = self.invert(qh)
        d = psih[0] - psih[1]
        ape = 0.5 * h1 * self.params.F1 * self.spectral_mean(d, d)
        return float(h1 * ke[0] + h2 * ke[1] + ape)

    def enstrophy(self, qh: torch.Tensor) -> torch.Tensor:
        """Per-layer potential enstrophy ``<q_i^2> / 2`` in s^-2: ``(layer,)``."""
        return 0.5 * self.spectral_mean(qh, qh)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, then restore the previous number.

    At 64x64 each FFT is too small to split: one thread is fastest, and much faster than
    several on a busy machine (benchmarks/bench_qg.py).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _matvec(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-wavenumber 2x2 product ``(i, j, l, k) x (j, l, k) -> (i, l, k)``."""
    return torch.stack([a[0, 0] * x[0] + a[0, 1] * x[1], a[1, 0] * x[0] + a[1, 1] * x[1]])


def kinetic_energy_spectrum(psi: xr.DataArray, x_dim: str = "x", y_dim: str = "y") -> xr.DataArray:
    """Isotropic kinetic-energy spectrum ``E(kappa)`` of a doubly periodic streamfunction.

    ``E`` is summed over annuli ``|kappa - kappa_n| < dk / 2`` so that
    ``sum_n E_n = <|grad psi|^2> / 2``; it keeps every dim other than ``y_dim``/``x_dim``.

    Args:
        psi: streamfunction (m^2 s^-1) with dims ``(..., y, x)`` and 1D coords ``y``, ``x`` in m
            on a uniform square grid.

    Returns:
        ``E`` in m^3 s^-2 (per unit wavenumber) with dims ``(..., wavenumber)``; the
        ``wavenumber`` coord is in rad m^-1.
    """
    ny, nx = psi.sizes[y_dim], psi.sizes[x_dim]
    dx = float(psi[x_dim][1] - psi[x_dim][0])
    length = dx * nx
    dk = 2.0 * math.pi / length
    other = [d for d in psi.dims if d not in (y_dim, x_dim)]
    a = np.asarray(psi.transpose(*other, y_dim, x_dim).values, dtype=np.float64)
    ah = np.fft.fft2(a) / (nx * ny)
    kx = np.fft.fftfreq(nx, d=1.0 / nx) * dk
    ky = np.fft.fftfreq(ny, d=1.0 / ny) * dk
    kappa = np.sqrt(kx[None, :] ** 2 + ky[:, None] ** 2)
    density = 0.5 * kappa**2 * np.abs(ah) ** 2  # (..., y, x): sum = <|grad psi|^2>/2
    n_bins = min(nx, ny) // 2
    idx = np.rint(kappa / dk).astype(int)
    flat = density.reshape(*density.shape[:-2], -1)
    e = np.stack([flat[..., idx.ravel() == n].sum(-1) for n in range(1, n_bins + 1)], axis=-1) / dk
    coords = {d: psi[d] for d in other if d in psi.coords}
    coords["wavenumber"] = ("wavenumber", dk * np.arange(1, n_bins + 1), {"units": "rad m-1"})
    return xr.DataArray(
        e,
        dims=(*other, "wavenumber"),
        coords=coords,
        attrs={"units": "m3 s-2", "long_name": "isotropic kinetic energy spectrum"},
    )


def spectral_slope(spectrum: xr.DataArray, k_min: float, k_max: float) -> float:
    """Least-squares slope of ``log E`` against ``log kappa`` over ``k_min <= kappa <= k_max``.

    Args:
        spectrum: ``(wavenumber,)`` from :func:`kinetic_energy_spectrum` (reduce other dims first).
        k_min, k_max: the fit range in rad m^-1.
    """
    sel = spectrum.where((spectrum.wavenumber >= k_min) & (spectrum.wavenumber <= k_max), drop=True)
    if sel.sizes["wavenumber"] < 3:
        raise ValueError(f"fit range [{k_min}, {k_max}] holds {sel.sizes['wavenumber']} wavenumbers; need 3")
    slope, _ = np.polyfit(np.log(sel.wavenumber.values), np.log(sel.values), 1)
    return float(slope)
