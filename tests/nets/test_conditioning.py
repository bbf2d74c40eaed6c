"""Conditioner: the spatial and vector conditions, and condition dropout for guidance."""

from __future__ import annotations

import pytest
import torch

from simdiff.nets.conditioning import Conditioner


def batch(b: int = 3, c: int = 2, w: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "previous": torch.randn(b, w - 1, c, 4, 6, generator=g),
        "time_features": torch.randn(b, 4, generator=g),
        "covariates": torch.randn(b, 2, generator=g),
        "label": torch.tensor([0, 2, 1])[:b],
    }


def test_spatial_concatenates_previous_static_and_indicator_in_order() -> None:
    static = torch.arange(24.0).reshape(1, 4, 6)
    cond = Conditioner(8, 2, previous=2, static=static, dropout={"previous": 0.5})
    assert cond.spatial_channels == 2 * 2 + 1 + 1
    b = batch()
    out = cond(3, previous=b["previous"])
    sp = out["spatial"]
    assert sp.shape == (3, 6, 4, 6)
    torch.testing.assert_close(sp[:, :4], b["previous"].flatten(1, 2))  # oldest first
    torch.testing.assert_close(sp[:, 4], static[0].expand(3, 4, 6))
    assert torch.all(sp[:, 5] == 1)  # present
    assert "vector" not in out


def test_dropping_previous_zeroes_it_and_flags_it() -> None:
    cond = Conditioner(8, 2, previous=1, dropout={"previous": 0.5})
    b = batch()
    drop = {"previous": torch.tensor([True, False, True])}
    sp = cond(3, previous=b["previous"], drop=drop)["spatial"]
    assert torch.all(sp[[0, 2]] == 0)
    torch.testing.assert_close(sp[1, :2], b["previous"][1, -1])  # only the latest state
    assert torch.all(sp[1, 2] == 1)


def test_vector_is_the_sum_of_embeddings_and_drops_remove_theirs() -> None:
    torch.manual_seed(0)
    cond = Conditioner(8, 2, time_features=4, covariates=2, labels=3,
                       dropout={"label": 0.2, "covariates": 0.2})
    b = batch()
    full = cond(3, **{k: b[k] for k in ("time_features", "covariates", "label")})["vector"]
    parts = (cond.time_mlp(b["time_features"]) + cond.covariate_mlp(b["covariates"])
             + cond.label_emb(b["label"]))
    torch.testing.assert_close(full, parts)
    no_label = cond(3, **{k: b[k] for k in ("time_features", "covariates", "label")},
                    drop={"label": torch.tensor([True, True, False])})["vector"]
    torch.testing.assert_close(no_label[:2], (parts - cond.label_emb(b["label"]))[:2])
    torch.testing.assert_close(no_label[2], full[2])


def test_sample_drop_rates_follow_the_config() -> None:
    cond = Conditioner(8, 2, previous=1, labels=3, dropout={"label": 0.25, "previous": 0.0})
    d = cond.sample_drop(20_000, generator=torch.Generator().manual_seed(1))
    assert set(d) == {"label", "previous"}
    assert d["label"].float().mean().item() == pytest.approx(0.25, abs=0.01)
    assert not d["previous"].any()


def test_bad_configuration_and_missing_conditions_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown conditions"):
        Conditioner(8, 2, dropout={"orography": 0.1})
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        Conditioner(8, 2, labels=2, dropout={"label": 1.0})
    with pytest.raises(ValueError, match=r"loader\.window >= 3"):
        Conditioner(8, 2, previous=2)(3, previous=batch(w=2)["previous"])
    with pytest.raises(ValueError, match="'label' is configured"):
        Conditioner(8, 2, labels=3)(3)


def test_atoms_fields_follow_static_fields_and_dropping_them_is_flagged() -> None:
    g = torch.Generator().manual_seed(1)
    atoms = torch.rand(3, 3, 2, 4, 6, generator=g)  # (B, atom channels, D, H, W)
    cond = Conditioner(8, 2, static=torch.ones(1, 2, 4, 6), atoms=3, dropout={"atoms": 0.5})
    assert cond.spatial_channels == 1 + 3 + 1
    drop = {"atoms": torch.tensor([False, True, False])}
    sp = cond(3, atoms=atoms, drop=drop)["spatial"]
    assert sp.shape == (3, 5, 2, 4, 6)
    torch.testing.assert_close(sp[[0, 2], 1:4], atoms[[0, 2]])
    assert torch.all(sp[1, 1:4] == 0) and torch.all(sp[1, 4] == 0)  # dropped: zeroed, indicator 0
    assert torch.all(sp[[0, 2], 4] == 1)
    with pytest.raises(ValueError, match="atoms"):
        cond(3)
