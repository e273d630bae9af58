"""Per-row training weights: class balance, and (``train.sampling = source_balanced``) source balance within each class.

Issue 12: a classifier trained on cxr3 learns *which archive* an image comes from (every openist and jsrt image
is normal, most darkcovidnet normals are NIH films) instead of the disease. ``source_balanced`` weights the
training rows so that, within each class, every source contributes the same total weight.

Definition (``N`` training rows, ``K`` classes present, ``n_c`` rows of class ``c``, ``T_c`` the total weight of class
``c``: ``N / K`` with ``train.class_weighted``, else ``n_c``). Within class ``c`` the rows are split by ``source``:
``G_c`` sources with ``n_{c,s}`` rows each, and ``e_{c,s} = max(n_{c,s}, m)`` with ``m = train.source_min_images``:

* ``none``:            ``w_i = T_c / n_c``  (``N / (K n_c)``: sklearn's "balanced" class weights; or 1)
* ``source_balanced``: ``w_i = T_c * (1 / e_{c,s}) / sum_s'(n_{c,s'} / e_{c,s'})``

So every class still totals ``T_c``; within it every source with at least ``m`` rows has the same total weight,
and a smaller source ``n / m`` of that (3 images of one archive must not carry a third of a class). Weights always
sum to ``N`` (mean 1). Head training uses them as per-row loss weights (the loss of a batch is
``sum(w_i * CE_i) / sum(w_i)``, as PyTorch's class-weighted cross-entropy); fine-tuning draws its batches with probability proportional to ``w_i``
(with replacement, seeded) and uses a plain cross-entropy; the scikit-learn baselines get them as ``sample_weight``.

Rows without a ``source`` column: ``source_balanced`` falls back to ``none`` with a :class:`SourceWeightWarning`:
a manifest of one archive has nothing to balance.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from ..registry import Registry

SAMPLINGS: Registry[str] = Registry("samplings", describe=lambda text: text)
SAMPLINGS.register("none", "every training row counts once (times its class weight with train.class_weighted)")
SAMPLINGS.register("source_balanced", "within each class every source (manifest 'source' column) has the same total "
                                      "weight; classes still balanced with train.class_weighted")


class SourceWeightWarning(UserWarning):
    """``source_balanced`` asked for, but the rows carry no ``source`` column."""


def row_weights(targets: np.ndarray, sources: np.ndarray | None, *, sampling: str = "none", class_weighted: bool = True,
                min_group: int = 1) -> np.ndarray:
    """float64 weight per row (see the module docstring); ``sources`` None -> no source balance."""
    SAMPLINGS.check(sampling)
    y = np.asarray(targets)
    n = len(y)
    if n == 0:
        return np.zeros(0)
    classes, n_c = np.unique(y, return_counts=True)
    count_of = dict(zip(classes.tolist(), n_c.tolist()))
    per_class = np.array([count_of[v] for v in y.tolist()], dtype=np.float64)
    class_total = (n / len(classes)) if class_weighted else per_class  # the total weight of each row's class
    if sampling == "none" or sources is None:
        return np.broadcast_to(class_total, (n,)) / per_class
    sources = np.asarray(sources).astype(str)
    w = np.empty(n, dtype=np.float64)
    for c, count in zip(classes, n_c):
        in_class = y == c
        names, inverse, counts = np.unique(sources[in_class], return_inverse=True, return_counts=True)
        per_row = 1.0 / np.maximum(counts, max(1, min_group))  # per-row weight of each source before scaling
        total = (n / len(classes)) if class_weighted else float(count)
        w[in_class] = total * per_row[inverse] / float((counts * per_row).sum())
    return w


def manifest_weights(rows: pd.DataFrame, sampling: str, *, class_weighted: bool = True, min_group: int = 1) -> np.ndarray:
    """:func:`row_weights` of a manifest's ``target`` (and ``source``) columns; warns and falls back to
    ``none`` when ``source_balanced`` meets rows without a ``source`` column."""
    sources = None
    if sampling != "none":
        if "source" in rows.columns:
            sources = rows["source"].fillna("unknown").astype(str).to_numpy()
        else:
            warnings.warn("train.sampling=source_balanced: the manifest has no 'source' column; training rows are "
                          "weighted as with sampling=none", SourceWeightWarning, stacklevel=2)
    return row_weights(rows["target"].to_numpy(), sources, sampling=sampling, class_weighted=class_weighted, min_group=min_group)


def group_totals(targets: np.ndarray, sources: np.ndarray, weights: np.ndarray) -> pd.DataFrame:
    """Total weight and row count per (class, source): what the weights do, for logs and tests."""
    df = pd.DataFrame({"target": np.asarray(targets), "source": np.asarray(sources).astype(str), "w": weights})
    return df.groupby(["target", "source"]).agg(rows=("w", "size"), weight=("w", "sum")).reset_index()
