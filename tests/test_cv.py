"""Patient-grouped cross-validation on real cxr3 features, the benchmark rows and the shortcut control."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrdx.config import EvalConfig
from cxrdx.data.splits import assert_no_patient_leakage
from cxrdx.evaluation.benchmark import task_manifest
from cxrdx.evaluation.confounding import blackout_fn, lung_region
from cxrdx.evaluation.cv import Candidate, average_runs, fold_plan, run_cv
from cxrdx.evaluation.feature_maps import aligned, feature_maps
from cxrdx.evaluation.results import CVSummary
from cxrdx.evaluation.summary import summarise

from conftest import make_xray

FAST = EvalConfig(folds=3, epochs=12, patience=4, bootstrap=100)


@pytest.fixture(scope="module")
def slice_maps(cxr3_slice, feature_cache_dir):
    maps, kept = feature_maps(cxr3_slice, feature_cache_dir, progress=False)
    rows = cxr3_slice[cxr3_slice["image"].isin(set(kept["image"]))].reset_index(drop=True)
    return aligned(maps, kept, rows), rows


def test_benchmark_manifests_follow_the_darkcovidnet_protocol(cxr3_root):
    three = task_manifest(cxr3_root, "3class", benchmark="darkcovidnet")
    binary = task_manifest(cxr3_root, "covid-vs-normal", benchmark="darkcovidnet")
    # one NIH normal file is byte-identical to another (00002658_002 = _001): load_manifest drops the copy
    assert any("identical" in w for w in three.attrs["warnings"])
    assert len(three) == 1123 and three["label"].value_counts().to_dict() == {"normal": 499, "pneumonia": 500, "covid": 124}
    assert len(binary) == 623 and set(binary["label"]) == {"covid", "normal"}
    assert sorted(binary["target"].unique()) == [0, 1] and (binary.loc[binary["label"] == "covid", "target"] == 0).all()


def test_fold_plan_never_shares_a_patient_and_covers_every_row(cxr3_root):
    df = task_manifest(cxr3_root, "3class", benchmark="darkcovidnet")
    plan = fold_plan(df, 5, seed=42, val_fraction=0.15)
    tested = np.concatenate([test for _, _, test in plan])
    assert sorted(tested) == list(range(len(df)))
    for train, val, test in plan:
        assert_no_patient_leakage(df.iloc[train], df.iloc[val], df.iloc[test])
        assert len(set(train) | set(val) | set(test)) == len(train) + len(val) + len(test) == len(df)
        share = df.iloc[test]["label"].value_counts(normalize=True)
        assert abs(share["covid"] - 124 / 1124) < 0.05  # stratified
    leaky = fold_plan(df, 5, seed=42, val_fraction=0.15, group_by="image")
    shared = [len(set(df["patient_id"].iloc[test]) & set(df["patient_id"].iloc[train])) for train, _, test in leaky]
    assert min(shared) > 0  # the image-level protocol does leak patients: that is what it is there to show


@pytest.mark.slow
def test_cv_logreg_and_pool_on_real_features(slice_maps):
    maps, rows = slice_maps
    classes = ("covid", "pneumonia", "normal")
    plan = fold_plan(rows, FAST.folds, FAST.fold_seed, FAST.val_fraction)
    runs = []
    for model in ("logreg", "pool"):
        run = run_cv(maps, rows, classes, Candidate.parse(model), FAST, plan=plan, progress=False,
                     extra_maps={"zeros": np.zeros_like(maps)})
        typed, table = summarise(run, FAST, full=True)
        assert typed.pooled.accuracy.ci[0] <= typed.pooled.accuracy.value <= typed.pooled.accuracy.ci[1]
        assert typed.operating_point.sensitivity.value == typed.operating_point_data["test"]["sensitivity"]
        summary = typed.to_dict()  # the evaluation.json form
        assert CVSummary.from_dict(summary).to_dict() == summary
        pooled = summary["pooled"]
        assert pooled["n"] == len(rows) and summary["protocol"]["group_by"] == "patient_id"
        assert pooled["accuracy"] > 0.6, pooled["accuracy"]  # well above the 0.35 majority-class chance
        lo, hi = pooled["ci"]["accuracy"]
        assert lo <= pooled["accuracy"] <= hi
        assert sorted(table["fold"].unique()) == [0, 1, 2] and table["image"].is_unique
        op = summary["operating_point"]
        assert all(f["val_sensitivity"] >= 0.95 for f in op["per_fold"])
        assert 0 <= op["test"]["specificity"] <= 1 and len(op["ci"]["sensitivity"]) == 2
        assert set(summary["roc"]) == set(classes) and 0 <= summary["calibration"]["raw"]["ece"] <= 1
        assert {s["source"] for s in summary["per_source"]} == set(rows["source"])
        assert summary["shortcut"]["zeros"]["chance"]["majority"] == pytest.approx(rows["label"].value_counts(normalize=True).max())
        runs.append(run)
    ens = average_runs(runs, "ensemble")
    np.testing.assert_allclose(ens.folds[0].test_probs, (runs[0].folds[0].test_probs + runs[1].folds[0].test_probs) / 2)


def test_temperature_option_is_fitted_on_validation(slice_maps):
    maps, rows = slice_maps
    ev = EvalConfig(**{**FAST.__dict__, "temperature": True})
    run = run_cv(maps, rows, ("covid", "pneumonia", "normal"), Candidate.parse("logreg"), ev, progress=False)
    summary, _ = summarise(run, ev, full=False)
    temps = summary.calibration["temperatures"]
    assert len(temps) == 3 and all(0.05 <= t <= 20 for t in temps)
    raw, _ = summarise(run, FAST, full=False)
    assert summary.pooled.accuracy.value == raw.pooled.accuracy.value  # scaling never changes the predicted class


def test_blackout_uses_the_mask_or_a_central_box(cxr3_root):
    df = pd.read_csv(cxr3_root / "metadata.csv")
    row = df[df["lung_mask"].notna()].iloc[0]
    from cxrdx.data.io import read_image

    grey = read_image(cxr3_root / row["image"])
    out = blackout_fn(cxr3_root)(grey, row)
    region = lung_region(grey.shape, cxr3_root / row["lung_mask"])
    assert 0.05 < region.mean() < 0.8
    assert (out[region] == 0).all() and (out[~region] == grey[~region]).all()
    synthetic = make_xray((200, 240))
    boxed = blackout_fn(cxr3_root)(synthetic, pd.Series({"lung_mask": float("nan")}))
    assert (boxed[30:170, 36:204] == 0).all() and (boxed[:30] == synthetic[:30]).all()


def test_blackout_uses_the_segmenter_where_there_is_no_radiologist_mask(cxr3_root):
    """With a lung segmenter (data.lung_model): its mask for rows without one; the radiologist's mask still wins;
    the central box where the segmenter finds no lungs."""
    from cxrdx.evaluation.confounding import region_kinds

    synthetic = make_xray((200, 240))
    lungs = np.zeros((200, 240), bool)
    lungs[40:160, 20:100] = True
    seen = []
    fn = blackout_fn(cxr3_root, lungs=lambda g: seen.append(g.shape) or lungs)
    out = fn(synthetic, pd.Series({"lung_mask": float("nan")}))
    assert (out[lungs] == 0).all() and (out[~lungs] == synthetic[~lungs]).all() and seen == [(200, 240)]
    boxed = blackout_fn(cxr3_root, lungs=lambda g: None)(synthetic, pd.Series({"lung_mask": float("nan")}))
    assert (boxed[30:170, 36:204] == 0).all()  # no lungs found: the central box
    df = pd.read_csv(cxr3_root / "metadata.csv")
    row = df[df["lung_mask"].notna()].iloc[0]
    from cxrdx.data.io import read_image

    grey = read_image(cxr3_root / row["image"])
    masked = blackout_fn(cxr3_root, lungs=lambda g: pytest.fail("segmenter used despite a radiologist mask"))(grey, row)
    assert (masked[lung_region(grey.shape, cxr3_root / row["lung_mask"])] == 0).all()
    kinds = region_kinds(df, cxr3_root, segmenter=True)
    assert kinds["central_box"] == 0 and kinds["mask"] + kinds["segmenter"] == len(df) and kinds["mask"] > 0


@pytest.mark.slow  # fine-tunes a backbone block twice on ~25 images: ~20-40 s on 2 cores
def test_cv_can_finetune_the_last_block_in_every_fold(slice_maps, cxr3_root):
    from cxrdx.config import Config

    maps, rows = slice_maps
    pick = rows.groupby("label", group_keys=False).apply(lambda g: g[g["patient_id"].isin(g["patient_id"].unique()[:14])])
    idx = pick.index.to_numpy()
    sub_rows, sub_maps = rows.loc[idx].reset_index(drop=True), maps[idx]
    cfg = Config.from_dict({"data": {"root": str(cxr3_root)}, "evaluation": {"folds": 2, "epochs": 3, "patience": 3, "bootstrap": 50},
                            "train": {"finetune_blocks": 1, "finetune_epochs": 1, "finetune_batch_size": 8, "augment": True}})
    cand = Candidate.parse("gru", finetune_blocks=1)
    assert cand.name == "tf_efficientnet_lite0+gru+ft1" and "fine-tuned per fold" in cand.description
    plan = fold_plan(sub_rows, 2, 42, 0.2)
    run = run_cv(sub_maps, sub_rows, ("covid", "pneumonia", "normal"), cand, cfg.evaluation, model_cfg=cfg.model,
                 train_cfg=cfg.train, plan=plan, finetune_cfg=cfg, extra_maps={"zeros": np.zeros_like(sub_maps)}, progress=False)
    for fold, (train, val, test) in zip(run.folds, plan):
        assert fold.test_probs.shape == (len(test), 3) and np.allclose(fold.test_probs.sum(1), 1, atol=1e-5)
        assert fold.val_probs.shape == (len(val), 3)
        assert fold.info["finetune_blocks"] == 1 and fold.info["finetune_epochs_run"] == 1
        assert fold.extra_probs == {}  # cached-feature controls do not apply to a fine-tuned backbone
    summary, _ = summarise(run, cfg.evaluation, full=False)
    assert 0 <= summary.pooled.accuracy.value <= 1
