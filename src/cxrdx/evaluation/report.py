"""``cxrdx report RUN_DIR``: one self-contained HTML file (plots inlined as base64) and the same data as JSON.

Reads what the run folder holds: ``evaluation.json`` (``cxrdx cv`` / ``compare``),
or ``metrics.json`` + ``test_predictions.csv`` (``cxrdx train`` / ``demo``, whose
CIs are computed here), and ``explain/scores.json`` + ``explain/gallery/*.png``
(``cxrdx explain --score``) when present. A section whose data is absent says
which command produces it.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from jinja2 import Environment, FileSystemLoader, select_autoescape

from ..stats.bootstrap import metrics_with_ci
from .calibration import reliability
from .plots import benchmark_png, confusion_png, data_uri, reliability_png, roc_png
from .results import CVSummary, MetricWithCI, headline
from .summary import roc_curves

REPORT_HTML = "report.html"
REPORT_JSON = "report.json"
SECTIONS = ("architectures", "unseen-hospitals", "metrics", "confusion", "roc", "reliability", "operating-point", "comparison", "benchmark", "confounding", "explain")


class ReportError(FileNotFoundError):
    """The folder holds nothing a report can be made from."""


def _from_training_run(run_dir: Path, n_boot: int) -> dict:
    """A ``cxrdx train`` / ``demo`` folder as one task, with CIs computed from its test predictions."""
    metrics_file = json.loads((run_dir / "metrics.json").read_text())
    preds = pd.read_csv(run_dir / "test_predictions.csv", dtype={"patient_id": str})
    classes = list(metrics_file.get("model", {}).get("classes") or [c[2:] for c in preds.columns if c.startswith("p_")])
    probs = preds[[f"p_{c}" for c in classes]].to_numpy(dtype=float)
    y = np.array([classes.index(lab) for lab in preds["label"]])
    pooled = metrics_with_ci(y, probs, preds["patient_id"].to_numpy(), classes, n_boot=n_boot)
    model = metrics_file.get("model", {})
    sources = _sources_of(run_dir, preds)
    per_source = []
    if sources is not None:
        from .confounding import per_source as per_source_fn

        frame = preds.assign(source=sources, target=y)
        per_source = per_source_fn(frame, probs, tuple(classes))
    split = metrics_file.get("split", {})
    best = {
        "model": {"name": f"{model.get('backbone', '?')}+{model.get('head', '?')}", "description": "trained by cxrdx train/demo"},
        "classes": classes,
        "protocol": {"label": metrics_file.get("protocol", "single held-out split"), "folds": 1, "leaky": False,
                     "n_images": int(len(y)), "n_patients": int(preds["patient_id"].nunique()), "split": split},
        "pooled": pooled,
        "roc": roc_curves(y, probs, classes),
        "calibration": {"raw": reliability(y, probs)},
        "operating_point": None,
        "per_source": per_source,
        "shortcut": {},
        "per_fold": [],
    }
    task = "binary" if len(classes) == 2 else "3class"
    return {"kind": "training run", "tasks": {task: {"task": task, "classes": classes, "rows": [], "best": best}},
            "benchmark": None, "seconds": metrics_file.get("timings", {}).get("total_s")}


def _sources_of(run_dir: Path, preds: pd.DataFrame):
    """``source`` of each prediction row, looked up in the dataset's metadata.csv (None if unknown)."""
    try:
        cfg = json.loads((run_dir / "config.json").read_text())
        from ..config import Config

        root = Config.from_dict(cfg).data.resolved_root()
        meta = pd.read_csv(root / "metadata.csv", usecols=["image", "source"])
    except (OSError, ValueError, KeyError):
        return None
    lookup = dict(zip(meta["image"], meta["source"]))
    return [lookup.get(p, "unknown") for p in preds["image"]]


def _explain_section(run_dir: Path) -> dict | None:
    folder = run_dir / "explain"
    scores_file = folder / "scores.json"
    gallery = sorted((folder / "gallery").glob("*.png")) if (folder / "gallery").is_dir() else []
    if not scores_file.is_file() and not gallery:
        return None
    try:
        scores = json.loads(scores_file.read_text()) if scores_file.is_file() else {}
    except ValueError:
        scores = {}
    rows = []
    for group, summary in [("overall", scores.get("overall"))] + list((scores.get("per_class") or {}).items()):
        if not isinstance(summary, dict):
            continue
        for metric, stats in summary.items():
            if isinstance(stats, dict) and "mean" in stats:
                rows.append({"group": group, "metric": metric, "mean": stats.get("mean"), "ci": stats.get("ci") or [stats.get("low"), stats.get("high")],
                             "chance": stats.get("chance"), "n": summary.get("n_images")})
    images = [{"name": p.stem, "src": "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode("ascii")} for p in gallery]
    return {"method": scores.get("method"), "flagged": scores.get("flagged"), "flag_reason": scores.get("flag_reason"),
            "n_images": scores.get("n_images"), "rows": rows, "gallery": images}


def load_report_data(run_dir: str | Path, n_boot: int = 1000) -> dict:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"run folder {run_dir} does not exist")
    if (run_dir / "evaluation.json").is_file():
        data = json.loads((run_dir / "evaluation.json").read_text())
        data["kind"] = f"cxrdx {data.get('command', 'cv')}"
    elif (run_dir / "metrics.json").is_file() and (run_dir / "test_predictions.csv").is_file():
        data = _from_training_run(run_dir, n_boot)
    else:
        raise ReportError(f"{run_dir} holds neither evaluation.json (cxrdx cv / compare) nor metrics.json + "
                          "test_predictions.csv (cxrdx train / demo)")
    data["run_dir"] = str(run_dir)
    data["generated"] = time.strftime("%Y-%m-%d %H:%M:%S")
    data["explain"] = _explain_section(run_dir)
    data["stability"] = _stability_section(run_dir)
    return data


def _stability_section(run_dir: Path) -> dict | None:
    """``RUN/stability.json`` (``cxrdx evaluate RUN --stability``), or None."""
    from .evaluate import STABILITY_FILE

    try:
        return json.loads((run_dir / STABILITY_FILE).read_text())
    except (OSError, ValueError):
        return None


def _figures(data: dict) -> dict:
    figs: dict = {"tasks": {}}
    for task, res in data["tasks"].items():
        best = CVSummary.from_dict(res["best"])
        pooled = best.pooled
        cal = {"raw": best.calibration["raw"]}
        if "temperature_scaled" in best.calibration:
            cal["temperature-scaled"] = best.calibration["temperature_scaled"]
        aucs = {c: pooled.per_class(c, "auc").value for c in pooled.class_names}
        f = {
            "confusion": data_uri(confusion_png(pooled.confusion_matrix, best.classes, f"{task}: confusion (rows true)")),
            "roc": data_uri(roc_png(best.roc or {}, aucs, f"{task}: ROC, one-vs-rest")),
            "reliability": data_uri(reliability_png(cal, f"{task}: reliability diagram")),
        }
        if res.get("image_level"):
            leaky = CVSummary.from_dict(res["image_level"]).pooled
            f["confusion_leaky"] = data_uri(confusion_png(leaky.confusion_matrix, best.classes, f"{task}: image-level (LEAKY)"))
        figs["tasks"][task] = f
    if data.get("benchmark") and data["benchmark"].get("rows"):
        figs["benchmark"] = data_uri(benchmark_png(data["benchmark"]["rows"]))
    return figs


def _missing_notes(data: dict) -> list[str]:
    run = data["run_dir"]
    notes = []
    if not any(len(r.get("rows", [])) > 1 for r in data["tasks"].values()):
        notes.append(f"comparison: not in this run; run `cxrdx compare --out {run}-compare` for the ranked table")
    if not data.get("benchmark"):
        notes.append("benchmark: not in this run; run `cxrdx compare --benchmark darkcovidnet` (or `cxrdx cv --benchmark darkcovidnet`)")
    if not any(r["best"].get("shortcut") for r in data["tasks"].values()):
        notes.append("confounding: the lungs-blacked-out control is not in this run; `cxrdx cv` / `compare` run it unless given --no-blackout")
    if not any(r.get("loso") for r in data["tasks"].values()):
        notes.append("unseen hospitals: not in this run; run `cxrdx compare --by source` (or `cxrdx cv --by source`) "
                     "for leave-one-source-out numbers beside the random split")
    if not data.get("explain"):
        notes.append(f"explain: run `cxrdx explain --score --run {run}` to add where the model looks")
    if not data.get("stability") and data.get("kind") == "training run":  # cv / compare folders hold no model
        notes.append(f"stability: run `cxrdx evaluate {run} --stability` to add whether the class holds after a JPEG "
                     "round trip and one grey level of noise")
    return notes


def render_html(data: dict, figures: dict, notes: list[str]) -> str:
    env = Environment(loader=FileSystemLoader(str(Path(__file__).parent / "templates")), autoescape=select_autoescape(["html", "j2"]))
    env.filters["fmt"] = lambda v, ci=None: MetricWithCI(v, ci).text()
    env.filters["fmtu"] = lambda v, ci=None: MetricWithCI(v, ci if isinstance(ci, list) else None).text(missing="undefined")
    env.globals["headline"] = headline
    return env.get_template("report.html.j2").render(data=data, figures=figures, notes=notes, sections=SECTIONS)


def write_report(run_dir: str | Path, out: str | Path | None = None, n_boot: int = 1000) -> tuple[Path, Path, list[str]]:
    """Write ``report.html`` and ``report.json`` (default into ``run_dir``); return their paths and the notes."""
    data = load_report_data(run_dir, n_boot=n_boot)
    notes = _missing_notes(data)
    html_path = Path(out) if out else Path(run_dir) / REPORT_HTML
    json_path = html_path.with_suffix(".json")
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(render_html(data, _figures(data), notes), encoding="utf-8")
    json_path.write_text(json.dumps({**data, "notes": notes}, indent=2))
    return html_path, json_path, notes
