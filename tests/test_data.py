import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrdx.data import LeakageError, ManifestError, assert_no_patient_leakage, kfold_indices, load_manifest, train_val_test_split
from conftest import make_xray


def test_cxr3_manifest_and_patient_split_has_no_leakage(cxr3_root):
    df = load_manifest(cxr3_root)
    # shared/data/cxr3/README.md: 2,266 rows from six sources; 00002658_002.png is a byte-identical copy of
    # 00002658_001.png (same patient, same label), dropped by cxrdx.data.duplicates (issue 11)
    assert len(df) == 2265
    assert df["label"].value_counts().to_dict() == {"normal": 880, "covid": 803, "pneumonia": 582}
    assert any("dropped 1 row(s) whose image file is identical" in w for w in df.attrs["warnings"])
    train, val, test = train_val_test_split(df, 0.2, 0.15, seed=42)
    assert len(train) + len(val) + len(test) == len(df)
    for a, b in ((train, val), (train, test), (val, test)):
        assert not set(a["patient_id"]) & set(b["patient_id"])
    for part in (train, val, test):  # stratified: every class present in every part
        assert set(part["label"]) == {"covid", "pneumonia", "normal"}


def test_kfold_is_patient_grouped_and_covers_every_image_once(cxr3_root):
    df = load_manifest(cxr3_root)
    seen = np.zeros(len(df), dtype=int)
    for train_idx, test_idx in kfold_indices(df, n_splits=5, seed=1):
        assert not set(df.iloc[train_idx]["patient_id"]) & set(df.iloc[test_idx]["patient_id"])
        seen[test_idx] += 1
    assert (seen == 1).all()


def test_leakage_check_fails_loudly():
    a = pd.DataFrame({"patient_id": ["p1", "p2"]})
    b = pd.DataFrame({"patient_id": ["p3", "p2"]})
    with pytest.raises(LeakageError, match="p2"):
        assert_no_patient_leakage(a, b)


def test_benchmark_and_binary_task(cxr3_root):
    dark = load_manifest(cxr3_root, benchmark="darkcovidnet")
    # DarkCovidNet's 500 normal images include the byte-identical 00002658_001/_002 pair: one is dropped
    assert dark["label"].value_counts().to_dict() == {"normal": 499, "pneumonia": 500, "covid": 124}
    binary = load_manifest(cxr3_root, classes=("covid", "non-covid"))
    assert binary["label"].value_counts().to_dict() == {"non-covid": 1462, "covid": 803}
    assert set(binary["target"]) == {0, 1}


def test_folder_per_class_dataset(tmp_path):
    for label in ("covid", "normal", "pneumonia"):
        (tmp_path / label).mkdir()
        for i in range(3):  # one picture per file: the same picture under two labels is an error
            Image.fromarray(make_xray(seed=i + 10 * len(label))).save(tmp_path / label / f"pat{i}__{label}{i}.png")
    df = load_manifest(tmp_path)
    assert len(df) == 9
    assert sorted(df["label"].unique()) == ["covid", "normal", "pneumonia"]
    assert df.loc[0, "patient_id"] == "pat0"  # <patient>__<name> file names group exams by patient


@pytest.mark.parametrize(
    "content, message",
    [
        ("file,diagnosis\na.png,covid\n", "lacks required column"),
        ("image,label,patient_id\n", "no rows"),
        ("image,label,patient_id\na.png,covid,\n", "empty image/label/patient_id"),
        ("image,label,patient_id\nmissing.png,covid,p1\n", "missing"),
    ],
)
def test_wrong_csv_gets_a_clear_error(tmp_path, content, message):
    csv = tmp_path / "m.csv"
    csv.write_text(content)
    with pytest.raises(ManifestError, match=message):
        load_manifest(tmp_path, csv)


def test_binary_csv_not_a_csv(tmp_path):
    bad = tmp_path / "m.csv"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00garbage\xff\xfe")
    with pytest.raises(ManifestError):
        load_manifest(tmp_path, bad)
