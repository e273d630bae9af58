"""Shape-only shortcut control: the label from an image's format alone (no pixels), per patient-grouped fold."""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from cxrdx.evaluation.cv import fold_plan
from cxrdx.evaluation.shape_control import image_shapes, shape_control

CLASSES = ("covid", "pneumonia", "normal")


def _rows(tmp_path, shape_of_label, n=90):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        target = i % 3
        h, w = shape_of_label(target, rng)
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8)).save(path)
        rows.append({"image": str(path), "target": target, "label": CLASSES[target], "patient_id": f"p{i}"})
    return pd.DataFrame(rows)


def test_an_archive_format_that_gives_the_label_away_is_flagged(tmp_path):
    # like cxr3: one class always square, the others wider, with some spread
    rows = _rows(tmp_path, lambda t, rng: (64, 64) if t == 2 else (64, int(64 * (1.15 + 0.1 * t + rng.uniform(0, 0.05)))))
    plan = fold_plan(rows, 3, 0, 0.2)
    res = shape_control(rows, plan, CLASSES, n_boot=200)
    assert res["accuracy"] > 0.9 and res["images"] == len(rows)
    assert res["verdict"]["far_above_chance"] and not res["verdict"]["within_ci_of_chance"]
    assert "the image's format" in res["verdict"]["text"] and np.trace(res["confusion_matrix"]) > 80


def test_one_format_for_every_class_falls_to_chance(tmp_path):
    rows = _rows(tmp_path, lambda t, rng: (64, 80))
    res = shape_control(rows, fold_plan(rows, 3, 0, 0.2), CLASSES, n_boot=200)
    assert not res["verdict"]["far_above_chance"] and res["verdict"]["within_ci_of_chance"]


def test_an_unreadable_image_is_left_out_not_fatal(tmp_path):
    rows = _rows(tmp_path, lambda t, rng: (64, 64) if t == 2 else (64, 90))
    open(rows.loc[0, "image"], "wb").write(b"not an image")
    shapes = image_shapes(rows)
    assert np.isnan(shapes[0]).all() and (shapes[1:] > 0).all()
    res = shape_control(rows, fold_plan(rows, 3, 0, 0.2), CLASSES, shapes=shapes, n_boot=100)
    assert res["images"] == len(rows) - 1
