"""Typed results of a cross-validation summary, read by the CLI, the tables and the report.

:func:`cxrdx.evaluation.summary.summarise` returns a :class:`CVSummary`; ``.to_dict()`` is exactly
the JSON that ``evaluation.json`` holds (``best`` / ``image_level`` of each task), and
:meth:`CVSummary.from_dict` reads it back. Metric values come with their CI as :class:`MetricWithCI`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class MetricWithCI:
    value: float | None
    ci: list[float | None] | None = None
    """``[low, high]`` patient-bootstrap interval; None (or ``[None, None]``) when it was not computed / undefined."""

    @property
    def has_ci(self) -> bool:
        return bool(self.ci) and self.ci[0] is not None

    @classmethod
    def of(cls, entry: dict | None) -> "MetricWithCI":
        """From a ``{"value": ..., "ci": [low, high]}`` dict (None -> no value)."""
        return cls(None) if not entry else cls(entry.get("value"), entry.get("ci"))

    def text(self, digits: int = 3, missing: str = "-", signed: bool = False) -> str:
        """``0.812 [0.770, 0.850]``, ``0.812`` without a CI, ``missing`` without a value; ``signed``: ``+0.012``."""
        if self.value is None or self.value != self.value:
            return missing
        out = f"{self.value:{'+' if signed else ''}.{digits}f}"
        return out + f" [{self.ci[0]:.{digits}f}, {self.ci[1]:.{digits}f}]" if self.has_ci else out


def _at(tree: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree


@dataclass
class PooledMetrics:
    """:func:`cxrdx.stats.metrics_with_ci` output (``compute_metrics`` + ``ci``), read by attribute."""

    data: dict

    @classmethod
    def of(cls, metrics: "PooledMetrics | dict") -> "PooledMetrics":
        return metrics if isinstance(metrics, PooledMetrics) else cls(metrics)

    def metric(self, *path: str) -> MetricWithCI:
        """Value at ``path`` (e.g. ``"per_class", "covid", "sensitivity"``) with the CI at the same path."""
        ci = _at(self.data.get("ci", {}), path)
        return MetricWithCI(_at(self.data, path), ci if isinstance(ci, list) else None)

    @property
    def n(self) -> int:
        return self.data["n"]

    @property
    def classes(self) -> list[str]:
        return list(self.data["classes"])

    @property
    def accuracy(self) -> MetricWithCI:
        return self.metric("accuracy")

    def macro(self, key: str) -> MetricWithCI:
        return self.metric("macro", key)

    def per_class(self, name: str, key: str) -> MetricWithCI:
        return self.metric("per_class", name, key)

    @property
    def class_names(self) -> list[str]:
        return list(self.data["per_class"])

    def support(self, name: str) -> int:
        return self.data["per_class"][name]["support"]

    @property
    def covid_vs_rest(self) -> dict | None:
        return self.data.get("covid_vs_rest")

    @property
    def confusion_matrix(self) -> list[list[int]]:
        return self.data["confusion_matrix"]

    def to_dict(self) -> dict:
        return self.data


@dataclass(frozen=True)
class OperatingPoint:
    target_sensitivity: float
    sensitivity: MetricWithCI
    specificity: MetricWithCI
    data: dict = field(repr=False, default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict | None) -> "OperatingPoint | None":
        if not d:
            return None
        test, ci = d["test"], d.get("ci") or {}
        return cls(d["target_sensitivity"], MetricWithCI(test["sensitivity"], ci.get("sensitivity")),
                   MetricWithCI(test["specificity"], ci.get("specificity")), d)


_FULL_ONLY = ("roc", "operating_point", "per_source", "shortcut")
_CORE = ("model", "classes", "protocol", "pooled", "per_fold", "mean_val_macro_f1", "mean_val_log_loss", "seconds",
         "calibration", "temperature_scaling")


@dataclass
class CVSummary:
    """One model's cross-validated results (pooled out-of-fold metrics with CIs, folds, calibration, controls)."""

    model: dict
    """name, kind, backbone, head, variant, image_size, description."""
    classes: list[str]
    protocol: dict
    """folds, group_by, leaky, label, fold_seed, validation, n_images, n_patients, class_counts."""
    pooled: PooledMetrics
    per_fold: list[dict]
    mean_val_macro_f1: float | None
    mean_val_log_loss: float | None
    seconds: float | None
    calibration: dict
    temperature_scaling: bool = False
    full: bool = False
    """A full summary also has ROC curves, the operating point, per-source results and the shortcut control."""
    roc: dict | None = None
    operating_point_data: dict | None = None
    per_source: list[dict] | None = None
    shortcut: dict | None = None
    extra: dict = field(default_factory=dict)
    """Further keys (e.g. ``patients_in_train_and_test_per_fold`` of the image-level run), kept as they are."""

    @property
    def name(self) -> str:
        return self.model["name"]

    @property
    def operating_point(self) -> OperatingPoint | None:
        return OperatingPoint.from_dict(self.operating_point_data)

    @property
    def ece(self) -> float:
        return self.calibration["raw"]["ece"]

    @property
    def ece_scaled(self) -> float | None:
        scaled = self.calibration.get("temperature_scaled")
        return scaled["ece"] if scaled else None

    def to_dict(self) -> dict:
        out = {"model": self.model, "classes": list(self.classes), "protocol": self.protocol, "pooled": self.pooled.to_dict(),
               "per_fold": self.per_fold, "mean_val_macro_f1": self.mean_val_macro_f1,
               "mean_val_log_loss": self.mean_val_log_loss, "seconds": self.seconds, "calibration": self.calibration,
               "temperature_scaling": self.temperature_scaling}
        if self.full:
            out.update(roc=self.roc, operating_point=self.operating_point_data, per_source=self.per_source, shortcut=self.shortcut)
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "CVSummary":
        """Read back ``to_dict()`` (also the ``best`` block of older evaluation.json files / report data)."""
        full = any(k in d for k in _FULL_ONLY)
        return cls(
            model=d.get("model", {}), classes=list(d.get("classes", [])), protocol=d.get("protocol", {}),
            pooled=PooledMetrics(d["pooled"]), per_fold=d.get("per_fold", []), mean_val_macro_f1=d.get("mean_val_macro_f1"),
            mean_val_log_loss=d.get("mean_val_log_loss"), seconds=d.get("seconds"), calibration=d.get("calibration", {}),
            temperature_scaling=bool(d.get("temperature_scaling", False)), full=full, roc=d.get("roc"),
            operating_point_data=d.get("operating_point"), per_source=d.get("per_source"), shortcut=d.get("shortcut"),
            extra={k: v for k, v in d.items() if k not in _CORE and k not in _FULL_ONLY},
        )


def headline(metrics: dict | None) -> tuple[str, MetricWithCI]:
    """What a held-out source measures: "normal called normal" (or "covid called covid") for a single-label
    source, else the covid-vs-rest AUC (balanced accuracy without covid images)."""
    if not metrics:
        return "-", MetricWithCI(None)
    m = PooledMetrics(metrics)
    label = metrics.get("single_label")
    if label:
        return f"{label} called {label}", m.per_class(label, "sensitivity")
    if metrics["labels"].get("covid") and m.metric("covid_vs_rest", "auc").value is not None:
        return "covid-vs-rest AUC", m.metric("covid_vs_rest", "auc")
    return "balanced accuracy", m.metric("balanced_accuracy")
