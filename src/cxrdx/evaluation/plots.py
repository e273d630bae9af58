"""Report figures (matplotlib, no display needed) as PNG bytes."""

from __future__ import annotations

import base64
import io

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay


def to_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def confusion_png(cm: list[list[int]], classes: list[str], title: str = "Confusion matrix") -> bytes:
    fig = Figure(figsize=(4.2, 3.6))
    ax = fig.add_subplot()
    ConfusionMatrixDisplay(np.asarray(cm), display_labels=classes).plot(ax=ax, cmap="Blues", colorbar=False, values_format="d")
    ax.set_title(title, fontsize=10)
    return to_png(fig)


def _unit_square_png(fig: Figure, ax, xlabel: str, ylabel: str, legend_loc: str, title: str) -> bytes:
    """Labels, [0, 1] axes, legend and title of a probability-vs-probability plot, as PNG bytes."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(0, 1), ax.set_ylim(0, 1.01)
    ax.legend(loc=legend_loc, fontsize=8)
    ax.set_title(title, fontsize=10)
    return to_png(fig)


def roc_png(curves: dict[str, dict], aucs: dict[str, float | None], title: str = "ROC curves (one-vs-rest)") -> bytes:
    fig = Figure(figsize=(4.4, 4.0))
    ax = fig.add_subplot()
    for name, c in curves.items():
        auc = aucs.get(name)
        ax.plot(c["fpr"], c["tpr"], label=f"{name}" + (f" (AUC {auc:.3f})" if auc is not None else ""))
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    return _unit_square_png(fig, ax, "1 - specificity (false positive rate)", "sensitivity (true positive rate)", "lower right", title)


def reliability_png(calibrations: dict[str, dict], title: str = "Reliability diagram (top-label)") -> bytes:
    """One line per calibration (raw, temperature-scaled); marker area ~ images in the bin."""
    fig = Figure(figsize=(4.4, 4.0))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8, label="perfect calibration")
    for name, rel in calibrations.items():
        conf = [b["confidence"] for b in rel["bins"]]
        acc = [b["accuracy"] for b in rel["bins"]]
        size = [max(8, 400 * b["count"] / max(1, sum(x["count"] for x in rel["bins"]))) for b in rel["bins"]]
        line = ax.plot(conf, acc, marker="", label=f"{name} (ECE {rel['ece']:.3f})")[0]
        ax.scatter(conf, acc, s=size, color=line.get_color(), alpha=0.7)
    return _unit_square_png(fig, ax, "confidence (predicted class probability)", "accuracy in bin", "upper left", title)


def benchmark_png(rows: list[dict]) -> bytes:
    """Published (image-level) vs ours patient-level (with CI) vs ours image-level (leaky)."""
    fig = Figure(figsize=(5.6, 3.4))
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    w = 0.26
    pub = [r["published_accuracy"] for r in rows]
    pat = [r["patient_accuracy"] for r in rows]
    err = [[r["patient_accuracy"] - (r["patient_accuracy_ci"] or [r["patient_accuracy"]] * 2)[0] for r in rows],
           [(r["patient_accuracy_ci"] or [r["patient_accuracy"]] * 2)[1] - r["patient_accuracy"] for r in rows]]
    leak = [r["image_level_accuracy"] if r["image_level_accuracy"] is not None else np.nan for r in rows]
    ax.bar(x - w, pub, w, label="published (image-level)", color="#bbbbbb")
    ax.bar(x, pat, w, yerr=err, capsize=3, label="cxrdx patient-level (95% CI)", color="#2b6cb0")
    ax.bar(x + w, leak, w, label="cxrdx image-level (leaky)", color="#e9a23b", hatch="//")
    ax.set_xticks(x, [r["task"] for r in rows])
    ax.set_ylim(min([0.5] + [v for v in pat + pub if v == v]) - 0.05, 1.0)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title("DarkCovidNet protocol", fontsize=10)
    return to_png(fig)
