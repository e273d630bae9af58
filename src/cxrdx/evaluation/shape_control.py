"""Shape-only shortcut control: how well does an image's shape alone (no pixel values) predict its label?

Archives store films in their own formats: in cxr3 every NIH (DarkCovidNet) normal and pneumonia film is
square, OpenIST's normals are about 1.2 : 1 and most covid images are neither. A model that squashes every image
to a square input sees that format as distorted anatomy, and can learn the archive from it. This control measures
the confound in the data itself: a small gradient-boosted tree model on ``log(width / height)``, ``log(height)``
and ``log(width)`` of the decoded image, trained on each fold's training + validation rows and scored on its test
rows (the same patient-grouped folds as the models), pooled, with a patient-bootstrap CI, beside chance. It needs
no features and no GPU: one decode per image.

``data.fit=square`` (:mod:`cxrdx.features.roi`) is the preprocessing answer: the region is made square around its
centre before the resize, so the shape no longer reaches the model.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import confusion_matrix

from ..data.io import ImageReadError, ReadLimits, read_image
from ..stats.bootstrap import patient_bootstrap
from .confounding import chance_levels, shortcut_verdict

SETTING = "Trained and tested on the image's shape alone (aspect ratio and size, no pixel values),"
CUES = "the image's format, i.e. which archive it comes from"
MODEL = "gradient-boosted trees on log aspect ratio, log height, log width"


def image_shapes(manifest: pd.DataFrame, limits: ReadLimits | None = None) -> np.ndarray:
    """``[N, 2]`` (height, width) of each row's decoded image; NaN where it cannot be read."""
    out = np.full((len(manifest), 2), np.nan)
    for i, path in enumerate(manifest["image"]):
        try:
            out[i] = read_image(path, limits=limits).shape[:2]
        except ImageReadError:
            continue
    return out


def shape_features(shapes: np.ndarray) -> np.ndarray:
    """``[N, 3]``: log aspect ratio (width / height), log height, log width."""
    h, w = shapes[:, 0], shapes[:, 1]
    return np.c_[np.log(w / h), np.log(h), np.log(w)]


def shape_control(rows: pd.DataFrame, plan, classes, *, shapes: np.ndarray | None = None, limits: ReadLimits | None = None,
                  n_boot: int = 1000, seed: int = 0) -> dict:
    """The control over ``plan``'s folds (``(train, val, test)`` index arrays of ``rows``); see the module docstring.

    Returns the same fields as the other trained shortcut controls of ``cxrdx compare``: ``model``, ``control``,
    ``accuracy``, ``accuracy_ci``, ``confusion_matrix``, ``chance``, ``verdict``."""
    shapes = image_shapes(rows, limits) if shapes is None else np.asarray(shapes, dtype=float)
    x = shape_features(shapes)
    y = rows["target"].to_numpy().astype(int)
    n_cls = len(classes)
    pred = np.full(len(rows), -1)
    for train, val, test in plan:
        fit = np.concatenate([train, val])
        fit = fit[np.isfinite(x[fit]).all(1)]
        model = HistGradientBoostingClassifier(max_depth=3, max_iter=100, random_state=seed).fit(x[fit], y[fit])
        ok = test[np.isfinite(x[test]).all(1)]
        pred[ok] = model.classes_[model.predict_proba(x[ok]).argmax(1)]
    scored = pred >= 0
    y_s, p_s = y[scored], pred[scored]
    onehot = np.eye(n_cls)[p_s]
    acc = float(np.mean(p_s == y_s))
    ci = patient_bootstrap(y_s, onehot, rows["patient_id"].to_numpy()[scored],
                           lambda yy, pp: {"accuracy": float(np.mean(pp.argmax(1) == yy))}, n_boot=n_boot, seed=seed)
    chance = chance_levels(y, n_cls)
    per_fold = []
    for k, (_, _, test) in enumerate(plan):
        ok = test[pred[test] >= 0]
        per_fold.append({"fold": k, "images": int(len(ok)),
                         "accuracy": float(np.mean(pred[ok] == y[ok])) if len(ok) else None})
    return {"model": MODEL, "control": "shape_only", "accuracy": acc, "accuracy_ci": ci["accuracy"],
            "images": int(scored.sum()), "confusion_matrix": confusion_matrix(y_s, p_s, labels=list(range(n_cls))).tolist(),
            "per_fold": per_fold, "chance": chance,
            "verdict": shortcut_verdict(acc, ci["accuracy"], chance["majority"], setting=SETTING, cues=CUES)}


def loso_shape_control(rows: pd.DataFrame, plan, sources: list[str], classes, **kwargs) -> dict:
    """The control under leave-one-source-out folds (``plan`` holds out ``sources[k]`` in fold ``k``): what the
    image's shape alone gives on each unseen source, to read beside the models' unseen accuracy."""
    res = shape_control(rows, plan, classes, **kwargs)
    per_source = [{"source": s, "images": f["images"], "accuracy": f["accuracy"]} for s, f in zip(sources, res["per_fold"])]
    return {"model": res["model"], "accuracy": res["accuracy"], "accuracy_ci": res["accuracy_ci"], "images": res["images"],
            "chance": res["chance"], "per_source": per_source}
