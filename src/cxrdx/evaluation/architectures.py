"""The design's four-architecture comparison, from a ``cxrdx compare`` grid.

Rows: {raw-signal RNN, CNN only, hybrid CNN-RNN (LSTM / GRU), attention hybrid} x backbones (+ the
ensembles the grid made). In every (architecture, backbone) cell the candidate with the best mean
inner-validation macro-F1 is kept (:func:`cxrdx.evaluation.cv.rank_key`: test folds never choose), and
its out-of-fold predictions are scored in full: accuracy, per-class sensitivity / specificity /
precision / F1 / AUC and macro AUC, each with a patient-bootstrap CI. Within each architecture the rows
are ordered by validation too. :func:`markdown` renders it from ``evaluation.json`` (docs/evaluation.md).
"""

from __future__ import annotations

from ..config import EvalConfig
from ..stats.bootstrap import metrics_with_ci
from .cv import CVRun, rank_key
from .summary import oof_predictions

ARCHITECTURES = (
    ("raw-signal RNN", "an RNN on the raw pixels (no CNN)"),
    ("CNN only", "the CNN's pooled features and a linear / SVM classifier (pool head, logreg, svm)"),
    ("hybrid CNN-RNN", "the CNN's map read as a sequence by an LSTM / GRU (uni- or bidirectional)"),
    ("attention hybrid", "the CNN's map read by a bidirectional GRU with attention pooling"),
    ("ensemble", "mean probabilities of models chosen by validation"),
)
METRICS = ("sensitivity", "specificity", "precision", "f1", "auc")
RNN_HEADS = ("lstm", "gru", "bilstm", "bigru")


def architecture_of(model: dict, raw_backbones: set[str]) -> str:
    """Architecture group of a candidate (``summary.model`` / comparison-row fields)."""
    if model.get("kind") == "ensemble":
        return "ensemble"
    if model.get("backbone") in raw_backbones:
        return "raw-signal RNN" if model.get("head") not in (None, "pool") else "raw pixels, no RNN"
    if model.get("head") == "attention":
        return "attention hybrid"
    if model.get("head") in RNN_HEADS:
        return "hybrid CNN-RNN"
    return "CNN only"


def _raw_backbones() -> set[str]:
    from ..models.backbones import BACKBONES

    return {n for n in BACKBONES.names() if not BACKBONES.get(n).has_weights}


def architecture_section(runs: dict[str, CVRun], ev: EvalConfig) -> dict:
    """Best-by-validation candidate per (architecture, backbone), with full patient-bootstrap metrics."""
    raw = _raw_backbones()
    chosen: dict[tuple[str, str], CVRun] = {}
    for run in sorted(runs.values(), key=rank_key):
        c = run.candidate
        model = {"kind": c.kind, "backbone": c.backbone, "head": c.head}
        arch = architecture_of(model, raw)
        cell = (arch, c.name if arch == "ensemble" else c.backbone + (f"+{c.variant}" if c.variant != "plain" else ""))
        chosen.setdefault(cell, run)
    order = {name: i for i, (name, _) in enumerate(ARCHITECTURES)}
    rows = []
    for (arch, cell), run in sorted(chosen.items(), key=lambda kv: (order.get(kv[0][0], len(order)), rank_key(kv[1]))):
        probs, _, _, _ = oof_predictions(run, temperature=ev.temperature)
        y = run.manifest["target"].to_numpy()
        m = metrics_with_ci(y, probs, run.manifest["patient_id"].to_numpy(), run.classes, n_boot=ev.bootstrap,
                            level=ev.ci_level, seed=ev.seed)
        members = run.folds[0].info.get("members") or [] if arch == "ensemble" else []
        backbones = sorted({runs[m].candidate.backbone for m in members if m in runs}) or [run.candidate.backbone]
        rows.append({
            "architecture": arch, "backbone": " + ".join(backbones), "cell": cell, "model": run.candidate.name,
            "head": run.candidate.head or run.candidate.kind, "image_size": run.candidate.image_size,
            "val_macro_f1": run.mean_val_f1, "seconds": round(run.seconds, 1),
            "accuracy": [m["accuracy"], *m["ci"]["accuracy"]],
            "macro_auc": [m["macro"]["auc"], *(m["ci"]["macro"]["auc"] or [None, None])],
            "per_class": {cls: {k: [m["per_class"][cls].get(k), *(m["ci"]["per_class"][cls].get(k) or [None, None])]
                                for k in METRICS} for cls in run.classes},
        })
    return {"groups": [{"name": n, "description": d} for n, d in ARCHITECTURES], "classes": list(next(iter(runs.values())).classes),
            "selected_by": "mean inner-validation macro-F1 per (architecture, backbone) cell; test folds never used",
            "rows": rows}


LABELS = {"sensitivity": "sens.", "specificity": "spec.", "precision": "prec.", "f1": "F1", "auc": "AUC"}


def short(name: str) -> str:
    """``tf_efficientnet_lite0_ms+attention`` -> ``lite0_ms+attention`` (table cells)."""
    return name.replace("tf_efficientnet_", "")


def _cell(triple: list | None) -> str:
    if not triple or triple[0] is None or triple[0] != triple[0]:
        return "-"
    v, lo, hi = (triple + [None, None])[:3]
    return f"{v:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else "")


def markdown(section: dict, title: str = "") -> str:
    """The section as a Markdown table (one column per metric, per class: ``sens. / spec. / prec. / F1 / AUC``)."""
    classes = section["classes"]
    cols = ["architecture", "backbone (px)", "model (val F1)", "accuracy [95% CI]"]
    cols += [f"{c} {LABELS[k]}" for c in classes for k in METRICS] + ["macro AUC"]
    lines = ([f"**{title}**", ""] if title else []) + ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in section["rows"]:
        what = short(r["model"]) if r["architecture"] == "ensemble" else r["head"]
        where = "several" if r["architecture"] == "ensemble" else f"{short(r['backbone'])} ({r['image_size']})"
        cells = [r["architecture"], where, f"{what} ({r['val_macro_f1']:.3f})",
                 _cell(r["accuracy"])]
        cells += [_cell(r["per_class"][c][k]) for c in classes for k in METRICS] + [_cell(r["macro_auc"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """``python -m cxrdx.evaluation.architectures RUN_DIR...``: the Markdown tables of compare runs."""
    import json
    import sys
    from pathlib import Path

    for run_dir in argv if argv is not None else sys.argv[1:]:
        data = json.loads((Path(run_dir) / "evaluation.json").read_text())
        for task, res in data["tasks"].items():
            if res.get("architectures"):
                bench = f", benchmark {data['data']['benchmark']}" if data["data"].get("benchmark") else ""
                print(markdown(res["architectures"], f"{task}{bench}: {res['best']['protocol']['n_images']} images, "
                                                     f"{res['best']['protocol']['folds']}-fold patient-level CV ({run_dir})"))
                print()


if __name__ == "__main__":
    main()
