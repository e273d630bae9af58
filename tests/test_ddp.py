"""`cxrdx train` under torchrun: 2 gloo processes give the weights of 1 process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file

from cxrdx.data.manifest import load_manifest
from cxrdx.data.splits import train_val_test_split

CXRDX = str(Path(sys.executable).with_name("cxrdx"))


def _slice_with_even_train_part(root: Path, out: Path) -> Path:
    """~12 patients per class whose training part has an even number of images.

    DistributedSampler pads an uneven shard by repeating a sample; with an even
    count both ranks together see exactly the one-process batches.
    """
    df = load_manifest(root)
    for seed in range(20):
        rng = np.random.default_rng(seed)
        parts = []
        for label in ("covid", "pneumonia", "normal"):
            patients = sorted(df.loc[df["label"] == label, "patient_id"].unique())
            chosen = set(rng.choice(patients, 12, replace=False))
            parts.append(df[df["patient_id"].isin(chosen) & (df["label"] == label)])
        rows = pd.concat(parts).drop_duplicates("image").reset_index(drop=True)
        train, _, _ = train_val_test_split(rows)
        if len(train) % 2 == 0:
            csv = out / "slice.csv"
            rows.drop(columns=["target"]).to_csv(csv, index=False)
            return csv
    raise AssertionError("no slice with an even training part")


def _train(nproc: int | None, batch: int, out: Path, csv: Path, cache: Path, *extra: str) -> dict[str, np.ndarray]:
    args = [
        "train", "--manifest", str(csv), "--data", str(csv.parent), "--head", "gru", "--epochs", "4",
        "--set", "model.dropout=0", "--set", "train.patience=100", "--set", f"train.batch_size={batch}",
        "--set", "train.precision=fp32",  # exact comparison: bf16 rounds a batch and its two halves differently
        "--set", f"data.cache_dir={cache}", "--out", str(out), *extra,
    ]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", CXRDX] if nproc else [CXRDX]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(launcher + args, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {k: v.numpy() for k, v in load_file(str(out / "model.safetensors")).items()}


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(cxr3_root, feature_cache_dir, tmp_path):
    csv = _slice_with_even_train_part(cxr3_root, tmp_path)
    two = _train(2, 4, tmp_path / "two", csv, feature_cache_dir)  # 2 processes x 4 rows per step
    one = _train(1, 8, tmp_path / "one", csv, feature_cache_dir)  # 1 process x 8 rows per step
    assert two.keys() == one.keys()
    diff = max(float(np.abs(two[k] - one[k]).max()) for k in one)
    assert diff < 1e-4, f"DDP weights differ from the 1-process run by {diff}"

    report_two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    report_one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert report_two["distributed"]["world_size"] == 2 and report_two["distributed"]["backend"] == "gloo"
    assert report_two["distributed"]["head_global_batch"] == report_one["distributed"]["head_global_batch"] == 8
    # validation metrics reduced across ranks equal the 1-process ones, epoch by epoch
    hist_two = json.loads((tmp_path / "two" / "history.json").read_text())["head"]
    hist_one = json.loads((tmp_path / "one" / "history.json").read_text())["head"]
    assert [h["val_f1"] for h in hist_two] == pytest.approx([h["val_f1"] for h in hist_one])
    assert [h["loss"] for h in hist_two] == pytest.approx([h["loss"] for h in hist_one], rel=1e-4)
    # rank 0 alone wrote the run folder: one split, no stray per-rank files
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    split = pd.read_csv(tmp_path / "two" / "split.csv", dtype={"patient_id": str})
    assert not set(split.query("part == 'train'")["patient_id"]) & set(split.query("part == 'test'")["patient_id"])

    # the tolerance is not vacuous: a plain run (other data order) ends far away
    plain = _train(None, 8, tmp_path / "plain", csv, feature_cache_dir)
    assert max(float(np.abs(plain[k] - one[k]).max()) for k in one) > 1e-3


@pytest.mark.slow
def test_source_balanced_row_weights_under_ddp_match_one_process(cxr3_root, feature_cache_dir, tmp_path):
    """Per-row weights (train.sampling=source_balanced): the global-batch weighted mean, as with class weights."""
    csv = _slice_with_even_train_part(cxr3_root, tmp_path)
    balanced = ("--set", "train.sampling=source_balanced", "--set", "train.source_min_images=1")
    two = _train(2, 4, tmp_path / "two", csv, feature_cache_dir, *balanced)
    one = _train(1, 8, tmp_path / "one", csv, feature_cache_dir, *balanced)
    assert max(float(np.abs(two[k] - one[k]).max()) for k in one) < 1e-4
    unweighted = _train(1, 8, tmp_path / "none", csv, feature_cache_dir)
    assert max(float(np.abs(unweighted[k] - one[k]).max()) for k in one) > 1e-4  # the weights did something
