"""Leave-one-source-out: the plan on the real cxr3 manifest, per-source metrics, and ``cxrdx cv --by source`` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from cxrdx.config import ConfigError, EvalConfig
from cxrdx.data.splits import LeakageError
from cxrdx.evaluation.benchmark import task_manifest
from cxrdx.evaluation.confounding import BORDER_GREY, border_only
from cxrdx.evaluation.loso import POOLED, assert_no_source_leakage, source_metrics, source_plan
from cxrdx.evaluation.results import headline
from cxrdx.evaluation.tables import loso_table

from conftest import make_xray

CLASSES = ("covid", "pneumonia", "normal")


@pytest.fixture(scope="module")
def cxr3(cxr3_root):
    return task_manifest(cxr3_root, "3class")


def _ids(df: pd.DataFrame, idx: np.ndarray, column: str) -> set:
    return set(df[column].iloc[idx].astype(str))


def test_loso_plan_never_trains_or_validates_on_the_held_out_source_or_its_patients(cxr3):
    plan = source_plan(cxr3, min_images=30, seed=42, val_fraction=0.15)
    assert sorted(plan.sources) == ["covid-cxnet", "darkcovidnet", "figure1", "ieee8023", "jsrt", "openist"]
    assert plan.skipped == []
    for source, (train, val, test), removed in zip(plan.sources, plan.folds, plan.removed):
        assert set(cxr3["source"].iloc[test]) == {source} and len(test) == int((cxr3["source"] == source).sum())
        for part in (train, val):
            assert source not in set(cxr3["source"].iloc[part])
            for column in ("patient_id", "group_id"):
                assert not _ids(cxr3, part, column) & _ids(cxr3, test, column), (source, column)
        assert not set(train) & set(val) and not _ids(cxr3, train, "group_id") & _ids(cxr3, val, "group_id")
        assert len(train) + len(val) + len(test) + removed == len(cxr3)
    # ieee8023 patients span darkcovidnet and ieee8023: holding out either removes the linked rows of the other
    by = dict(zip(plan.sources, plan.removed))
    assert by["darkcovidnet"] > 0 and by["ieee8023"] > 0


def test_sources_below_the_minimum_are_skipped_and_listed(cxr3):
    plan = source_plan(cxr3, min_images=100, seed=42, val_fraction=0.15)
    assert {s["source"]: s["n_images"] for s in plan.skipped} == {"jsrt": 93, "figure1": 36}
    assert all("fewer than 100" in s["reason"] for s in plan.skipped)
    assert "jsrt" not in plan.sources and len(plan.folds) == 4
    tested = np.concatenate([test for _, _, test in plan.folds])
    assert not set(cxr3["source"].iloc[tested]) & {"jsrt", "figure1"}
    used = np.concatenate([np.r_[train, val] for train, val, _ in plan.folds])
    assert {"jsrt", "figure1"} <= set(cxr3["source"].iloc[used])  # skipped sources still train the other folds
    with pytest.raises(ConfigError, match="min_source_images = 5000"):
        source_plan(cxr3, min_images=5000)


def test_the_leakage_check_catches_a_shared_patient_and_a_held_out_image():
    df = pd.DataFrame({"patient_id": ["a", "b", "c", "a"], "source": ["x", "x", "y", "y"], "target": [0, 1, 0, 1]})
    with pytest.raises(LeakageError, match="patient leakage"):
        assert_no_source_leakage(df, np.array([1, 0]), np.array([], dtype=int), np.array([2, 3]), "y")
    with pytest.raises(LeakageError, match="source leakage"):
        assert_no_source_leakage(df, np.array([1, 2]), np.array([], dtype=int), np.array([3]), "y")
    assert_no_source_leakage(df, np.array([1]), np.array([], dtype=int), np.array([2, 3]), "y")


def test_per_source_metrics_mark_absent_classes_undefined():
    rng = np.random.default_rng(0)
    ev = EvalConfig(bootstrap=200)
    y = np.full(40, 2)  # a normal-only source (openist, jsrt)
    probs = np.tile([0.1, 0.1, 0.8], (40, 1))
    probs[:8] = [0.7, 0.2, 0.1]  # 8 normals called covid
    m = source_metrics(y, probs, np.array([f"p{i // 2}" for i in range(40)]), CLASSES, ev)
    assert m["single_label"] == "normal" and m["n_images"] == 40 and m["n_patients"] == 20
    assert m["per_class"]["normal"]["sensitivity"] == pytest.approx(0.8) == m["accuracy"]
    assert m["per_class"]["covid"]["sensitivity"] is None and m["ci"]["per_class"]["covid"]["sensitivity"] == [None, None]
    assert m["per_class"]["normal"]["specificity"] is None and m["covid_vs_rest"]["auc"] is None
    assert m["per_class"]["covid"]["specificity"] == pytest.approx(0.8)
    lo, hi = m["ci"]["accuracy"]
    assert lo < 0.8 < hi
    what, value = headline(m)
    assert what == "normal called normal" and value.text() == "0.800 " + f"[{lo:.3f}, {hi:.3f}]"
    mixed = source_metrics(np.r_[np.zeros(10, int), np.full(10, 2)], rng.dirichlet([1, 1, 1], 20), np.arange(20), CLASSES, ev)
    assert headline(mixed)[0] == "covid-vs-rest AUC" and mixed["per_class"]["pneumonia"]["sensitivity"] is None
    row = {"candidate": "m", "rank": 1, "source": "openist", "pooled": False, "n_images": 40, "n_patients": 20,
           "labels": m["labels"], "single_label": "normal", "unseen": m, "seen": None, "accuracy_gap": None}
    from rich.console import Console

    console = Console(width=400, record=True)
    console.print(loso_table({"selected": "m", "roi": "full", "rows": [row]}))
    text = console.export_text()
    assert "undefined" in text and "normal called normal: 0.800" in text


def test_border_only_keeps_a_frame_and_greys_out_the_inside():
    grey = make_xray((200, 250))
    out = border_only(grey, 0.12)
    assert (out[24:176, 30:220] == BORDER_GREY).all()
    assert (out[:24] == grey[:24]).all() and (out[:, :30] == grey[:, :30]).all() and (out[176:] == grey[176:]).all()


def _synthetic_dataset(root: Path) -> Path:
    """Four sources: two with all classes, one normal-only, one below the minimum; one patient spans two sources."""
    spec = {"alpha": {"covid": 10, "pneumonia": 8, "normal": 10}, "beta": {"covid": 8, "pneumonia": 10, "normal": 8},
            "gamma": {"normal": 12}, "tiny": {"covid": 3}}
    shade = {"covid": 40, "pneumonia": 20, "normal": 0}
    (root / "images").mkdir(parents=True)
    rows, i = [], 0
    for source, labels in spec.items():
        for label, n in labels.items():
            for j in range(n):
                rng = np.random.default_rng(i)  # distinct pictures: the near-duplicate check must not merge them
                blobs = np.asarray(Image.fromarray((rng.random((6, 6)) * 255).astype(np.uint8)).resize((80, 72), Image.BICUBIC))
                img = make_xray((72, 80), seed=i).astype(int) // 2 + blobs.astype(int) // 2 - shade[label]
                name = f"images/{source}-{label}-{j}.png"
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / name)
                rows.append({"image": name, "label": label, "patient_id": f"{source}-{label}-{j // 2}", "source": source})
                i += 1
    first = np.asarray(Image.open(root / rows[0]["image"])).astype(int)
    Image.fromarray(np.clip(first[::-1] + 5, 0, 255).astype(np.uint8)).save(root / "images/shared.png")
    rows.append({**rows[0], "image": "images/shared.png", "source": "beta"})  # alpha's patient, filmed at beta
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


@pytest.mark.slow  # extracts 3 x 70 small images and fits 3 + 6 folds: ~1-2 min on 2 busy cores
def test_cv_by_source_writes_the_per_source_table_and_the_report_shows_it_first(tmp_path):
    from cxrdx.cli import app

    data = _synthetic_dataset(tmp_path / "data")
    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "cv", "--data", str(data), "--model", "logreg", "--by", "source", "--folds", "2", "--out", str(out),
        "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", "evaluation.bootstrap=50",
        "--set", "evaluation.min_source_images=10", "--set", "data.image_size=64",
    ])
    assert result.exit_code == 0, result.output
    assert "unseen hospitals" in result.output and "not held out: tiny" in result.output
    res = json.loads((out / "evaluation.json").read_text())["tasks"]["3class"]
    assert "best" in res and "rows" in res  # the random patient split is still there, unchanged
    loso = res["loso"]
    assert loso["sources"] == ["alpha", "beta", "gamma"] and loso["skipped"][0]["source"] == "tiny"
    assert loso["selected"] == "tf_efficientnet_lite0+logreg"
    assert {r["source"] for r in loso["rows"]} == {"alpha", "beta", "gamma", POOLED}
    gamma = next(r for r in loso["rows"] if r["source"] == "gamma")
    assert gamma["single_label"] == "normal" and gamma["unseen"]["per_class"]["covid"]["sensitivity"] is None
    assert gamma["seen"]["n_images"] == 12 and gamma["accuracy_gap"] == pytest.approx(
        gamma["unseen"]["accuracy"] - gamma["seen"]["accuracy"])
    folds = {f["source"]: f for f in loso["folds"]}
    assert folds["alpha"]["removed_linked_patients_images"] == 1  # the beta film of alpha's patient left training
    for key in ("trained_without_lungs", "trained_on_border_only", "trained_on_shape_only"):
        assert "within_ci_of_chance" in res[key]["verdict"] and res[key]["chance"]["majority"] > 0
    assert {"lungs_blacked_out", "border_only"} <= set(res["best"]["shortcut"])
    shape = loso["shape_only"]  # the film's format alone on the same unseen sources
    assert [r["source"] for r in shape["per_source"]] == ["alpha", "beta", "gamma"] and 0 <= shape["accuracy"] <= 1
    assert "the image's shape alone (no pixels), unseen" in result.output

    report = CliRunner().invoke(app, ["report", str(out)])
    assert report.exit_code == 0, report.output
    html = (out / "report.html").read_text()
    first, metrics = html.index('id="unseen-hospitals"'), html.index('id="metrics"')
    assert first < metrics  # the unseen-hospital table is the first thing a reader sees
    section = html[first:metrics]
    assert all(s in section for s in ("alpha", "beta", "gamma", POOLED)) and "undefined" in section
    assert "normal called normal" in section and "accuracy seen (random split)" in section
    assert "trained and tested on the image border only" in html and "falls to chance within CI" in html
    assert 'id="loso-shape-3class"' in section and "trained and tested on the image shape alone" in html
    assert loso["unseen_selection"] is None  # one candidate: nothing to choose


def _loso_run(name: str, y: np.ndarray, sources: np.ndarray, correct: dict[str, float], val_f1: float):
    """A CVRun of one held-out fold per source whose accuracy on each source is ``correct[source]``."""
    from cxrdx.evaluation.cv import Candidate, CVRun, FoldPrediction

    manifest = pd.DataFrame({"target": y, "patient_id": [f"p{i}" for i in range(len(y))], "source": sources})
    folds = []
    for k, s in enumerate(correct):
        test = np.flatnonzero(sources == s)
        right = np.arange(len(test)) < round(correct[s] * len(test))
        pred = np.where(right, y[test], (y[test] + 1) % 3)
        probs = np.eye(3)[pred] * 0.8 + 0.2 / 3
        folds.append(FoldPrediction(k, np.flatnonzero(sources != s), np.array([], int), test, np.zeros((0, 3)), probs,
                                    val_f1=val_f1))
    return CVRun(Candidate.parse(name), CLASSES, manifest, "patient_id", folds)


def test_unseen_selection_never_lets_a_source_choose_for_itself():
    from cxrdx.evaluation.loso import unseen_selection

    sources = np.repeat(np.array(["a", "b", "c"]), 20)
    y = np.tile(np.arange(3), 20)
    # the validation favourite is best only on "a"; "pool" is best on "b" and "c"
    favourite = _loso_run("bilstm", y, sources, {"a": 1.0, "b": 0.3, "c": 0.3}, val_f1=0.9)
    other = _loso_run("pool", y, sources, {"a": 0.6, "b": 0.8, "c": 0.8}, val_f1=0.7)
    by_source = {s: np.flatnonzero(sources == s) for s in "abc"}
    sel = unseen_selection([favourite, other], by_source, np.arange(len(y)), EvalConfig(bootstrap=50))
    chosen = {r["source"]: r["chosen"] for r in sel["per_source"]}
    # "a" is scored by what b and c prefer (pool), though bilstm would have been right there
    assert chosen == {"a": "tf_efficientnet_lite0+pool", "b": "tf_efficientnet_lite0+pool", "c": "tf_efficientnet_lite0+pool"}
    assert sel["estimate"]["accuracy"] == pytest.approx((0.6 + 0.8 + 0.8) / 3)
    assert sel["choice"] == "tf_efficientnet_lite0+pool" and sel["validation_choice"] == "tf_efficientnet_lite0+bilstm"
    assert sel["mean_source_accuracy"]["tf_efficientnet_lite0+bilstm"] == pytest.approx((1.0 + 0.3 + 0.3) / 3)
    lo, hi = sel["estimate"]["ci"]["accuracy"]
    assert lo <= sel["estimate"]["accuracy"] <= hi
    # when the favourite wins on the other two sources it is chosen for the third, whatever it scores there
    strong = _loso_run("bilstm", y, sources, {"a": 0.2, "b": 0.9, "c": 0.9}, val_f1=0.9)
    sel = unseen_selection([strong, other], by_source, np.arange(len(y)), EvalConfig(bootstrap=50))
    assert {r["source"]: r["chosen"] for r in sel["per_source"]}["a"] == "tf_efficientnet_lite0+bilstm"
    assert unseen_selection([strong], by_source, np.arange(len(y)), EvalConfig(bootstrap=50)) is None


def test_compare_by_source_reports_the_choice_by_unseen_sources(tmp_path):
    from cxrdx.cli import app

    data = _synthetic_dataset(tmp_path / "data")
    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "compare", "--data", str(data), "--heads", "pool", "--baselines", "logreg", "--backbones", "tf_efficientnet_lite0",
        "--ensemble-top", "0", "--by", "source", "--folds", "2", "--no-blackout", "--no-border", "--no-shape",
        "--out", str(out), "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", "evaluation.bootstrap=50",
        "--set", "evaluation.min_source_images=10", "--set", "data.image_size=64", "--set", "evaluation.epochs=3",
    ])
    assert result.exit_code == 0, result.output
    loso = json.loads((out / "evaluation.json").read_text())["tasks"]["3class"]["loso"]
    sel = loso["unseen_selection"]
    names = {c["name"] for c in loso["candidates"]}
    assert sel["choice"] in names and sel["validation_choice"] == loso["selected"]
    assert [r["source"] for r in sel["per_source"]] == loso["sources"] and all(r["chosen"] in names for r in sel["per_source"])
    assert sel["estimate"]["n_images"] == next(r for r in loso["rows"] if r["pooled"])["n_images"]
    assert "Chosen by unseen sources" in " ".join(result.output.split())
    report = CliRunner().invoke(app, ["report", str(out)])
    assert report.exit_code == 0, report.output
    assert 'id="loso-selection-3class"' in (out / "report.html").read_text()
