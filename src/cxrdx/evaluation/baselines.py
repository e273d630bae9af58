"""scikit-learn baselines for ``cxrdx cv`` / ``compare``: classifiers on the pooled (mean over the grid) CNN features.

Each baseline is a :class:`Baseline` in :data:`BASELINES`: a description for tables and help texts, the
regularisation strengths tried (chosen on each fold's validation part, never on the test fold) and a
factory for the fitted pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from ..registry import Registry


@dataclass(frozen=True)
class Baseline:
    name: str
    description: str
    c_grid: tuple[float, ...]
    """Inverse regularisation strengths tried; the best on the fold's validation part is kept."""
    make: Callable[[float, int], Pipeline]
    """``make(C, seed)`` -> an unfitted scikit-learn pipeline with ``predict_proba``."""


BASELINES: Registry[Baseline] = Registry("baselines", describe=lambda b: b.description)


def _svm(c: float, seed: int) -> Pipeline:
    svc = SVC(C=c, kernel="rbf", class_weight="balanced", random_state=seed)
    return make_pipeline(StandardScaler(), CalibratedClassifierCV(svc, ensemble=False))  # Platt-scaled probabilities


def _logreg(c: float, seed: int) -> Pipeline:
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000, class_weight="balanced"))


LOGREG_C_GRID = (0.01, 0.1, 1.0)

BASELINES.register("svm", Baseline("svm", "SVM (RBF, scikit-learn) on pooled CNN features", (1.0,), _svm))
BASELINES.register("logreg", Baseline("logreg", "logistic regression (scikit-learn) on pooled CNN features", LOGREG_C_GRID, _logreg))
