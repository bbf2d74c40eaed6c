"""A window of consecutive states as the depth axis: layout, round trips, and which window holds a state."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simdiff.data.loading.loader import valid_windows
from simdiff.lit.encode import encode_starts
from simdiff.nets.window import (
    stack_window,
    unstack_window,
    window_cells,
    window_signature,
    window_starts,
    window_states,
    windowed_shape,
)


@pytest.mark.parametrize("has_depth", [True, False])
def test_stack_is_time_major_along_depth_and_unstack_inverts_it(has_depth: bool) -> None:
    b, k, c, d, h, w = 2, 3, 2, 4, 5, 6
    shape = (b, k, c, d, h, w) if has_depth else (b, k, c, h, w)
    states = torch.randn(shape)
    x = stack_window(states, has_depth)
    assert x.shape == ((b, c, k * d, h, w) if has_depth else (b, c, k, h, w))
    for j in range(k):
        for lev in range(d if has_depth else 1):
            at = j * d + lev if has_depth else j
            want = states[:, j, :, lev] if has_depth else states[:, j]
            assert torch.equal(x[:, :, at], want)
    assert torch.equal(unstack_window(x, k, has_depth), states)


def test_window_states_put_the_target_last() -> None:
    prev, target = torch.randn(2, 3, 1, 4, 4), torch.randn(2, 1, 4, 4)
    out = window_states({"previous": prev, "target": target})
    assert out.shape == (2, 4, 1, 4, 4) and torch.equal(out[:, :3], prev) and torch.equal(out[:, 3], target)
    assert torch.equal(window_states({"target": target})[:, 0], target)


def test_cells_signature_and_shape_of_a_window() -> None:
    mask = np.ones((2, 4, 4), bool)
    mask[1, 0, 0] = False
    tiled = window_cells(mask, 3, True)
    assert tiled.shape == (6, 4, 4) and not tiled[1, 0, 0] and not tiled[3, 0, 0] and not tiled[5, 0, 0]
    assert window_cells(torch.ones(4, 4), 2, False).shape == (2, 4, 4)
    assert windowed_shape([2, 64, 64], 2) == [4, 64, 64] and windowed_shape([64, 64], 3) == [3, 64, 64]
    sig = {"variables": ["q"], "spatial_shape": [2, 8, 8], "periodic": [False, True, True]}
    assert window_signature(sig, 2) == {**sig, "spatial_shape": [4, 8, 8], "periodic": [False, True, True]}
    flat = {"variables": ["t"], "spatial_shape": [8, 8], "periodic": [False, True]}
    assert window_signature(flat, 4)["periodic"] == [False, False, True]
    assert window_signature(flat, 1) is flat


def test_which_window_holds_a_state() -> None:
    run = np.array([0] * 5 + [1] * 7)  # runs 0..4 and 5..11
    # run by run, consecutive windows of 3; the last moved back to end at the run's end
    assert window_starts(run, np.arange(12), 3).tolist() == [0, 0, 0, 2, 2, 5, 5, 5, 8, 8, 8, 9]
    assert valid_windows(run, 3).tolist() == [False, False, True, True, True, False, False, True, True,
                                              True, True, True]
    # the latent of sample t encodes t-2..t, or its run's first window where that leaves the run
    assert encode_starts(run, 3).tolist() == [0, 0, 0, 1, 2, 5, 5, 5, 6, 7, 8, 9]
    with pytest.raises(ValueError, match="shorter than the autoencoder's window"):
        window_starts(np.array([0, 0, 1, 1, 1]), np.array([0]), 3)
