"""Finished folds kept on disk: a rerun with the same code, input, rows and settings resumes; any change recomputes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cxrdx.config import EvalConfig, TrainConfig
from cxrdx.evaluation import cv as cv_module
from cxrdx.evaluation.cv import Candidate, fold_plan, run_cv
from cxrdx.evaluation.fold_store import FoldStore
from cxrdx.evaluation.feature_maps import aligned, feature_maps

FAST = EvalConfig(folds=3, epochs=6, patience=3, bootstrap=50)
CLASSES = ("covid", "pneumonia", "normal")


@pytest.fixture(scope="module")
def slice_maps(cxr3_slice, feature_cache_dir):
    maps, kept = feature_maps(cxr3_slice, feature_cache_dir, progress=False)
    rows = cxr3_slice[cxr3_slice["image"].isin(set(kept["image"]))].reset_index(drop=True)
    return aligned(maps, kept, rows), rows


def _run(maps, rows, store, model="pool", train=None, extra=None):
    plan = fold_plan(rows, FAST.folds, FAST.fold_seed, FAST.val_fraction)
    return run_cv(maps, rows, CLASSES, Candidate.parse(model), FAST, plan=plan, progress=False, store=store,
                  train_cfg=train, extra_maps=extra)


def _refuse_to_fit(*args, **kwargs):
    raise AssertionError("a stored fold was recomputed")


def test_an_interrupted_run_resumes_from_its_finished_folds(slice_maps, tmp_path, monkeypatch):
    maps, rows = slice_maps
    extra = {"zeros": np.zeros_like(maps)}
    first = _run(maps, rows, FoldStore(tmp_path), extra=extra)
    files = sorted(p.name for p in tmp_path.glob("*.npz"))
    assert len(files) == 3 and all(name.startswith("tf_efficientnet_lite0+pool-fold") for name in files)
    (tmp_path / files[2]).unlink()  # as if killed during the last fold

    calls = []
    real = cv_module._fit_head
    monkeypatch.setattr(cv_module, "_fit_head", lambda *a, **k: calls.append(1) or real(*a, **k))
    store = FoldStore(tmp_path)
    again = _run(maps, rows, store, extra=extra)
    assert store.reused == 2 and len(calls) == 1  # only the missing fold was trained
    for a, b in zip(first.folds, again.folds):
        np.testing.assert_array_equal(a.test_idx, b.test_idx)
        np.testing.assert_allclose(a.test_probs, b.test_probs, atol=1e-6)
        np.testing.assert_allclose(a.extra_probs["zeros"], b.extra_probs["zeros"], atol=1e-6)
        assert a.val_f1 == pytest.approx(b.val_f1)


def test_a_changed_setting_or_input_recomputes(slice_maps, tmp_path, monkeypatch):
    maps, rows = slice_maps
    _run(maps, rows, FoldStore(tmp_path), model="logreg")
    monkeypatch.setattr(cv_module, "_fit_sklearn", _refuse_to_fit)
    store = FoldStore(tmp_path)
    _run(maps, rows, store, model="logreg")  # identical: every fold from disk
    assert store.reused == 3

    other_seed = dataclasses.replace(TrainConfig(), seed=1)
    with pytest.raises(AssertionError, match="recomputed"):
        _run(maps, rows, FoldStore(tmp_path), model="logreg", train=other_seed)
    changed = maps.copy()
    changed[0, 0, 0, 0] += 1
    with pytest.raises(AssertionError, match="recomputed"):
        _run(changed, rows, FoldStore(tmp_path), model="logreg")


def test_an_unreadable_stored_fold_is_recomputed_not_trusted(slice_maps, tmp_path):
    maps, rows = slice_maps
    _run(maps, rows, FoldStore(tmp_path), model="logreg")
    paths = sorted(tmp_path.glob("*.npz"))
    paths[0].write_bytes(b"not a zip")
    paths[1].write_bytes(paths[1].read_bytes()[:100])  # truncated zip
    paths[2].write_bytes(paths[2].read_bytes()[:-30])  # central directory cut
    store = FoldStore(tmp_path)
    run = _run(maps, rows, store, model="logreg")
    assert store.reused == 0 and len(run.folds) == 3


def test_compare_rerun_with_the_same_out_reuses_every_fold_and_says_so(tmp_path):
    from cxrdx.config import load_config
    from cxrdx.evaluation.compare import GridRequest, run_grid
    from test_architectures import _made_dataset

    _made_dataset(tmp_path / "data")
    cfg = load_config(None, [f"data.root={tmp_path / 'data'}", f"data.cache_dir={tmp_path / 'cache'}", "evaluation.folds=3",
                             "evaluation.epochs=2", "evaluation.bootstrap=50", "model.proj_dim=16", "model.hidden=8"])
    req = GridRequest(tasks=["3class"], models=["pool", "logreg"], backbones=["raw_patches"], blackout=False, border=False)
    first = run_grid(cfg, req, tmp_path / "out", progress=False, log=lambda *_: None)
    assert first["reused_folds"] == 0 and len(list((tmp_path / "out" / "folds").glob("*.npz"))) == 6
    shape = first["tasks"]["3class"]["trained_on_shape_only"]  # the shape-only control runs by default
    assert shape["control"] == "shape_only" and 0 <= shape["accuracy"] <= 1 and "verdict" in shape
    said = []
    again = run_grid(cfg, req, tmp_path / "out", progress=False, log=said.append)
    assert again["reused_folds"] == 6 and any("reused 6 finished fold(s)" in str(line) for line in said)
    rows = {r["name"]: r for r in first["tasks"]["3class"]["rows"]}
    for r in again["tasks"]["3class"]["rows"]:
        assert r["accuracy"] == rows[r["name"]]["accuracy"]
