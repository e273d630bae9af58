"""Source-robust training (issue 12): ``train.sampling`` weights, their use by the trainers and cv, and the config."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from cxrdx.config import ConfigError, EvalConfig, TrainConfig, load_config
from cxrdx.data.sampling import SourceWeightWarning, group_totals, manifest_weights, row_weights
from cxrdx.evaluation.cv import Candidate, fold_weights, run_cv
from cxrdx.evaluation.loso import source_plan
from cxrdx.models.heads import create_head
from cxrdx.training.head_trainer import class_weights, row_weighted_loss, train_head

# class 0: sources a (8), b (2); class 1: a (10), c (20); class 2: a (50), b (25), d (25)
Y = np.array([0] * 10 + [1] * 30 + [2] * 100)
S = np.array(["a"] * 8 + ["b"] * 2 + ["a"] * 10 + ["c"] * 20 + ["a"] * 50 + ["b"] * 25 + ["d"] * 25)


def _totals(w, y=Y, s=S) -> dict:
    return {(int(r.target), r.source): r.weight for r in group_totals(y, s, w).itertuples()}


def test_source_balanced_gives_every_source_of_a_class_the_same_total_and_keeps_classes_balanced():
    w = row_weights(Y, S, sampling="source_balanced", class_weighted=True, min_group=1)
    t = _totals(w)
    assert w.sum() == pytest.approx(len(Y)) and (w > 0).all()
    third = len(Y) / 3  # every class totals N / K ...
    for c in range(3):
        assert sum(v for (k, _), v in t.items() if k == c) == pytest.approx(third)
    assert t[(0, "a")] == pytest.approx(t[(0, "b")]) == pytest.approx(third / 2)  # ... shared equally by its sources
    assert t[(1, "a")] == pytest.approx(t[(1, "c")])
    assert t[(2, "a")] == pytest.approx(t[(2, "b")]) == pytest.approx(t[(2, "d")]) == pytest.approx(third / 3)
    # within one (class, source) every row weighs the same
    assert np.unique(np.round(w[:8], 9)).size == 1 and w[0] == pytest.approx(third / 2 / 8)


def test_without_class_weighting_classes_keep_their_size_and_none_is_the_class_weights():
    w = row_weights(Y, S, sampling="source_balanced", class_weighted=False, min_group=1)
    t = _totals(w)
    assert t[(0, "a")] == pytest.approx(t[(0, "b")]) == pytest.approx(5.0)
    assert t[(2, "a")] == pytest.approx(t[(2, "d")]) == pytest.approx(100 / 3)
    assert np.allclose(row_weights(Y, S, sampling="none", class_weighted=False), 1.0)
    none = row_weights(Y, S, sampling="none", class_weighted=True)
    assert np.allclose(none, class_weights(Y, 3).numpy()[Y])  # the trainers' own class weights, row by row
    assert np.allclose(row_weights(Y, None, sampling="source_balanced"), none)


def test_a_source_below_source_min_images_gets_a_proportional_share():
    w = row_weights(Y, S, sampling="source_balanced", min_group=4)  # b holds 2 covid rows: 2/4 of a full share
    t = _totals(w)
    assert t[(0, "b")] == pytest.approx(0.5 * t[(0, "a")])
    assert t[(0, "a")] + t[(0, "b")] == pytest.approx(len(Y) / 3)
    assert t[(2, "a")] == pytest.approx(t[(2, "b")])  # sources above the minimum are untouched


def test_rows_without_a_source_column_fall_back_to_none_with_a_warning():
    df = pd.DataFrame({"target": Y})
    with pytest.warns(SourceWeightWarning, match="no 'source' column"):
        w = manifest_weights(df, "source_balanced")
    assert np.allclose(w, row_weights(Y, None, sampling="none"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        manifest_weights(df, "none")  # nothing asked, nothing said


def test_config_names_and_backwards_compatible_augment():
    cfg = load_config(overrides=["train.sampling=source_balanced", "train.augment=domain"])
    assert (cfg.train.sampling, cfg.train.augment) == ("source_balanced", "domain")
    assert load_config(overrides=["train.augment=true"]).train.augment == "basic"
    assert load_config(overrides=["train.augment=false"]).train.augment == "none"
    assert load_config().train.augment == "basic" and load_config().train.sampling == "none"
    with pytest.raises(ConfigError, match="train.sampling: unknown sampling 'by_source'"):
        load_config(overrides=["train.sampling=by_source"])
    with pytest.raises(ConfigError, match="train.augment: unknown augmentation 'heavy'"):
        load_config(overrides=["train.augment=heavy"])
    with pytest.raises(ConfigError, match="train.source_min_images"):
        load_config(overrides=["train.source_min_images=0"])


def test_row_weighted_loss_is_the_weighted_mean_and_matches_class_weights():
    torch.manual_seed(0)
    logits, y = torch.randn(12, 3), torch.randint(0, 3, (12,))
    cw = torch.tensor([0.5, 2.0, 1.0])
    expected = torch.nn.CrossEntropyLoss(weight=cw)(logits, y)
    assert torch.allclose(row_weighted_loss(cw[y])(logits, y), expected)
    w = torch.zeros(12)
    w[3] = 1.0  # one row carries all the weight
    assert torch.allclose(row_weighted_loss(w)(logits, y), torch.nn.functional.cross_entropy(logits[3:4], y[3:4]))


def _toy(n_per: int = 40, seed: int = 0):
    """Features whose channel 0 says the class and channel 1 says the source (a shortcut)."""
    rng = np.random.default_rng(seed)
    rows, maps = [], []
    for c in range(3):
        for s in ("x", "y", "z"):
            for i in range(n_per if s != "z" or c == 2 else 0):
                m = rng.normal(0, 1, (4, 2, 2)).astype(np.float32)
                m[0] += c
                m[1] += {"x": 0, "y": 2, "z": 4}[s]
                maps.append(m)
                rows.append({"image": f"{s}/{c}/{i}.png", "target": c, "label": "covid pneumonia normal".split()[c],
                             "source": s, "patient_id": f"{s}-{c}-{i}"})
    return np.stack(maps), pd.DataFrame(rows)


def test_train_head_uses_the_row_weights():
    maps, df = _toy()
    x, y = torch.from_numpy(maps), df["target"].to_numpy()
    cfg = TrainConfig(epochs=3, batch_size=32, patience=5, precision="fp32", seed=0)
    runs = []
    for w in (None, np.ones(len(y)), np.where(df["source"] == "x", 5.0, 0.2)):
        torch.manual_seed(0)
        head = create_head("pool", 4, 3)
        train_head(head, x, y, x, y, cfg, 3, progress=False, sample_weight=w)
        runs.append(torch.cat([p.detach().flatten() for p in head.parameters()]))
    assert not torch.allclose(runs[0], runs[2])  # the weights change what is learnt


def test_leave_one_source_out_weights_only_cover_the_training_sources():
    maps, df = _toy(n_per=30)
    plan = source_plan(df, min_images=30, seed=1, val_fraction=0.2)
    tc = TrainConfig(sampling="source_balanced", source_min_images=1)
    for source, (train, val, test) in zip(plan.sources, plan.folds):
        w = fold_weights(df, train, tc)
        assert len(w) == len(train) and source not in set(df["source"].iloc[train])
        t = _totals(w, df["target"].to_numpy()[train], df["source"].to_numpy()[train])
        for c in range(3):  # every training source of a class holds the same total
            shares = [v for (k, _), v in t.items() if k == c]
            assert np.allclose(shares, shares[0])
    ev = EvalConfig(epochs=2, patience=2, batch_size=64, bootstrap=10)
    run = run_cv(maps, df, ("covid", "pneumonia", "normal"), Candidate.parse("logreg"), ev,
                 train_cfg=tc, plan=plan.folds, progress=False)
    assert len(run.folds) == len(plan.sources) and all(np.isfinite(f.test_probs).all() for f in run.folds)


@pytest.mark.slow  # three one-epoch fine-tunes of 64 px images: ~20-40 s on 2 busy cores
def test_finetune_with_source_balanced_sampling_and_domain_augmentation_is_seeded(tmp_path):
    from test_loso import _synthetic_dataset

    from cxrdx.data.manifest import load_manifest
    from cxrdx.training.finetune import finetune
    from cxrdx.training.pipeline import build_model

    root = _synthetic_dataset(tmp_path / "data")
    df = load_manifest(root, None, classes=("covid", "pneumonia", "normal"))
    train, val = df.iloc[::2].reset_index(drop=True), df.iloc[1::2].reset_index(drop=True)

    def run(sampling: str, augment: str, name: str):
        cfg = load_config(overrides=["model.head=pool", "model.weights=none", "data.image_size=64", "train.finetune_blocks=1",
                                     "train.finetune_epochs=1", "train.finetune_batch_size=8", f"train.sampling={sampling}",
                                     f"train.augment={augment}", "train.source_min_images=1"])
        torch.manual_seed(0)
        model = build_model(cfg)
        torch.manual_seed(0)
        (tmp_path / name).mkdir()
        result = finetune(model, train, val, cfg, tmp_path / name, progress=False)
        assert len(result.history) == 1 and np.isfinite(result.history[0]["loss"])
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    a, b = run("source_balanced", "domain", "a"), run("source_balanced", "domain", "b")
    assert torch.equal(a, b)  # same seed, same batches, same augmentations
    assert not torch.equal(a, run("none", "domain", "c"))
