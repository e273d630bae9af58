"""Prediction stability: the perturbations are invisible-sized, seeded and bounded; agreement counts flips right."""

from __future__ import annotations

import numpy as np
import pytest

from cxrdx.evaluation.stability import (
    PERTURBATIONS, agreement_summary, gaussian_noise, jpeg_reencode, prediction_stability,
)
from cxrdx.registry import UnknownNameError, get_registry

from conftest import make_xray


def test_perturbations_change_pixels_by_about_a_grey_level():
    grey = make_xray((260, 240), seed=1)
    jpeg = jpeg_reencode(grey)
    assert jpeg.shape == grey.shape and jpeg.dtype == np.uint8
    diff = np.abs(jpeg.astype(int) - grey)
    assert 0 < diff.mean() < 2.0  # changed, but not visibly
    noisy = gaussian_noise(grey, np.random.default_rng(0))
    d = noisy.astype(float) - grey
    assert noisy.dtype == np.uint8 and abs(d.std() - 1.0) < 0.1 and abs(d.mean()) < 0.05
    np.testing.assert_array_equal(noisy, gaussian_noise(grey, np.random.default_rng(0)))  # seeded
    assert get_registry("perturbations") is PERTURBATIONS and set(PERTURBATIONS.names()) >= {"jpeg95", "noise1"}


class MeanThreshold:
    """A 'model' whose class is whether the mean grey level is above 128: images near 128 flip under noise."""

    classes = ["dark", "bright"]

    def __init__(self):
        self.calls = 0

    def predict_arrays(self, arrays):
        self.calls += 1
        m = np.array([a.mean() for a in arrays])
        p = 1 / (1 + np.exp(np.clip(-(m - 128.0) * 50, -50, 50)))
        return np.stack([1 - p, p], axis=1)


def test_stability_counts_the_flips_of_borderline_images_in_bounded_chunks():
    far = [np.full((64, 64), v, np.uint8) for v in (20, 60, 200, 240)]  # never flip
    # exactly at the threshold: noise moves the mean by ~1/64 grey level either way, so about half flip
    near = [np.full((64, 64), 128, np.uint8) for _ in range(40)]
    near_ones = [np.where(np.arange(64 * 64).reshape(64, 64) % 2 == 0, 128, 129).astype(np.uint8) for _ in range(4)]
    images = far + near + near_ones
    patients = np.array([f"p{i // 2}" for i in range(len(images))])
    model = MeanThreshold()
    out = prediction_stability(model, images, patients, chunk=8)
    assert out["images"] == len(images)
    noise = out["perturbations"]["noise1"]
    assert noise["images"] == len(images) and 5 <= noise["flips"] <= 40
    assert noise["class_agreement"] == pytest.approx(1 - noise["flips"] / len(images))
    lo, hi = noise["class_agreement_ci"]
    assert lo <= noise["class_agreement"] <= hi
    assert sum(noise["flips_from"].values()) == noise["flips"]
    assert out["perturbations"]["jpeg95"]["flips"] == 0  # flat images survive a JPEG round trip unchanged
    assert model.calls == 3 * -(-len(images) // 8)  # chunk by chunk: reference + 2 perturbations per chunk
    again = prediction_stability(MeanThreshold(), images, patients, chunk=64)
    assert again["perturbations"]["noise1"]["flips"] == noise["flips"]  # the same draws whatever the chunk size


def test_an_unreadable_image_is_skipped_not_fatal(tmp_path):
    from cxrdx.data.io import read_image

    good = []
    for i in range(3):
        path = tmp_path / f"ok{i}.png"
        from PIL import Image

        Image.fromarray(make_xray((80, 80), seed=i)).save(path)
        good.append(path)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    paths = [good[0], broken, good[1], tmp_path / "gone.png", good[2]]
    out = prediction_stability(MeanThreshold(), paths, list("abcde"), read=read_image, chunk=2)
    assert out["images"] == 3 and out["perturbations"]["noise1"]["images"] == 3
    assert [s["image"] for s in out["skipped"]] == [str(broken), str(tmp_path / "gone.png")]


def test_stability_reads_lazily_and_checks_its_inputs():
    paths = [f"img{i}" for i in range(6)]
    store = {p: np.full((32, 32), 10 * i, np.uint8) for i, p in enumerate(paths)}
    out = prediction_stability(MeanThreshold(), paths, list("aabbcc"), read=store.__getitem__, perturbations=("jpeg95",))
    assert out["perturbations"]["jpeg95"]["class_agreement"] == 1.0 and "noise1" not in out["perturbations"]
    with pytest.raises(UnknownNameError):
        prediction_stability(MeanThreshold(), paths, list("aabbcc"), read=store.__getitem__, perturbations=("blur",))
    with pytest.raises(ValueError, match="patient ids"):
        prediction_stability(MeanThreshold(), paths, ["a"], read=store.__getitem__)


def test_agreement_summary_on_known_flips():
    ref = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    new = np.array([[0.8, 0.2], [0.7, 0.3], [0.6, 0.4], [0.3, 0.7]])
    s = agreement_summary(ref, new, np.array(["a", "b", "c", "d"]), ["x", "y"])
    assert s["flips"] == 1 and s["flips_from"] == {"x": 0, "y": 1} and s["class_agreement"] == 0.75
    assert s["max_abs_prob_diff"] == pytest.approx(0.5)
