"""Localisation metrics on hand-made heatmaps / masks, and the --score pipeline on a few real masked cxr3 images."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrdx.stats.bootstrap import patient_mean_ci
from cxrdx.explain.localisation import area_fraction, energy_inside, load_mask, peak_inside


def _half_mask(shape=(40, 60)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[:, : shape[1] // 2] = True  # left half
    return mask


def test_uniform_heat_scores_the_mask_area():
    mask = np.zeros((50, 80), dtype=bool)
    mask[10:30, 20:70] = True
    heat = np.full(mask.shape, 0.3, dtype=np.float32)
    assert energy_inside(heat, mask) == pytest.approx(area_fraction(mask)) == pytest.approx(20 * 50 / (50 * 80))


def test_energy_inside_and_outside():
    mask = _half_mask()
    heat = np.zeros(mask.shape, dtype=np.float32)
    heat[5:10, 2:8] = 1.0
    assert energy_inside(heat, mask) == 1.0
    assert energy_inside(heat, ~mask) == 0.0
    heat[5:10, 40:46] = 1.0  # equal heat on the other side
    assert energy_inside(heat, mask) == pytest.approx(0.5)
    heat[20, 50] = 3.0  # ... plus more outside
    assert energy_inside(heat, mask) == pytest.approx(30 / 63)


def test_all_zero_heatmap_has_no_energy_share():
    assert math.isnan(energy_inside(np.zeros((8, 8)), np.ones((8, 8), dtype=bool)))


def test_pointing_game():
    mask = _half_mask()
    heat = np.random.default_rng(0).uniform(0, 0.5, size=mask.shape)
    heat[20, 10] = 1.0
    assert peak_inside(heat, mask) is True
    heat[30, 55] = 2.0
    assert peak_inside(heat, mask) is False


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in size"):
        energy_inside(np.ones((10, 10)), np.ones((10, 11), dtype=bool))
    with pytest.raises(ValueError, match="differ in size"):
        peak_inside(np.ones((10, 10)), np.ones((11, 10), dtype=bool))


def test_load_mask_binarises_and_resizes_nearest(tmp_path):
    arr = np.zeros((20, 30), dtype=np.uint8)
    arr[:, :15] = 255
    Image.fromarray(arr).save(tmp_path / "m.png")
    same = load_mask(tmp_path / "m.png", (20, 30))
    assert same.dtype == bool and same.sum() == 20 * 15
    big = load_mask(tmp_path / "m.png", (40, 60))
    assert big.shape == (40, 60) and big[:, :30].all() and not big[:, 30:].any()


def test_patient_bootstrap_resamples_patients_not_images():
    # patient a: 9 images at 1.0; patient b: 1 image at 0.0. Resampling patients,
    # a draw of (b, b) gives 0.0 and (a, a) gives 1.0, so the CI spans almost [0, 1];
    # resampling images would give a narrow interval around 0.9.
    values = np.array([1.0] * 9 + [0.0])
    patients = np.array(["a"] * 9 + ["b"])
    stats = patient_mean_ci(values, patients, n_boot=4000, seed=1)
    assert stats["mean"] == pytest.approx(0.9)
    assert stats["n"] == 10 and stats["patients"] == 2
    assert stats["ci"][0] == pytest.approx(0.0) and stats["ci"][1] == pytest.approx(1.0)
    assert patient_mean_ci(values, patients, n_boot=4000, seed=1) == stats  # reproducible


def test_patient_bootstrap_edge_cases():
    const = patient_mean_ci(np.full(12, 0.7), np.arange(12).astype(str))
    assert const["mean"] == pytest.approx(0.7) and const["ci"] == pytest.approx([0.7, 0.7])
    one = patient_mean_ci(np.array([0.2, 0.4]), np.array(["p", "p"]))
    assert one["ci"] == pytest.approx([0.3, 0.3]) and one["patients"] == 1
    nan = patient_mean_ci(np.array([math.nan, 0.5, 0.7]), np.array(["x", "y", "z"]))
    assert nan["n"] == 2 and nan["mean"] == pytest.approx(0.6)
    assert patient_mean_ci(np.array([math.nan]), np.array(["x"]))["mean"] is None
    wide = patient_mean_ci(np.linspace(0, 1, 40), np.arange(40).astype(str), level=0.95)
    narrow = patient_mean_ci(np.linspace(0, 1, 40), np.arange(40).astype(str), level=0.5)
    assert wide["ci"][0] < narrow["ci"][0] < 0.5 < narrow["ci"][1] < wide["ci"][1]


@pytest.fixture(scope="module")
def masked_subset(cxr3_root, tmp_path_factory):
    """A copy of 8 masked cxr3 images (4 patients per class where possible) with their masks."""
    meta = pd.read_csv(cxr3_root / "metadata.csv", dtype={"patient_id": str})
    masked = meta[meta["lung_mask"].notna()]
    rows = pd.concat([masked[masked["label"] == "covid"].head(4), masked[masked["label"] == "pneumonia"].head(4)])
    root = tmp_path_factory.mktemp("masked-cxr3")
    for column in ("image", "lung_mask", "lesion_mask"):
        for rel in rows[column].dropna():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(cxr3_root / rel, root / rel)
    rows.to_csv(root / "metadata.csv", index=False)
    return root, rows


@pytest.mark.slow
def test_score_model_on_real_masked_images(masked_subset, tmp_path):
    from cxrdx.config import ExplainConfig
    from cxrdx.explain.scoring import score_model
    from cxrdx.models import create_model

    root, rows = masked_subset
    model = create_model("tf_efficientnet_lite0", "gru", weights="imagenet").eval()
    settings = ExplainConfig(bootstrap=200, gallery_per_group=1, flag_lung_energy=1.01)
    scores = score_model(model, root, tmp_path, settings=settings, progress=False)
    on_disk = json.loads((tmp_path / "scores.json").read_text())
    assert on_disk["n_images"] == scores["n_images"] == len(rows)
    assert on_disk["method"] == "gradcam" and on_disk["model"]["backbone"] == "tf_efficientnet_lite0"
    assert set(on_disk["per_class"]) == {"covid", "pneumonia"}
    for image in on_disk["per_image"]:
        assert 0.0 <= image["lung_energy"] <= 1.0 and image["pointing_game"] in (0.0, 1.0)
        assert 0.05 < image["lung_area"] < 0.9
    overall = on_disk["overall"]
    lung = overall["lung_energy"]
    assert lung["ci"][0] <= lung["mean"] <= lung["ci"][1] and lung["n"] == len(rows)
    assert lung["mean"] == pytest.approx(np.mean([i["lung_energy"] for i in on_disk["per_image"]]))
    assert overall["lesion_energy"]["n"] == int(rows["lesion_mask"].notna().sum())
    assert on_disk["flagged"] is True and "outside the lungs" in on_disk["flag_reason"]  # threshold set above 1
    assert on_disk["gallery"] and all((tmp_path / g["file"]).is_file() for g in on_disk["gallery"])
    names = {g["file"].split("/")[-1] for g in on_disk["gallery"]}
    assert all(n.split("_")[0] in ("covid", "pneumonia") and n.split("_")[1] in ("correct", "wrong") for n in names)
