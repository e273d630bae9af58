"""CT as a modality (issue 13): ct2's labels in the binary task, patient-grouped splits, the modality setting."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from cxrdx.config import ConfigError, load_config
from cxrdx.data.manifest import ManifestError, load_manifest, normalise_label
from cxrdx.data.modality import select_modality
from cxrdx.data.splits import assert_no_patient_leakage, train_val_test_split
from cxrdx.tasks import CLASSES_BINARY, NON_COVID


def test_ct2_loads_with_the_binary_task_and_splits_by_patient(ct2_root):
    df = load_manifest(ct2_root, classes=CLASSES_BINARY)
    counts = df["label"].value_counts().to_dict()
    assert counts == {"non-covid": 395, "covid": 349}
    assert df["patient_id"].nunique() == 377
    assert set(df["target"]) == {0, 1}
    train, val, test = train_val_test_split(df, 0.2, 0.15, 42)
    assert_no_patient_leakage(train, val, test)
    assert len(train) + len(val) + len(test) == len(df)
    for part in (train, val, test):
        assert set(part["label"]) == {"covid", "non-covid"}
    _, modality = select_modality(df)
    assert modality == "xray"  # no modality column: the setting says ct (below)


def test_noncovid_spellings_map_to_the_task_vocabulary():
    for spelling in ("noncovid", "NonCOVID", "non_covid", "non-covid"):
        assert normalise_label(spelling) == NON_COVID


def test_modality_column_selects_rows_and_is_recorded(tmp_path):
    df = pd.DataFrame({"image": ["a", "b", "c"], "label": ["covid", "non-covid", "covid"],
                       "patient_id": ["1", "2", "3"], "modality": ["xray", "ct", "CT"]})
    rows, modality = select_modality(df, "ct")
    assert modality == "ct" and rows["image"].tolist() == ["b", "c"]
    assert select_modality(df)[1] == "xray+ct"
    assert select_modality(df.drop(columns="modality"), "ct")[1] == "ct"
    with pytest.raises(ManifestError, match="allowed"):
        select_modality(df.assign(modality=["xray", "mri", "ct"]))
    with pytest.raises(ConfigError, match="data.modality"):
        load_config(overrides=["data.modality=mri"])


def test_model_json_records_the_modality(tmp_path):
    from cxrdx.models.factory import create_model
    from cxrdx.models.run import load_run, save_run

    save_run(create_model("tf_efficientnet_lite0", "pool", weights="none", classes=list(CLASSES_BINARY), modality="ct"), tmp_path)
    assert json.loads((tmp_path / "model.json").read_text())["modality"] == "ct"
    assert load_run(tmp_path).info.modality == "ct"
    meta = json.loads((tmp_path / "model.json").read_text())
    del meta["modality"]  # a run from before issue 13 is an X-ray model
    (tmp_path / "model.json").write_text(json.dumps(meta))
    assert load_run(tmp_path).info.modality == "xray"
