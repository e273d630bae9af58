"""How far an image's features lie from one modality's images, and where "too far" begins.

Two distances, each fitted on one modality's pooled backbone features:

* :class:`NeighbourDistance` (``knn``, the default): cosine distance to the ``k``-th nearest reference
  image, on power-normalised features (signed square root, then unit length). It makes no assumption
  about the shape of the distribution, so a modality pooled from several archives (six X-ray sources)
  is not forced into one Gaussian (Sun et al. 2022, "Out-of-distribution detection with deep nearest
  neighbors").
* :class:`GaussianDistance` (``mahalanobis``): squared Mahalanobis distance to one Gaussian with a
  Ledoit-Wolf covariance (Lee et al. 2018). Kept for guards fitted before the neighbour distance.

:func:`crossfit_threshold` sets a threshold from *out-of-fold* distances: the images are split into
patient-grouped folds, each fold is scored by a distance fitted on the other folds, and the threshold is
the ``1 - rate`` quantile of those scores **per source**, the largest over sources with enough images.
So every image of the modality (not only a validation split) calibrates the threshold, no patient is
scored by a reference that holds its own images, and a heterogeneous source is not drowned by a large
homogeneous one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_NEIGHBOURS = 10
MIN_SOURCE_IMAGES = 20
"""A source with fewer images than this has no quantile of its own (it still counts in the pooled one)."""


def power_normalised(feats: np.ndarray) -> np.ndarray:
    """Signed square root, then unit L2 norm per row (float32)."""
    x = np.asarray(feats, np.float64)
    x = np.sign(x) * np.sqrt(np.abs(x))
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


@dataclass
class NeighbourDistance:
    reference: np.ndarray
    """``[N, C]`` power-normalised reference features."""
    neighbours: int = DEFAULT_NEIGHBOURS

    method = "knn-cosine"

    @classmethod
    def fit(cls, feats: np.ndarray, neighbours: int = DEFAULT_NEIGHBOURS) -> "NeighbourDistance":
        return cls(power_normalised(feats), neighbours)

    def __call__(self, feats: np.ndarray) -> np.ndarray:
        x = power_normalised(np.atleast_2d(feats))
        k = min(self.neighbours, len(self.reference))
        out = np.empty(len(x), np.float64)
        for start in range(0, len(x), 512):  # bounded memory: 512 x N similarities at a time
            sims = x[start:start + 512] @ self.reference.T
            out[start:start + 512] = 1.0 - np.partition(sims, -k, axis=1)[:, -k]
        return out

    def tensors(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}.reference": self.reference}

    @classmethod
    def from_tensors(cls, tensors: dict, prefix: str, meta: dict) -> "NeighbourDistance":
        return cls(np.asarray(tensors[f"{prefix}.reference"], np.float32), int(meta.get("neighbours", DEFAULT_NEIGHBOURS)))


@dataclass
class GaussianDistance:
    mean: np.ndarray
    precision: np.ndarray

    method = "mahalanobis-ledoit-wolf"

    @classmethod
    def fit(cls, feats: np.ndarray, neighbours: int = DEFAULT_NEIGHBOURS) -> "GaussianDistance":
        from sklearn.covariance import LedoitWolf

        lw = LedoitWolf().fit(np.asarray(feats, np.float64))
        return cls(lw.location_, lw.precision_)

    def __call__(self, feats: np.ndarray) -> np.ndarray:
        diff = np.atleast_2d(np.asarray(feats, np.float64)) - self.mean
        return np.einsum("ij,jk,ik->i", diff, self.precision, diff)

    def tensors(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}.mean": self.mean.astype(np.float64), f"{prefix}.precision": self.precision.astype(np.float64)}

    @classmethod
    def from_tensors(cls, tensors: dict, prefix: str, meta: dict) -> "GaussianDistance":
        return cls(tensors[f"{prefix}.mean"], tensors[f"{prefix}.precision"])


DISTANCES = {"knn": NeighbourDistance, "mahalanobis": GaussianDistance}
"""``--method`` name -> distance class."""
_BY_SAVED_NAME = {cls.method: cls for cls in DISTANCES.values()}


def distance_class(method: str):
    """The distance class of a ``--method`` name or of a saved guard's ``method`` field."""
    cls = DISTANCES.get(method) or _BY_SAVED_NAME.get(method)
    if cls is None:
        raise ValueError(f"unknown guard method {method!r} (known: {', '.join(DISTANCES)})")
    return cls


def out_of_fold_distances(feats: np.ndarray, groups: np.ndarray | None, make, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Each row's distance under ``make(other_rows)``, folds grouped by ``groups`` (patients) when given."""
    from sklearn.model_selection import GroupKFold, KFold

    n = len(feats)
    folds = max(2, min(folds, n if groups is None else len(np.unique(groups))))
    if groups is None:
        splits = KFold(folds, shuffle=True, random_state=seed).split(feats)
    else:
        splits = GroupKFold(folds).split(feats, groups=groups)
    out = np.empty(n, np.float64)
    for fit_rows, score_rows in splits:
        out[score_rows] = make(feats[fit_rows])(feats[score_rows])
    return out


def crossfit_threshold(scores: np.ndarray, sources: np.ndarray | None, rate: float,
                       min_source_images: int = MIN_SOURCE_IMAGES) -> tuple[float, dict[str, float]]:
    """``(threshold, per-source quantiles)``: the largest ``1 - rate`` quantile over the pooled scores and each
    source with at least ``min_source_images`` rows."""
    quantile = lambda s: float(np.quantile(s, 1.0 - rate, method="higher"))  # noqa: E731
    per_source: dict[str, float] = {}
    if sources is not None:
        sources = np.asarray(sources).astype(str)
        for src in np.unique(sources):
            picked = scores[sources == src]
            if len(picked) >= min_source_images:
                per_source[str(src)] = quantile(picked)
    return max([quantile(scores), *per_source.values()]), per_source
