"""``cxrdx cv`` / ``cxrdx compare``: a grid of backbones x heads (+ scikit-learn baselines)
through the same patient-grouped folds, ranked by inner-validation macro-F1.

Ranking by validation (never by the test folds) keeps the choice of the
"best" model honest; its test numbers are then shown with 95% patient CIs.
Backbones whose weights are not available offline are listed as skipped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import Config
from ..models.weights import WeightsUnavailableError
from .benchmark import get_benchmark, task_classes, task_manifest
from .confounding import BLACKOUT_VARIANT, blackout_fn, chance_levels, region_kinds, shortcut_verdict
from .cv import CVRun, Candidate, average_runs, fold_plan, run_cv
from .feature_maps import aligned, feature_maps
from .summary import summarise

ENSEMBLE_TOP = 3
"""``compare`` adds an ensemble of the top N models by validation macro-F1 (0 = none)."""


@dataclass
class GridRequest:
    tasks: list[str]
    models: list[str]
    backbones: list[str]
    benchmark: str | None = None
    image_level: bool = False
    """Also run the top model with image-level (leaky) folds, to show the leakage effect."""
    blackout: bool = True
    ensemble_top: int = 0
    command: str = "compare"


@dataclass
class TaskResult:
    rows: list[dict] = field(default_factory=list)
    runs: dict[str, CVRun] = field(default_factory=dict)


def _ci(metrics: dict, *path: str):
    node = metrics.get("ci", {})
    for p in path:
        node = node.get(p, {}) if isinstance(node, dict) else {}
    return node if isinstance(node, list) else None


def table_row(summary: dict) -> dict:
    """The comparison-table columns of one model's summary."""
    m = summary["pooled"]
    covid = m["per_class"].get("covid", {})
    return {
        "name": summary["model"]["name"], "description": summary["model"]["description"], "status": "ok",
        "accuracy": m["accuracy"], "accuracy_ci": _ci(m, "accuracy"),
        "macro_f1": m["macro"]["f1"], "macro_f1_ci": _ci(m, "macro", "f1"),
        "covid_sensitivity": covid.get("sensitivity"), "covid_sensitivity_ci": _ci(m, "per_class", "covid", "sensitivity"),
        "covid_specificity": covid.get("specificity"), "covid_specificity_ci": _ci(m, "per_class", "covid", "specificity"),
        "macro_auc": m["macro"]["auc"], "macro_auc_ci": _ci(m, "macro", "auc"),
        "ece": summary["calibration"]["raw"]["ece"], "val_macro_f1": summary["mean_val_macro_f1"],
        "val_log_loss": summary.get("mean_val_log_loss"),
        "seconds": summary["seconds"],
    }


def _rank_key(run: CVRun) -> tuple[float, float]:
    """Higher mean validation macro-F1 first; ties broken by lower validation log-loss."""
    return (-round(run.mean_val_f1, 4), run.mean_val_log_loss)


def _skipped_row(name: str, description: str, reason: str) -> dict:
    return {"name": name, "description": description, "status": "skipped: weights unavailable offline", "reason": reason}


def _finetune_cfg(cfg: Config) -> Config | None:
    """The config to fine-tune heads with in every fold (``train.finetune_blocks`` > 0), else None."""
    return cfg if cfg.train.finetune_blocks > 0 else None


def _blackout_maps(cfg: Config, manifest: pd.DataFrame, backbone: str, progress: bool) -> np.ndarray:
    root = cfg.data.resolved_root()
    maps, kept = feature_maps(manifest, cfg.data.resolved_cache_dir(), backbone=backbone, weights=cfg.model.weights,
                              image_size=cfg.data.image_size, variant=BLACKOUT_VARIANT, image_fn=blackout_fn(root), progress=progress)
    return aligned(maps, kept, manifest)


def run_task(cfg: Config, task: str, req: GridRequest, *, progress: bool = True, log=print) -> dict:
    ev = cfg.evaluation
    root = cfg.data.resolved_root()
    manifest = task_manifest(root, task, cfg.data.manifest, req.benchmark)
    cache = cfg.data.resolved_cache_dir()
    result = TaskResult()
    extras_note = None
    retrain_input = None
    for backbone in req.backbones:
        try:
            maps, kept = feature_maps(manifest, cache, backbone=backbone, weights=cfg.model.weights,
                                      image_size=cfg.data.image_size, progress=progress)
        except WeightsUnavailableError as exc:
            log(f"[yellow]skipped[/] {backbone}: weights unavailable offline")
            result.rows.append(_skipped_row(f"{backbone} + {', '.join(req.models)}",
                                            f"{backbone}: every model of the grid", str(exc)))
            continue
        rows = manifest[manifest["image"].isin(set(kept["image"]))].reset_index(drop=True)
        maps = aligned(maps, kept, rows)
        plan = fold_plan(rows, ev.folds, ev.fold_seed, ev.val_fraction)
        extra = {}
        if req.blackout:
            extra["lungs_blacked_out"] = _blackout_maps(cfg, rows, backbone, progress)
            extras_note = region_kinds(rows, root)
            retrain_input = retrain_input or (backbone, rows, plan, extra["lungs_blacked_out"])
        for model in req.models:
            cand = Candidate.parse(model, backbone, image_size=cfg.data.image_size, finetune_blocks=cfg.train.finetune_blocks)
            run = run_cv(maps, rows, task_classes(task), cand, ev, model_cfg=cfg.model, train_cfg=cfg.train,
                         extra_maps=extra, plan=plan, finetune_cfg=_finetune_cfg(cfg), progress=progress)
            summary, _ = summarise(run, ev, full=False)
            result.runs[cand.name] = run
            result.rows.append(table_row(summary))
            log(f"{cand.name}: accuracy {summary['pooled']['accuracy']:.3f}, macro-F1 {summary['pooled']['macro']['f1']:.3f} "
                f"(val {run.mean_val_f1:.3f}) in {run.seconds:.0f} s")
    if not result.runs:
        raise WeightsUnavailableError("no backbone of the grid has weights available offline")
    ok_runs = sorted(result.runs.values(), key=_rank_key)
    same_rows = [r for r in ok_runs if r.manifest["image"].equals(ok_runs[0].manifest["image"])]
    if req.ensemble_top >= 2 and len(same_rows) >= 2:
        members = same_rows[: req.ensemble_top]
        ens = average_runs(members, "ensemble(" + " + ".join(r.candidate.name for r in members) + ")")
        summary, _ = summarise(ens, ev, full=False)
        result.runs[ens.candidate.name] = ens
        result.rows.append(table_row(summary))
        log(f"{ens.candidate.name}: accuracy {summary['pooled']['accuracy']:.3f} (val {ens.mean_val_f1:.3f})")
    ranked = sorted([r for r in result.rows if r["status"] == "ok"], key=lambda r: _rank_key(result.runs[r["name"]]))
    for i, r in enumerate(ranked, 1):
        r["rank"] = i
    skipped = [r for r in result.rows if r["status"] != "ok"]
    best_run = result.runs[ranked[0]["name"]]
    best, predictions = summarise(best_run, ev, full=True)
    out = {
        "task": task, "classes": list(best_run.classes), "benchmark": req.benchmark,
        "rows": ranked + skipped,
        "ranked_by": "mean inner-validation macro-F1 over folds, ties by validation log-loss (test folds never used to rank)",
        "best": best, "blackout_regions": extras_note,
    }
    if req.image_level:
        out["image_level"] = _image_level(best_run, result.runs, cfg, progress)
    if retrain_input is not None:
        out["trained_without_lungs"] = _trained_without_lungs(cfg, task_classes(task), *retrain_input, progress=progress)
    out["_predictions"] = predictions
    return out


def _image_level(best: CVRun, runs: dict[str, CVRun], cfg: Config, progress: bool) -> dict:
    """The same model with image-level (leaky) folds: what the literature's protocol would report for it."""
    ev = cfg.evaluation
    rows = best.manifest
    plan = fold_plan(rows, ev.folds, ev.fold_seed, ev.val_fraction, group_by="image")
    members = [runs[m] for m in best.folds[0].info.get("members", [])] or [best]
    leaky = []
    for member in members:
        cand = member.candidate
        maps, kept = feature_maps(rows, cfg.data.resolved_cache_dir(), backbone=cand.backbone, weights=cfg.model.weights,
                                  image_size=cand.image_size, progress=progress)
        leaky.append(run_cv(aligned(maps, kept, rows), rows, best.classes, cand, ev, model_cfg=cfg.model,
                            train_cfg=cfg.train, group_by="image", plan=plan,
                            finetune_cfg=_finetune_cfg(cfg) if cand.variant.startswith("finetune") else None, progress=progress))
    run = leaky[0] if len(leaky) == 1 else average_runs(leaky, best.candidate.name)
    for f in run.folds:
        f.extra_probs = {}
    run.group_by = "image"
    summary, _ = summarise(run, ev, full=False)
    shared = [len(set(rows["patient_id"].iloc[f.test_idx]) & set(rows["patient_id"].iloc[f.train_idx])) for f in run.folds]
    summary["patients_in_train_and_test_per_fold"] = shared
    return summary


def _trained_without_lungs(cfg: Config, classes: tuple[str, ...], backbone: str, rows: pd.DataFrame, plan, maps: np.ndarray, *, progress: bool) -> dict:
    """Stronger shortcut control: a logistic regression *trained and tested* on lung-blacked-out images."""
    cand = Candidate.parse("logreg", backbone, variant=BLACKOUT_VARIANT, image_size=cfg.data.image_size)
    run = run_cv(maps, rows, classes, cand, cfg.evaluation, plan=plan, progress=progress)
    summary, _ = summarise(run, cfg.evaluation, full=False)
    m = summary["pooled"]
    chance = chance_levels(rows["target"].to_numpy(), len(run.classes))
    verdict = shortcut_verdict(m["accuracy"], _ci(m, "accuracy"), chance["majority"],
                               setting="Trained and tested with the lungs blacked out,")
    return {"model": cand.name, "accuracy": m["accuracy"], "accuracy_ci": _ci(m, "accuracy"),
            "macro_f1": m["macro"]["f1"], "confusion_matrix": m["confusion_matrix"], "chance": chance, "verdict": verdict}


def benchmark_table(bench_name: str, tasks: dict[str, dict]) -> dict:
    """Published image-level numbers beside ours (patient-level headline, image-level leaky for contrast)."""
    bench = get_benchmark(bench_name)
    rows = []
    for t in bench.tasks:
        res = tasks.get(t.name)
        if res is None:
            continue
        best = res["best"]["pooled"]
        leaky = res.get("image_level", {}).get("pooled") if res.get("image_level") else None
        covid = best["per_class"].get("covid", {})
        row = {
            "task": t.name, "description": t.description, "model": res["best"]["model"]["name"],
            "published_accuracy": t.published_accuracy, "published_protocol": t.published_protocol,
            "patient_accuracy": best["accuracy"], "patient_accuracy_ci": _ci(best, "accuracy"),
            "patient_covid_sensitivity": covid.get("sensitivity"),
            "patient_covid_sensitivity_ci": _ci(best, "per_class", "covid", "sensitivity"),
            "image_level_accuracy": leaky["accuracy"] if leaky else None,
            "image_level_accuracy_ci": _ci(leaky, "accuracy") if leaky else None,
            "image_level_covid_sensitivity": leaky["per_class"]["covid"]["sensitivity"] if leaky else None,
            "target_accuracy": t.target_accuracy, "target_covid_sensitivity": t.target_covid_sensitivity,
        }
        row["leakage_effect"] = (row["image_level_accuracy"] - row["patient_accuracy"]) if leaky else None
        reached = t.target_accuracy is None or best["accuracy"] >= t.target_accuracy
        if t.target_covid_sensitivity is not None:
            reached = reached and (covid.get("sensitivity") or 0) >= t.target_covid_sensitivity
        row["target_reached"] = bool(reached)
        rows.append(row)
    return {"name": bench.name, "citation": bench.citation, "folds": bench.folds, "rows": rows}


def run_grid(cfg: Config, req: GridRequest, out_dir: str | Path, *, progress: bool = True, log=print) -> dict:
    """Run every task of ``req``; write ``evaluation.json`` and ``predictions_<task>.csv`` into ``out_dir``."""
    import json

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = {}
    for task in req.tasks:
        log(f"[bold]task {task}[/]" + (f" on benchmark {req.benchmark}" if req.benchmark else ""))
        res = run_task(cfg, task, req, progress=progress, log=log)
        res.pop("_predictions").to_csv(out_dir / f"predictions_{task}.csv", index=False)
        tasks[task] = res
    result = {
        "kind": "evaluation", "command": req.command, "version": 1,
        "data": {"root": str(cfg.data.resolved_root()), "benchmark": req.benchmark},
        "settings": {"evaluation": cfg.to_dict()["evaluation"], "model": cfg.to_dict()["model"], "train": cfg.to_dict()["train"],
                     "image_size": cfg.data.image_size, "grid": {"models": req.models, "backbones": req.backbones}},
        "tasks": tasks,
        "benchmark": benchmark_table(req.benchmark, tasks) if req.benchmark else None,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (out_dir / "evaluation.json").write_text(json.dumps(result, indent=2, default=_json_default))
    return result


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj)}")
