"""experiments/loso_frozen_ideas.py: its building blocks do what docs/generalisation.md says they do."""

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "loso_frozen_ideas.py"


def _script():
    spec = importlib.util.spec_from_file_location("loso_frozen_ideas", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_processing_copy_is_seeded_per_image_and_copy():
    ideas = _script()
    rng = np.random.default_rng(0)
    grey = (rng.random((180, 220)) * 255).astype(np.uint8)
    row = pd.Series({"image": "/data/a.png"})
    first = ideas.processing_copy(0)(grey, row)
    assert first.dtype == np.uint8 and first.ndim == 2 and min(first.shape) >= 0.7 * 180 * 0.8
    assert np.array_equal(first, ideas.processing_copy(0)(grey, row))  # same image, same copy: same pixels
    assert not np.array_equal(first, ideas.processing_copy(1)(grey, row))  # another copy differs
    assert not np.array_equal(first, ideas.processing_copy(0)(grey, pd.Series({"image": "/data/b.png"})))


def test_nullspace_removes_what_tells_sources_apart_within_a_class():
    ideas = _script()
    rng = np.random.default_rng(1)
    n = 400
    y = rng.integers(0, 2, n)
    source = np.where(rng.random(n) < 0.5, "a", "b")
    x = rng.normal(size=(n, 20))
    x[:, 0] += 3.0 * (source == "a")  # the archive direction
    x[:, 1] += 3.0 * y  # the label direction
    proj = ideas.nullspace(x, y, source, rounds=2)
    z = x @ proj
    source_acc = LogisticRegression(max_iter=500).fit(z, source).score(z, source)
    label_acc = LogisticRegression(max_iter=500).fit(z, y).score(z, y)
    assert source_acc < 0.65  # near chance once the archive direction is gone
    assert label_acc > 0.9  # the label survives
