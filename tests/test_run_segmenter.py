"""A run trained on lung regions is self-contained: its segmenter is copied into ``RUN/lungs`` (digest in model.json),
loaded from there after the run folder moves, refused when its files change; older runs naming a segmenter folder
by absolute path keep working."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from cxrdx.features.roi import RegionOfInterest, RoiError, RoiSetting, record_setting
from cxrdx.models.factory import create_model
from cxrdx.models.run import LUNGS_DIR, RunError, load_run, save_run
from cxrdx.models.segmenter import INFO_FILE, ONNX_FILE, WEIGHTS_FILE, SegmenterInfo, create_segmenter, save_segmenter, segmenter_digest

from conftest import make_xray


@pytest.fixture
def seg_dir(tmp_path):
    torch.manual_seed(0)
    return save_segmenter(create_segmenter(SegmenterInfo(image_size=64), weights="none").eval(), tmp_path / "seg")


def _model(seg_dir, roi: str = "lung_crop"):
    torch.manual_seed(0)
    model = create_model("tf_efficientnet_lite0", "pool", weights="none", image_size=64)
    record_setting(model.info, RoiSetting(roi, lung_model=str(seg_dir)).resolved())
    return model


def test_the_segmenter_travels_with_the_run_and_is_loaded_from_it(seg_dir, tmp_path):
    digest = segmenter_digest(seg_dir)
    (seg_dir / ONNX_FILE).write_bytes(b"onnx stand-in")  # copied too when present
    run = tmp_path / "run"
    save_run(_model(seg_dir), run)
    roi = json.loads((run / "model.json").read_text())["extra"]["roi"]
    assert roi["lung_model"] == LUNGS_DIR and roi["lung_digest"] == digest
    assert roi["lung_model_origin"] == str(seg_dir.resolve())
    for name in (INFO_FILE, WEIGHTS_FILE, ONNX_FILE):
        assert (run / LUNGS_DIR / name).read_bytes() == (seg_dir / name).read_bytes()

    shutil.rmtree(seg_dir)  # the original segmenter is gone and the run moves: it still works
    moved = run.rename(tmp_path / "elsewhere")
    model = load_run(moved)
    setting = RoiSetting.from_model_info(model.info)
    assert setting.lung_model == str((moved / LUNGS_DIR).resolve()) and setting.lung_digest == digest
    region, info = RegionOfInterest.from_model_info(model.info, runtime="torch")(make_xray((90, 110), seed=2))
    assert region.ndim == 2 and info.roi == "lung_crop"  # the segmenter ran from RUN/lungs

    save_run(model, moved)  # saving a loaded run into its own folder keeps the stored copy
    assert json.loads((moved / "model.json").read_text())["extra"]["roi"]["lung_model"] == LUNGS_DIR
    again = tmp_path / "copy"
    save_run(model, again)  # ... and into another folder copies it along
    assert segmenter_digest(again / LUNGS_DIR) == digest


def test_a_changed_stored_segmenter_is_refused_with_a_clear_error(seg_dir, tmp_path):
    run = tmp_path / "run"
    save_run(_model(seg_dir, "lung_mask"), run)
    info = run / LUNGS_DIR / INFO_FILE
    info.write_text(info.read_text() + " ")
    with pytest.raises(RunError, match=r"trained with sha256:[0-9a-f]{16}.*restore that segmenter or retrain"):
        load_run(run)


def test_a_segmenter_changed_before_saving_is_refused(seg_dir, tmp_path):
    model = _model(seg_dir)
    (seg_dir / INFO_FILE).write_text((seg_dir / INFO_FILE).read_text() + " ")
    with pytest.raises(RunError, match="cannot store the run's lung segmenter"):
        save_run(model, tmp_path / "run")


def test_an_old_run_naming_its_segmenter_by_path_keeps_working(seg_dir, tmp_path):
    run = tmp_path / "run"
    save_run(_model(seg_dir), run)
    meta = json.loads((run / "model.json").read_text())
    meta["extra"]["roi"] = {k: v for k, v in meta["extra"]["roi"].items() if k != "lung_model_origin"}
    meta["extra"]["roi"]["lung_model"] = str(seg_dir.resolve())  # what runs saved before this change hold
    (run / "model.json").write_text(json.dumps(meta))
    shutil.rmtree(run / LUNGS_DIR)
    model = load_run(run)
    assert RoiSetting.from_model_info(model.info).lung_model == str(seg_dir.resolve())
    RegionOfInterest.from_model_info(model.info)  # digest still matches
    (seg_dir / INFO_FILE).write_text((seg_dir / INFO_FILE).read_text() + " ")
    with pytest.raises(RoiError, match="restore that segmenter or retrain"):
        RegionOfInterest.from_model_info(load_run(run).info)


def test_full_image_runs_store_no_segmenter(tmp_path):
    model = create_model("tf_efficientnet_lite0", "pool", weights="none", image_size=64)
    save_run(model, tmp_path / "run")
    assert not (tmp_path / "run" / LUNGS_DIR).exists()
    assert "roi" not in json.loads((tmp_path / "run" / "model.json").read_text())["extra"]
