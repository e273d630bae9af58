"""``cxrdx cv`` -> ``cxrdx report`` end to end on a real cxr3 slice, and the report of a training run folder."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cxrdx.cli import app
from cxrdx.evaluation.report import SECTIONS, write_report

from conftest import make_xray, require

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def cv_run(cxr3_slice, cxr3_root, feature_cache_dir, tmp_path_factory) -> Path:
    """``cxrdx cv`` (logistic regression, 3 folds) on the slice, with the lungs-blacked-out control."""
    tmp = tmp_path_factory.mktemp("cv")
    manifest = cxr3_slice.copy()
    manifest["lung_mask"] = [str(cxr3_root / m) if isinstance(m, str) else "" for m in manifest["lung_mask"]]
    manifest.drop(columns=["relpath", "target"]).to_csv(tmp / "slice.csv", index=False)
    out = tmp / "run"
    result = CliRunner().invoke(app, [
        "cv", "--manifest", str(tmp / "slice.csv"), "--model", "logreg", "--folds", "3", "--temperature", "--out", str(out),
        "--set", f"data.cache_dir={feature_cache_dir}", "--set", "evaluation.bootstrap=100",
    ])
    assert result.exit_code == 0, result.output
    assert "Headline numbers" in result.output and "shortcut control" in result.output
    return out


@pytest.mark.slow
def test_cv_command_writes_a_report_with_every_section(cv_run, tmp_path):
    data = json.loads((cv_run / "evaluation.json").read_text())
    best = data["tasks"]["3class"]["best"]
    assert best["protocol"]["group_by"] == "patient_id" and best["pooled"]["ci"]["accuracy"][0] is not None
    assert "lungs_blacked_out" in best["shortcut"] and data["tasks"]["3class"]["blackout_regions"]["mask"] > 0
    assert "temperature_scaled" in best["calibration"]
    preds = pd.read_csv(cv_run / "predictions_3class.csv")
    assert len(preds) == best["protocol"]["n_images"] and preds["fold"].between(0, 2).all()
    html_path, json_path, notes = write_report(cv_run, tmp_path / "report.html", n_boot=50)
    html = html_path.read_text()
    for section in SECTIONS:
        assert f'id="{section}' in html, section
    assert html.count("data:image/png;base64,") >= 3 and "shortcut control" in html.lower()
    assert any("explain" in n for n in notes) and json.loads(json_path.read_text())["tasks"]["3class"]["best"]["pooled"]["ci"]


def _training_run(folder: Path, cxr3_root: Path) -> Path:
    """A run folder shaped like ``cxrdx train``'s (metrics.json + test_predictions.csv) for real cxr3 rows."""
    df = pd.read_csv(cxr3_root / "metadata.csv", dtype={"patient_id": str}).sample(240, random_state=0)
    classes = ["covid", "pneumonia", "normal"]
    rng = np.random.default_rng(0)
    y = np.array([classes.index(lab) for lab in df["label"]])
    logits = rng.normal(0, 1, (len(df), 3))
    logits[np.arange(len(df)), y] += 2.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    folder.mkdir(parents=True)
    pd.DataFrame(probs, columns=[f"p_{c}" for c in classes]).assign(
        image=df["image"].to_numpy(), patient_id=df["patient_id"].to_numpy(), label=df["label"].to_numpy()
    ).to_csv(folder / "test_predictions.csv", index=False)
    (folder / "metrics.json").write_text(json.dumps({"model": {"backbone": "tf_efficientnet_lite0", "head": "bilstm", "classes": classes},
                                                     "protocol": "single held-out split, grouped by patient_id"}))
    (folder / "config.json").write_text(json.dumps({"data": {"root": str(cxr3_root)}}))
    return folder


def test_training_run_report_computes_patient_cis_and_embeds_explain(cxr3_root, tmp_path):
    run = _training_run(tmp_path / "demo", cxr3_root)
    html_path, json_path, notes = write_report(run, n_boot=100)
    data = json.loads(json_path.read_text())
    pooled = data["tasks"]["3class"]["best"]["pooled"]
    assert pooled["ci_method"]["unit"] == "patient" and pooled["ci"]["accuracy"][0] <= pooled["accuracy"] <= pooled["ci"]["accuracy"][1]
    sampled = pd.read_csv(cxr3_root / "metadata.csv", dtype={"patient_id": str}).sample(240, random_state=0)
    per_source = data["tasks"]["3class"]["best"]["per_source"]
    assert {s["source"] for s in per_source} == set(sampled["source"])  # looked up in metadata.csv, row by row
    assert sum(s["n"] for s in per_source) == 240
    assert any("benchmark" in n for n in notes) and any("explain --score" in n for n in notes)
    assert "cxrdx explain --score --run" in html_path.read_text()
    # add an explain/ folder as `cxrdx explain --score` writes it: the report embeds it
    gallery = run / "explain" / "gallery"
    gallery.mkdir(parents=True)
    from PIL import Image

    Image.fromarray(make_xray((64, 64))).save(gallery / "covid_correct_0.png")
    (run / "explain" / "scores.json").write_text(json.dumps({
        "method": "gradcam", "n_images": 5, "flagged": True, "flag_reason": "heat lies mostly outside the lungs",
        "overall": {"n_images": 5, "lung_energy": {"mean": 0.4, "ci": [0.3, 0.5], "n": 5, "patients": 5, "chance": 0.35}},
        "per_class": {"covid": {"n_images": 2, "lung_energy": {"mean": 0.5, "ci": [0.4, 0.6], "chance": 0.3}}},
    }))
    html_path, _, notes = write_report(run, n_boot=50)
    html = html_path.read_text()
    assert "covid_correct_0" in html and "heat lies mostly outside the lungs" in html and not any("explain" in n for n in notes)
    src = html.split('alt="covid_correct_0" src="data:image/png;base64,')[1].split('"')[0]
    assert base64.b64decode(src)[:8] == b"\x89PNG\r\n\x1a\n"
    assert any("--stability" in n for n in notes) and "cxrdx evaluate" in html.split('id="stability"')[1]
    # `cxrdx evaluate RUN --stability` leaves stability.json beside the run: the report shows its table
    (run / "stability.json").write_text(json.dumps({
        "runtime": "onnx", "part": "test", "images": 240, "skipped": [],
        "perturbations": {"jpeg95": {
            "description": "one JPEG round trip at quality 95", "images": 240, "class_agreement": 0.9625,
            "class_agreement_ci": [0.94, 0.98], "flips": 9, "flips_from": {"covid": 0, "pneumonia": 7, "normal": 2},
            "max_abs_prob_diff": 0.61, "mean_max_abs_prob_diff": 0.04}},
    }))
    html_path, _, notes = write_report(run, n_boot=50)
    section = html_path.read_text().split('id="stability"')[1]
    assert "0.963 [0.940, 0.980]" in section and "pneumonia 7, normal 2" in section and not any("stability" in n for n in notes)


def test_report_refuses_a_folder_without_results(tmp_path):
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "evaluation.json" in result.output


@pytest.mark.browser
@pytest.mark.slow
def test_report_renders_in_headless_chromium(cv_run, tmp_path):
    require(CHROMIUM.exists(), f"{CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    run = tmp_path / "run"
    shutil.copytree(cv_run, run)
    html_path, _, _ = write_report(run, n_boot=50)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(html_path.resolve().as_uri())
            page.wait_for_load_state("load")
            images = page.evaluate("Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])")
            present = page.evaluate("ids => ids.filter(id => document.getElementById(id) !== null)", list(SECTIONS))
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert len(images) >= 3
    assert all(done and width > 0 for _, done, width in images), images
    assert present == list(SECTIONS)
    assert (tmp_path / "report.png").stat().st_size > 10_000
