"""The downstream certificate on a real training store: the emulator, the arms, determinism, resume."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from simdiff.base.errors import DataError
from simdiff.base.provenance import provenance
from simdiff.data.field import Field
from simdiff.data.geometry import Geometry
from simdiff.data.stores.prepare import PrepareOptions, write_training_store
from simdiff.data.stores.training import TrainingStore
from simdiff.evaluate.certificate import Downstream, downstream_error, interval, train_emulator
from simdiff.runs.certify import Certify, certify, real_pairs
from simdiff.runs.layout import RunDir

N = 80


def _advected(n: int, seed: int) -> np.ndarray:
    """(n, 2, 8, 8): each state is the last one shifted one cell east, plus a little noise."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, 2, 8, 8))
    x[0] = rng.standard_normal((2, 8, 8))
    for t in range(1, n):
        x[t] = np.roll(x[t - 1], 1, axis=-1) + 0.05 * rng.standard_normal((2, 8, 8))
    return x


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    root = tmp_path_factory.mktemp("certify")
    ds = xr.Dataset(
        {"q": (("time", "level", "y", "x"), _advected(N, 0).astype(np.float32), {"units": "1"})},
        coords={"time": ("time", np.arange(N) * 1.0, {"units": "days"}), "level": [1, 2],
                "y": ("y", np.arange(8.0), {"axis": "Y"}), "x": ("x", np.arange(8.0), {"axis": "X"})},
    )
    geometry = Geometry(dims=("level", "y", "x"), periodic=frozenset({"x", "y"}),
                        weights=xr.DataArray(np.ones((2, 8, 8)), dims=("level", "y", "x")),
                        mask=xr.DataArray(np.ones((2, 8, 8), bool), dims=("level", "y", "x")))
    run = RunDir(root)
    write_training_store(Field(ds, geometry), run.store, transforms={},
                         options=PrepareOptions(progress=False),
                         provenance=provenance([], {"data": {"name": "advection"}}))
    return run


def _augmented(run: RunDir, noise: float, seed: int = 1) -> xr.Dataset:
    """Next-state draws of the train states: the true successor plus ``noise`` (physical units)."""
    rng = np.random.default_rng(seed)
    sources = rng.choice(TrainingStore(run.store).indices("train")[:-1], 40)
    nxt = _advected(N, 0)[sources + 1] + noise * rng.standard_normal((40, 2, 8, 8))
    return xr.Dataset(
        {"q": (("time", "level", "y", "x"), nxt.astype(np.float32)),
         "synthetic": ("time", np.ones(40, bool)), "source_index": ("time", sources.astype(np.int64))},
        coords={"time": np.arange(40), "level": [1, 2]},
        attrs={"simdiff_draws": "next_state", "history": f"test noise {noise}"},
    )


SMALL = Downstream(width=8, levels=2, layers=1, steps=40, batch_size=8, lr=5e-3)


def test_the_emulator_learns_advection_far_below_persistence(run: RunDir):
    store = TrainingStore(run.store)
    train, test = real_pairs(store, "train"), real_pairs(store, "test")
    assert train.inputs.shape[1:] == (2, 8, 8)  # the two levels folded into channels
    w = np.ones((2, 8, 8), np.float32)
    spec = Downstream(width=8, layers=2, steps=300, batch_size=8, lr=5e-3)
    model = train_emulator([(train.inputs, train.targets)], w, [True, True], spec, seed=0)
    persistence = downstream_error(None, test.inputs, test.targets, w)
    assert downstream_error(model, test.inputs, test.targets, w) < 0.2 * persistence


def test_interval_is_the_student_t_interval():
    out = interval([1.0, 2.0, 3.0])
    assert out["mean"] == 2.0
    assert out["upper"] - 2.0 == pytest.approx(4.303 * 1.0 / np.sqrt(3))
    assert interval([5.0]) == {"mean": 5.0, "lower": None, "upper": None}


def test_certificate_scores_every_arm_is_deterministic_and_resumes(run: RunDir):
    settings = Certify(fractions=(0.1, 1.0), seeds=2, downstream=SMALL)
    garbage = _augmented(run, noise=3.0)
    a = certify(run, garbage, Path("aug.zarr"), settings)
    assert json.loads(run.certificate.read_text()) == json.loads(json.dumps(a))
    assert len(list(run.root.glob("certificate.cells-*"))) == 1  # the finished cells stay
    assert set(a["by_fraction"]) == {"0.1", "1"} and a["pairs"]["synthetic"] == 40
    # draws that are mostly noise teach the emulator less than the real pairs do
    assert a["by_fraction"]["1"]["ratio_synthetic"]["mean"] > 1.0
    assert a == certify(run, garbage, Path("aug.zarr"), settings)  # the same numbers again
    # a killed run left a finished cell: the next run takes it instead of training it again
    run.certificate.unlink()
    from simdiff.runs import certify as module

    inputs = {"store": str(run.store), "augmented": "aug.zarr", "augmented_history": "test noise 3.0",
              "seed": 0}
    partial = run.root / f"certificate.cells-{module._digest(settings, inputs)}"
    shutil.rmtree(partial)
    partial.mkdir()
    (partial / "real@1@seed0.json").write_text(json.dumps({"test_error": 123.0}))
    b = certify(run, garbage, Path("aug.zarr"), settings)
    assert b["errors"]["real"]["1"][0] == 123.0 and b["errors"]["real"]["1"][1] == a["errors"]["real"]["1"][1]
    # more seeds and a new fraction: the finished cells are taken, only the new ones train
    wider = Certify(fractions=(0.1, 0.5, 1.0), seeds=3, downstream=SMALL)
    assert module._digest(wider, inputs) == module._digest(settings, inputs)
    assert module._digest(Certify(fractions=(0.1, 1.0), seeds=2, downstream=replace(SMALL, steps=41)),
                          inputs) != module._digest(settings, inputs)
    c = certify(run, garbage, Path("aug.zarr"), wider)
    assert c["errors"]["real"]["1"][:2] == b["errors"]["real"]["1"] and len(c["errors"]["real"]["1"]) == 3
    assert c["errors"]["real"]["0.5"] and len(list(partial.glob("*.json"))) == 3 * 7


def test_bad_settings_and_foreign_draws_are_refused(run: RunDir):
    with pytest.raises(DataError, match=r"certify\.fractions"):
        Certify(fractions=(0.0, 1.0))
    with pytest.raises(DataError, match=r"certify\.task"):
        Certify(task="regress")
    states = _augmented(run, 0.1).assign_attrs(simdiff_draws="state")
    with pytest.raises(DataError, match="not next-state draws"):
        certify(run, states, Path("aug.zarr"), Certify(downstream=SMALL))


# -- the label task: a classifier of a labelled dataset ---------------------------------------
LABELS = ["left", "centre", "right"]
M = 90


G = 16


def _blobs(labels: np.ndarray, seed: int) -> np.ndarray:
    """(n, G, G, G) non-negative densities: one Gaussian blob whose x position is the label, at a
    random height and depth, plus noise."""
    rng = np.random.default_rng(seed)
    g = np.arange(float(G))
    z, y, x = np.meshgrid(g, g, g, indexing="ij")
    out = np.empty((len(labels), G, G, G))
    for i, k in enumerate(labels):
        cz, cy = rng.uniform(4, 11, 2)
        out[i] = np.exp(-((z - cz) ** 2 + (y - cy) ** 2 + (x - (3.0 + 5.0 * k)) ** 2) / 4.0)
    return out + 0.02 * rng.random(out.shape)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    root = tmp_path_factory.mktemp("certify_label")
    labels = np.arange(M) % 3
    ds = xr.Dataset(
        {"rho": (("sample", "z", "y", "x"), _blobs(labels, 0).astype(np.float32), {"units": "bohr-3"})},
        coords={"sample": np.arange(M), **{d: (d, np.arange(float(G))) for d in ("z", "y", "x")}},
    )
    geometry = Geometry(dims=("z", "y", "x"), periodic=frozenset(),
                        weights=xr.DataArray(np.ones((G, G, G)), dims=("z", "y", "x")),
                        mask=xr.DataArray(np.ones((G, G, G), bool), dims=("z", "y", "x")))
    conditions = xr.Dataset({"label": ("sample", labels, {"label_names": LABELS})})
    from simdiff.data.transforms import Log1p

    run = RunDir(root)
    write_training_store(Field(ds, geometry, conditions), run.store, transforms={"rho": Log1p(scale=0.1)},
                         options=PrepareOptions(progress=False),
                         provenance=provenance([], {"data": {"name": "blobs"}}))
    return run


def _drawn(labels: np.ndarray, fields: np.ndarray, history: str) -> xr.Dataset:
    n = len(labels)
    return xr.Dataset(
        {"rho": (("sample", "z", "y", "x"), fields.astype(np.float32)), "label": ("sample", labels),
         "synthetic": ("sample", np.ones(n, bool)), "source_index": ("sample", np.arange(n))},
        coords={"sample": np.arange(n)}, attrs={"simdiff_draws": "state", "history": history},
    )


def test_the_classifier_learns_the_label_far_better_than_the_class_prior(labelled: RunDir):
    from simdiff.runs.certify import _label_examples

    spec = Downstream(width=8, levels=2, layers=1, steps=150, batch_size=16, lr=2e-3)
    labels = np.arange(30) % 3
    ex = _label_examples(TrainingStore(labelled.store), _drawn(labels, _blobs(labels, 5), "fair"),
                         Path("aug.zarr"), spec)
    assert ex.real.inputs.shape[1:] == (1, G, G, G) and ex.real.targets.dtype == np.int64
    # standardised with the real training fields' own mean and std (under the log1p transform)
    assert abs(float(ex.real.inputs.mean())) < 1e-5
    assert float(ex.real.inputs.std()) == pytest.approx(1, abs=1e-4)
    prior = ex.score(None)
    assert prior["error"] > 0.5 and prior["cross_entropy"] == pytest.approx(np.log(3), abs=0.05)
    model = ex.fit([(ex.real.inputs, ex.real.targets)], 0, None)
    got = ex.score(model)
    assert got["error"] <= 0.1 and got["cross_entropy"] < 0.5 * prior["cross_entropy"]


def test_label_certificate_tells_faithful_draws_from_mislabelled_ones(labelled: RunDir):
    spec = Downstream(width=8, levels=2, layers=1, steps=60, batch_size=8, lr=5e-3)
    settings = Certify(task="label", fractions=(0.1, 1.0), seeds=2, downstream=spec)
    labels = np.arange(60) % 3
    fair = certify(labelled, _drawn(labels, _blobs(labels, 7), "fair"), Path("aug.zarr"), settings)
    assert fair["task"] == "label" and fair["baseline"]["name"] == "class prior"
    assert set(fair["cross_entropy"]) == {"real", "real+synthetic", "synthetic"}
    assert fair == certify(labelled, _drawn(labels, _blobs(labels, 7), "fair"), Path("aug.zarr"), settings)
    # the same fields under labels moved one class on: a classifier trained on them alone is
    # wrong on the real test samples
    moved = _drawn((labels + 1) % 3, _blobs(labels, 7), "wrong")
    wrong = certify(labelled, moved, Path("aug.zarr"), settings)
    assert wrong["by_fraction"]["1"]["synthetic"]["mean"] > 0.5
    assert fair["by_fraction"]["1"]["synthetic"]["mean"] < 0.2
    mixed = "ratio_real+synthetic"
    assert wrong["by_fraction"]["1"][mixed]["mean"] > fair["by_fraction"]["1"][mixed]["mean"]


def test_label_task_refuses_unlabelled_draws_and_unlabelled_stores(labelled: RunDir, run: RunDir):
    labels = np.arange(6) % 3
    unlabelled = _drawn(labels, _blobs(labels, 1), "x").drop_vars("label")
    with pytest.raises(DataError, match="carry no `label`"):
        certify(labelled, unlabelled, Path("aug.zarr"), Certify(task="label", downstream=SMALL))
    with pytest.raises(DataError, match="no `label` condition"):
        certify(run, _augmented(run, 0.1), Path("aug.zarr"), Certify(task="label", downstream=SMALL))


def test_label_task_refuses_a_grid_smaller_than_the_classifiers_patches(tmp_path: Path):
    labels = np.arange(12) % 2
    values = np.random.default_rng(0).random((12, 3, 3)).astype(np.float32)
    ds = xr.Dataset({"v": (("sample", "y", "x"), values)},
                    coords={"sample": np.arange(12), "y": np.arange(3.0), "x": np.arange(3.0)})
    geometry = Geometry(dims=("y", "x"), periodic=frozenset(),
                        weights=xr.DataArray(np.ones((3, 3)), dims=("y", "x")),
                        mask=xr.DataArray(np.ones((3, 3), bool), dims=("y", "x")))
    conditions = xr.Dataset({"label": ("sample", labels, {"label_names": ["a", "b"]})})
    run = RunDir(tmp_path)
    write_training_store(Field(ds, geometry, conditions), run.store, transforms={},
                         options=PrepareOptions(progress=False),
                         provenance=provenance([], {"data": {"name": "3x3"}}))
    draws = xr.Dataset({"v": (("sample", "y", "x"), np.ones((2, 3, 3), np.float32)),
                        "label": ("sample", [0, 1]), "synthetic": ("sample", [True, True])},
                       coords={"sample": [0, 1]})
    with pytest.raises(DataError, match=r"3x3 cells; .* at least 4 cells"):
        certify(run, draws, Path("aug.zarr"), Certify(task="label", downstream=SMALL))
