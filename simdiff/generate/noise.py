"""Counter-keyed random streams: the noise of (seed, init, member, step) is its own stream.

Every ensemble member's noise comes from a generator keyed by the counter tuple
``(seed, init, member, step)``, never by its position in a batch or by the rank that draws
it, so a member is reproducible on its own and a resumed or re-sharded run draws the same
noise. ``init`` is the index of the initial condition in the training store (``SAMPLE_INIT``
in ``sample`` mode, which has no initial condition), ``step`` the lead step: the initial
noise and every stochastic sampler step of that lead draw from that lead's generator, in
order.

Why the streams are independent. The key is encoded as a fixed-width entropy pool (two
32-bit words per counter, so distinct keys give distinct pools: numpy's variable-width
encoding of a list of ints is not injective, e.g. ``[2**32, 0]`` and ``[0, 1, 0]`` give the
same pool) and hashed by :class:`numpy.random.SeedSequence` (O'Neill's seed_seq design:
every output word depends on every input word through an avalanching hash, so neighbouring
counters give unrelated seeds). From that hash:

- a CPU generator gets its whole Mersenne-Twister state (624 32-bit words) from the
  SeedSequence, as numpy's own MT19937 does, and not from ``manual_seed``: torch seeds its CPU
  Mersenne Twister from the low 32 bits of the seed only (``manual_seed(1)`` and
  ``manual_seed(1 + 2**32)`` give the same stream), so 10^5 keyed streams would already hold a
  colliding pair with probability ~ 0.7 (birthday bound n^2 / 2^33).
- a CUDA generator (Philox, which uses all 64 bits) gets ``manual_seed(member_seed(...))``.

Two distinct keys then share a stream only if the hash collides, with probability ~ 2^-64
per pair on CUDA and negligible on CPU (19968-bit states). Draw on the CPU (the default) for
noise that is also the same on every machine: CPU and CUDA generators give different values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

#: The ``init`` counter used in ``sample`` mode (unconditional samples have no initial state).
SAMPLE_INIT = -1

_MASK64 = (1 << 64) - 1
_MT_WORDS = 624  # Mersenne-Twister state size (Matsumoto & Nishimura 1998)
# Byte layout of torch's CPU generator state (ATen CPUGeneratorImplState, checked at first use):
# uint64 seed | int32 left | int32 seeded | uint64 next | uint64 state[624] | normal caches.
_LEFT, _SEEDED, _NEXT, _STATE = 8, 12, 16, 24


def _seed_sequence(seed: int, init: int, member: int, step: int) -> np.random.SeedSequence:
    """SeedSequence over the fixed-width key: each counter as two 32-bit words (two's complement)."""
    words = []
    for name, value in (("seed", seed), ("init", init), ("member", member), ("step", step)):
        value = int(value)
        if not -(1 << 63) <= value < (1 << 63):
            raise ValueError(f"{name}={value} does not fit in a signed 64-bit integer")
        value &= _MASK64
        words += [value & 0xFFFFFFFF, value >> 32]
    return np.random.SeedSequence(np.array(words, dtype=np.uint32))


def member_seed(seed: int, init: int, member: int, step: int) -> int:
    """The 64-bit seed of the stream keyed by ``(seed, init, member, step)``, in [0, 2^64)."""
    return int(_seed_sequence(seed, init, member, step).generate_state(1, np.uint64)[0])


def _check_cpu_layout() -> None:
    """Fail loudly if torch's CPU generator state is not laid out as this module assumes."""
    state = torch.Generator().manual_seed(5).get_state().numpy()
    mt1 = (1812433253 * (5 ^ (5 >> 30)) + 1) & 0xFFFFFFFF  # MT19937 initialisation, word 1
    words = state[_STATE : _STATE + 16].view(np.uint64)
    if not (
        state.size == _STATE + 8 * _MT_WORDS + 40
        and state[:8].view(np.uint64)[0] == 5
        and state[_LEFT : _LEFT + 4].view(np.int32)[0] == 1
        and words[0] == 5
        and words[1] == mt1
    ):
        raise RuntimeError(
            f"torch {torch.__version__} lays out its CPU generator state differently from what "
            "simdiff.generate.noise expects; keyed CPU streams cannot be set. Pin torch to a version "
            "this module supports or update _STATE/_LEFT in simdiff/generate/noise.py"
        )


_layout_checked = False


def _keyed_cpu_generator(ss: np.random.SeedSequence, seed64: int) -> torch.Generator:
    """A CPU generator whose whole MT19937 state comes from ``ss``."""
    global _layout_checked
    if not _layout_checked:
        _check_cpu_layout()
        _layout_checked = True
    g = torch.Generator(device="cpu").manual_seed(seed64)
    state = g.get_state().numpy().copy()
    mt = ss.generate_state(_MT_WORDS, np.uint32).astype(np.uint64)
    mt[0] = 0x80000000  # most significant bit set: the state can never be all zero
    state[_STATE : _STATE + 8 * _MT_WORDS] = mt.view(np.uint8)
    state[_LEFT : _LEFT + 4] = np.array([1], dtype=np.int32).view(np.uint8)  # twist before 1st draw
    state[_SEEDED : _SEEDED + 4] = np.array([1], dtype=np.int32).view(np.uint8)
    state[_NEXT : _NEXT + 8] = np.zeros(1, dtype=np.uint64).view(np.uint8)
    g.set_state(torch.from_numpy(state))
    return g


def member_generator(
    seed: int, init: int, member: int, step: int, device: torch.device | str = "cpu"
) -> torch.Generator:
    """The generator of one ``(seed, init, member, step)`` key on ``device``.

    ``generator.initial_seed()`` is :func:`member_seed` of the key on every device.
    """
    ss = _seed_sequence(seed, init, member, step)
    seed64 = int(ss.generate_state(1, np.uint64)[0])
    if torch.device(device).type == "cpu":
        return _keyed_cpu_generator(ss, seed64)
    return torch.Generator(device=device).manual_seed(seed64)


def member_generators(
    seed: int,
    inits: Sequence[int],
    members: Sequence[int],
    step: int,
    device: torch.device | str = "cpu",
) -> list[torch.Generator]:
    """One generator per ``(init, member)`` row, rows in the given order.

    Args:
        seed: the run's seed (config ``seed``).
        inits: the init index of each row (``SAMPLE_INIT`` in sample mode); same length as
            ``members``.
        members: the member id of each row.
        step: the lead step the noise is for.
        device: where the generators live (CPU: the same noise on every machine).

    Returns:
        ``B`` generators, for :func:`simdiff.diffusion.noise.randn_rows` and the samplers.
    """
    if len(inits) != len(members):
        raise ValueError(f"{len(inits)} inits for {len(members)} members: give one init per row")
    return [member_generator(seed, i, m, step, device) for i, m in zip(inits, members, strict=True)]
