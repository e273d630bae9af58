"""The vectorised patient bootstrap equals the scikit-learn loop it replaces (same resamples, same undefined rates)."""

from __future__ import annotations

import numpy as np
import pytest

from cxrdx.stats.bootstrap import fast_patient_bootstrap, full_metric_fn, light_metric_fn, patient_bootstrap


def _data(n: int, classes: list[str], seed: int, rare: bool = False):
    rng = np.random.default_rng(seed)
    k = len(classes)
    y = rng.integers(0, k, n)
    if rare:  # one class in two images only: absent from many resamples (sensitivity / AUC undefined there)
        y[y == k - 1] = 0
        y[:2] = k - 1
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    probs[:5] = probs[0]  # tied scores
    patients = np.array([f"p{i // 2 if i % 3 else i}" for i in range(n)])  # some patients with two images
    return y, probs, patients


def _assert_same(slow: dict, fast: dict) -> None:
    assert list(slow) == list(fast)
    for key in slow:
        for a, b in zip(slow[key], fast[key]):
            assert (a is None) == (b is None), key
            if a is not None:
                assert abs(a - b) < 1e-12, key


@pytest.mark.parametrize("classes,rare", [(["covid", "pneumonia", "normal"], False), (["covid", "pneumonia", "normal"], True),
                                          (["covid", "non-covid"], False), (["a", "b", "c", "d"], True)])
def test_fast_bootstrap_equals_the_sklearn_loop(classes, rare):
    y, probs, patients = _data(40, classes, seed=len(classes) + rare, rare=rare)
    for light, fn in ((False, full_metric_fn(classes)), (True, light_metric_fn(classes))):
        slow = patient_bootstrap(y, probs, patients, fn, n_boot=40, seed=3)
        fast = fast_patient_bootstrap(y, probs, patients, classes, n_boot=40, seed=3, light=light)
        _assert_same(slow, fast)
