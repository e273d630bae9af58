"""Issue 11, finding 4: duplicate pictures never leak across a split; identical rows and conflicting labels are reported.

Images are made here (random blobs, so no two are alike); one test checks the
known duplicate patients of cxr3 (skips locally without the data, fails in CI).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrdx.data.duplicates import image_signatures, near_duplicate_pairs
from cxrdx.data.manifest import ManifestError, load_manifest
from cxrdx.data.splits import kfold_indices, train_val_test_split

LABELS = ("covid", "pneumonia", "normal")


def _picture(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (8, 8)).astype(np.uint8)
    img = Image.fromarray(coarse).resize((96, 96), Image.BICUBIC)
    return np.asarray(img)


def make_dataset(root, n_patients: int = 45, per_patient: int = 2) -> pd.DataFrame:
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for p in range(n_patients):
        for k in range(per_patient):
            rel = f"images/p{p:03d}_{k}.png"
            Image.fromarray(_picture(1000 * p + k)).save(root / rel)
            rows.append({"image": rel, "label": LABELS[p % 3], "patient_id": f"p{p:03d}"})
    return pd.DataFrame(rows)


def _write(root, df: pd.DataFrame):
    path = root / "metadata.csv"
    df.to_csv(path, index=False)
    return path


def test_every_row_copied_under_another_patient_never_leaks(tmp_path):
    """Finding 4: rows duplicated under patient_id + '-copy' put 73 of 79 test images in train/val."""
    df = make_dataset(tmp_path)
    copies = df.assign(patient_id=df["patient_id"] + "-copy")
    loaded = load_manifest(tmp_path, _write(tmp_path, pd.concat([df, copies])), cache_dir=tmp_path / "cache")
    assert len(loaded) == len(df)  # identical files: one row each
    assert any("dropped 90 row(s)" in w for w in loaded.attrs["warnings"])
    train, val, test = train_val_test_split(loaded, 0.2, 0.15, 42)
    seen = set(train["image"]) | set(val["image"])
    assert not seen & set(test["image"])


def test_reencoded_copies_merge_patient_groups(tmp_path):
    """Copies that are not byte-identical (JPEG re-encoded, other patient id) stay, in the same split part."""
    df = make_dataset(tmp_path)
    rows = []
    for r in df.itertuples():
        rel = r.image.replace(".png", "-copy.jpg")
        Image.open(tmp_path / r.image).save(tmp_path / rel, quality=85)
        rows.append({"image": rel, "label": r.label, "patient_id": r.patient_id + "-copy"})
    loaded = load_manifest(tmp_path, _write(tmp_path, pd.concat([df, pd.DataFrame(rows)])), cache_dir=tmp_path / "cache")
    assert len(loaded) == 2 * len(df)
    group = dict(zip(loaded["patient_id"], loaded["group_id"]))
    assert all(group[p] == group[p + "-copy"] for p in df["patient_id"])
    assert loaded["group_id"].nunique() == df["patient_id"].nunique()
    train, val, test = train_val_test_split(loaded, 0.2, 0.15, 42)
    for a, b in [(train, test), (val, test), (train, val)]:
        stems_a = {p.removesuffix("-copy") for p in a["patient_id"]}
        stems_b = {p.removesuffix("-copy") for p in b["patient_id"]}
        assert not stems_a & stems_b
    for tr, te in kfold_indices(loaded, n_splits=5, seed=0):
        assert not set(loaded["group_id"].iloc[tr]) & set(loaded["group_id"].iloc[te])


def test_exact_duplicate_rows_are_dropped_with_a_warning(tmp_path, caplog):
    df = make_dataset(tmp_path, n_patients=12)
    with caplog.at_level(logging.WARNING):
        loaded = load_manifest(tmp_path, _write(tmp_path, pd.concat([df, df.iloc[:3]])), cache_dir=tmp_path / "c")
    assert len(loaded) == len(df)
    assert "dropped 3 row(s)" in loaded.attrs["warnings"][0]
    assert "dropped 3 row(s)" in caplog.text
    # without duplicates nothing is merged and group_id is the patient id: splits are unchanged
    clean = load_manifest(tmp_path, _write(tmp_path, df), cache_dir=tmp_path / "c")
    assert clean.attrs["warnings"] == [] and (clean["group_id"] == clean["patient_id"]).all()


def test_same_picture_with_two_labels_is_an_error(tmp_path):
    df = make_dataset(tmp_path, n_patients=12)
    wrong = df.iloc[[0]].assign(label="normal" if df.iloc[0]["label"] != "normal" else "covid", patient_id="other")
    with pytest.raises(ManifestError, match="same image .* two labels") as info:
        load_manifest(tmp_path, _write(tmp_path, pd.concat([df, wrong])), cache_dir=tmp_path / "c")
    assert "\n" not in str(info.value)


def test_distinct_pictures_are_not_near_duplicates(tmp_path):
    df = make_dataset(tmp_path, n_patients=30, per_patient=1)
    _, thumbs = image_signatures([str(tmp_path / p) for p in df["image"]], tmp_path / "c")
    assert near_duplicate_pairs(thumbs) == []
    brighter = np.clip(thumbs[0].astype(int) * 1.2 + 10, 0, 255).astype(np.uint8)  # re-windowed copy
    assert near_duplicate_pairs([thumbs[0], thumbs[1], brighter]) == [(0, 2)]


def test_signature_cache_is_reused(tmp_path, monkeypatch):
    df = make_dataset(tmp_path, n_patients=6, per_patient=1)
    paths = [str(tmp_path / p) for p in df["image"]]
    first = image_signatures(paths, tmp_path / "c")
    import cxrdx.data.duplicates as dup

    monkeypatch.setattr(dup, "thumbnail", lambda path: pytest.fail("thumbnail recomputed despite the cache"))
    monkeypatch.setattr(dup, "file_digest", lambda path: pytest.fail("digest recomputed despite the cache"))
    again = image_signatures(paths, tmp_path / "c")
    assert first[0] == again[0] and all((a == b).all() for a, b in zip(first[1], again[1]))


def test_unknown_labels_are_reported_not_silently_dropped(tmp_path, caplog):
    """Finding 8 (part): rows with labels outside the vocabulary are counted and named."""
    df = make_dataset(tmp_path, n_patients=12)
    df.loc[[0, 1, 2], "label"] = "covid-ish"
    with caplog.at_level(logging.WARNING):
        loaded = load_manifest(tmp_path, _write(tmp_path, df), cache_dir=tmp_path / "c")
    assert len(loaded) == len(df) - 3
    assert "dropped 3 row(s) with unknown labels: 'covid-ish' (3)" in loaded.attrs["warnings"][0]
    assert "covid-ish" in caplog.text
    # a binary task does not turn an unknown label into non-covid
    binary = load_manifest(tmp_path, tmp_path / "metadata.csv", classes=("covid", "non-covid"), cache_dir=tmp_path / "c")
    assert len(binary) == len(df) - 3


@pytest.mark.slow
def test_cxr3_known_duplicate_patients_are_merged(cxr3_root, tmp_path_factory):
    """cxr3's README lists ids of one patient; those that are the same picture (not a crop) share a group."""
    df = load_manifest(cxr3_root, cache_dir=tmp_path_factory.mktemp("sig"))
    group = dict(zip(df["patient_id"], df["group_id"]))
    for a, b in [("ieee8023-97", "ieee8023-178"), ("ieee8023-192", "ieee8023-196"), ("ieee8023-137", "ieee8023-202")]:
        assert group[a] == group[b], (a, b)
    assert df.groupby("group_id")["patient_id"].nunique().max() <= 3  # no runaway chain of merges
