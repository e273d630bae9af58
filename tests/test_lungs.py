"""The lung segmenter: lungseg split, training, save/load, ONNX, failure-tolerant prediction, no-lungs signal."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cxrdx.config import LungsConfig
from cxrdx.data.lungseg import load_lungseg, read_mask, resize_mask, split_lungseg
from cxrdx.features.lungs import LungPredictor, NoLungsError, clean_mask, create_lung_predictor, lung_bbox
from cxrdx.models.segmenter import SegmenterInfo, create_segmenter, load_segmenter, onnx_max_difference

from conftest import make_xray


def _tiny_slice(df: pd.DataFrame, per_source: int, seed: int = 0) -> pd.DataFrame:
    """Whole patients, about ``per_source`` images from each source."""
    rng = np.random.default_rng(seed)
    parts = []
    for _, rows in df.groupby("source"):
        patients = rows["patient_id"].unique()
        chosen = rng.choice(patients, size=min(per_source, len(patients)), replace=False)
        parts.append(rows[rows["patient_id"].isin(chosen)])
    return pd.concat(parts).drop_duplicates("name").reset_index(drop=True)


def test_split_grouped_by_patient_and_stratified_by_source(lungseg_root):
    df = split_lungseg(load_lungseg(lungseg_root), test_fraction=0.2, val_fraction=0.1, seed=0)
    parts = {p: set(df.loc[df["part"] == p, "patient_id"]) for p in ("train", "val", "test")}
    assert not parts["train"] & parts["test"] and not parts["train"] & parts["val"] and not parts["val"] & parts["test"]
    counts = df.groupby(["source", "part"]).size().unstack(fill_value=0)
    assert (counts > 0).all().all(), counts  # every source in every part
    share = counts["test"] / counts.sum(axis=1)
    assert share.between(0.1, 0.3).all(), share
    again = split_lungseg(load_lungseg(lungseg_root), test_fraction=0.2, val_fraction=0.1, seed=0)
    assert (again["part"] == df["part"]).all()  # seeded


def test_masks_are_binary_and_resized_nearest(lungseg_root):
    row = load_lungseg(lungseg_root).iloc[0]
    mask = read_mask(row["mask"])
    assert mask.dtype == bool and 0.05 < mask.mean() < 0.8
    small = resize_mask(mask, 64)
    assert small.shape == (64, 64) and small.dtype == bool


def test_clean_mask_keeps_two_largest_regions_and_fills_holes():
    mask = np.zeros((60, 60), bool)
    mask[10:50, 5:25] = True  # left lung
    mask[10:50, 35:55] = True  # right lung
    mask[20:22, 10:12] = False  # a hole
    mask[2:4, 2:4] = True  # speck
    out = clean_mask(mask)
    assert out[20, 10] and not out[2, 2]
    assert out.sum() == 2 * 40 * 20
    assert lung_bbox(out, min_fraction=0.0) == (5, 10, 55, 50)
    assert lung_bbox(out, margin=0.1, min_fraction=0.0) == (0, 6, 60, 54)


def test_lung_bbox_signals_no_lungs():
    with pytest.raises(NoLungsError) as info:
        lung_bbox(np.zeros((32, 32), bool), name="blank.png")
    assert info.value.code == "no_lungs" and "blank.png" in str(info.value)
    tiny = np.zeros((100, 100), bool)
    tiny[:5, :5] = True
    with pytest.raises(NoLungsError):
        lung_bbox(tiny, min_fraction=0.02)


@pytest.fixture()
def blind_model():
    """A small untrained segmenter whose output bias says "no lung" everywhere."""
    model = create_segmenter(SegmenterInfo(image_size=64), weights="none")
    with torch.no_grad():
        model.unet.segmentation_head[0].bias.fill_(-20.0)
    return model


def test_predict_reports_corrupt_file_and_continues(tmp_path, blind_model):
    good = tmp_path / "good.png"
    Image.fromarray(make_xray((80, 96))).save(good)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(good.read_bytes()[:60])
    other = tmp_path / "other.png"
    Image.fromarray(make_xray((70, 50), seed=1)).save(other)
    with torch.no_grad():
        blind_model.unet.segmentation_head[0].bias.fill_(20.0)  # everything lung
    results = LungPredictor(blind_model, batch_size=2).predict_paths([good, corrupt, other])
    assert [r.source.rsplit("/", 1)[-1] for r in results] == ["good.png", "corrupt.png", "other.png"]
    assert results[1].mask is None and results[1].error.code == "corrupt_image"
    assert results[0].ok and results[0].mask.shape == (80, 96)  # everything lung, fully confident
    assert results[2].ok and results[2].mask.shape == (70, 50)


@pytest.mark.parametrize("bias", [-20.0, 20.0])
def test_blank_image_gives_no_lungs_signal(blind_model, bias):
    """No lung painted, or lung painted everywhere on an image without any contrast: both say "no lungs"."""
    with torch.no_grad():
        blind_model.unet.segmentation_head[0].bias.fill_(bias)
    predictor = LungPredictor(blind_model)
    result = predictor.predict_sources([("blank", np.full((90, 90), 128, np.uint8))])[0]
    assert not result.found and isinstance(result.error, NoLungsError) and result.error.code == "no_lungs"
    checked = predictor.predict_results([np.zeros((50, 60), np.uint8)], names=["black"])[0]
    assert checked.error.code == "no_lungs" and checked.mask.shape == (50, 60)


def test_no_lung_region_gives_no_lungs_signal(blind_model):
    result = LungPredictor(blind_model).predict_sources([("xray", make_xray((90, 90)))])[0]
    assert not result.found and isinstance(result.error, NoLungsError)
    assert result.mask is not None and not result.mask.any()
    assert result.to_dict()["error"]["code"] == "no_lungs"


@pytest.fixture(scope="module")
def tiny_run(lungseg_root, tmp_path_factory):
    """A segmenter trained for a few epochs on a small slice of lungseg (64 px)."""
    from cxrdx.training.segmenter import train_segmenter

    rows = _tiny_slice(load_lungseg(lungseg_root), per_source=12)
    cfg = LungsConfig(data=str(lungseg_root), image_size=64, epochs=6, batch_size=8, lr=2e-3, patience=6,
                      test_fraction=0.25, val_fraction=0.15, augment_copies=1, threads=2)
    run_dir = tmp_path_factory.mktemp("lungs-run")
    outcome = train_segmenter(cfg, run_dir, rows=rows, echo=lambda m: None)
    return run_dir, outcome


@pytest.mark.slow
def test_tiny_segmenter_beats_all_lung_baseline_on_held_out_patients(tiny_run):
    from cxrdx.evaluation.segmentation import evaluate_segmenter

    run_dir, outcome = tiny_run
    assert (run_dir / "segmenter.safetensors").is_file() and (run_dir / "segmenter.onnx").is_file()
    result = evaluate_segmenter(run_dir, n_boot=200)
    split = pd.read_csv(run_dir / "split.csv")
    test_patients = set(split.loc[split["part"] == "test", "patient_id"])
    assert set(result.per_image["patient_id"]) <= test_patients
    assert not test_patients & set(split.loc[split["part"] != "test", "patient_id"])
    dice, baseline = result.summary["all"]["dice"], result.summary["all"]["baseline_dice"]
    assert dice["mean"] > baseline["mean"] + 0.1, (dice, baseline)
    assert dice["ci"][0] <= dice["mean"] <= dice["ci"][1]
    assert set(result.summary["per_source"]) == set(result.per_image["source"])


@pytest.mark.slow
def test_save_load_round_trip_gives_identical_masks(tiny_run, lungseg_root):
    run_dir, _ = tiny_run
    paths = list(load_lungseg(lungseg_root)["image"][:4])
    first = create_lung_predictor(run_dir).predict_paths(paths)
    again = LungPredictor(load_segmenter(run_dir)).predict_paths(paths)
    for a, b in zip(first, again):
        assert np.array_equal(a.mask, b.mask)


@pytest.mark.slow
def test_onnx_matches_torch(tiny_run, lungseg_root):
    run_dir, _ = tiny_run
    model = load_segmenter(run_dir)
    torch_pred, onnx_pred = LungPredictor(model), create_lung_predictor(run_dir, runtime="onnx")
    images = [np.asarray(Image.open(p)) for p in load_lungseg(lungseg_root)["image"][:3]]
    batch = np.stack([torch_pred.network_input(a) for a in images])
    assert np.abs(torch_pred.probabilities(batch) - onnx_pred.probabilities(batch)).max() < 1e-4
    assert onnx_max_difference(model, run_dir / "segmenter.onnx", torch.from_numpy(batch)) < 1e-4


@pytest.mark.slow
def test_cli_predict_writes_masks_and_reports_bad_file(tiny_run, lungseg_root, tmp_path):
    from typer.testing import CliRunner

    from cxrdx.cli import app

    run_dir, _ = tiny_run
    image = load_lungseg(lungseg_root)["image"][0]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "masks"
    res = CliRunner().invoke(app, ["lungs", "predict", image, str(bad), "--model", str(run_dir), "--out", str(out)])
    assert res.exit_code == 1, res.output  # one file failed: reported, the rest written
    written = Image.open(out / (image.rsplit("/", 1)[-1]))
    assert written.size == Image.open(image).size and set(np.unique(np.asarray(written))) <= {0, 255}
    table = pd.read_csv(out / "lungs.csv", keep_default_na=False)
    assert len(table) == 2 and table.loc[1, "error"] != ""
    res = CliRunner().invoke(app, ["lungs", "evaluate", str(run_dir), "--bootstrap", "100"])
    assert res.exit_code == 0, res.output
    assert "Dice" in res.output and (run_dir / "evaluation.json").is_file()
