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
from ..data.io import ReadLimits
from ..models.weights import WeightsUnavailableError
from .benchmark import get_benchmark, task_classes, task_manifest
from .confounding import (BLACKOUT_VARIANT, BORDER_FRACTION, BORDER_VARIANT, blackout_fn, border_only_fn, chance_levels,
                          region_kinds, shortcut_verdict)
from .architectures import architecture_section
from .cv import CVRun, Candidate, average_runs, fold_plan, rank_key, run_cv, tta_run
from .feature_maps import aligned, feature_maps
from .fold_store import STORE_DIR, FoldStore, json_default
from .loso import loso_section, source_plan
from .shape_control import image_shapes, loso_shape_control, shape_control
from .results import CVSummary
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
    border: bool = True
    """Border-only shortcut control: only a frame of ``BORDER_FRACTION`` of the image side is kept."""
    shape: bool = True
    """Shape-only shortcut control (:mod:`cxrdx.evaluation.shape_control`): the label from the image's format alone."""
    ensemble_top: int = 0
    by: str = "patient"
    """``patient``: random patient-grouped folds; ``source``: also leave-one-source-out, shown first."""
    command: str = "compare"
    native_size: bool = False
    """Feed each backbone at its own input size (``BackboneSpec.input_size``: Lite1 240, Lite2 260), not ``data.image_size``."""
    backbone_ensemble: bool = True
    """With several backbones: also the ensemble of the best candidate (by validation) of each backbone."""
    tta: bool = False
    """Test-time augmentation: every head / baseline is also scored on the mean of the image's and its mirror's
    probabilities (validation and test alike; the same trained models), as candidate ``<name>+tta``."""


@dataclass
class TaskResult:
    rows: list[dict] = field(default_factory=list)
    runs: dict[str, CVRun] = field(default_factory=dict)


def _columns(**metrics) -> dict:
    """``name`` and ``name_ci`` columns of :class:`MetricWithCI` values."""
    out = {}
    for name, m in metrics.items():
        out[name], out[f"{name}_ci"] = m.value, m.ci
    return out


def table_row(summary: CVSummary) -> dict:
    """The comparison-table columns of one model's summary."""
    m = summary.pooled
    return {
        "name": summary.name, "description": summary.model["description"], "status": "ok",
        **{k: summary.model.get(k) for k in ("kind", "backbone", "head", "variant", "image_size")},
        **_columns(accuracy=m.accuracy, macro_f1=m.macro("f1"), covid_sensitivity=m.per_class("covid", "sensitivity"),
                   covid_specificity=m.per_class("covid", "specificity"), macro_auc=m.macro("auc")),
        "ece": summary.ece, "val_macro_f1": summary.mean_val_macro_f1, "val_log_loss": summary.mean_val_log_loss,
        "seconds": summary.seconds,
    }


_rank_key = rank_key  # model choice from validation only (cv.rank_key)


def _skipped_row(name: str, description: str, reason: str) -> dict:
    return {"name": name, "description": description, "status": "skipped: weights unavailable offline", "reason": reason}


def _finetune_cfg(cfg: Config) -> Config | None:
    """The config to fine-tune heads with in every fold (``train.finetune_blocks`` > 0), else None."""
    return cfg if cfg.train.finetune_blocks > 0 else None


def config_maps(cfg: Config, manifest: pd.DataFrame, backbone: str, *, variant: str = "plain", image_fn=None,
                image_size: int | None = None, progress: bool = True) -> tuple[np.ndarray, pd.DataFrame]:
    """The one place this module gets features: ``cfg``'s data settings (size, weights, region of interest)."""
    from ..features.roi import RegionOfInterest

    return feature_maps(manifest, cfg.data.resolved_cache_dir(), backbone=backbone, weights=cfg.model.weights,
                        image_size=image_size or cfg.data.image_size, variant=variant, image_fn=image_fn,
                        roi=RegionOfInterest.from_config(cfg.data), progress=progress)


def roi_of(cfg: Config) -> str:
    """The region-of-interest setting the features were made with (``data.roi``, plus ``data.intensity`` and
    ``data.fit`` where not the default)."""
    parts = [cfg.data.roi] + ([cfg.data.intensity] if cfg.data.intensity != "none" else []) \
        + ([cfg.data.fit] if cfg.data.fit != "squash" else [])
    return "+".join(parts)


CONTROLS = {
    "lungs_blacked_out": (BLACKOUT_VARIANT, blackout_fn, "Trained and tested with the lungs blacked out,"),
    "border_only": (BORDER_VARIANT, border_only_fn,
                    f"Trained and tested on the image border only (a {BORDER_FRACTION:.0%} frame, the inside greyed out),"),
}
"""Shortcut controls: extra feature set name -> (cache variant, image_fn factory, verdict wording)."""


def _control_maps(cfg: Config, manifest: pd.DataFrame, backbone: str, name: str, progress: bool, image_size: int | None = None
                  ) -> np.ndarray:
    variant, make_fn, _ = CONTROLS[name]
    image_fn = make_fn(cfg.data.resolved_root())
    if name == "lungs_blacked_out" and cfg.data.lung_model:  # rows without a radiologist mask: the segmenter's lungs
        finder = _lung_finder(cfg)
        image_fn = blackout_fn(cfg.data.resolved_root(), lungs=finder)
        variant = f"{variant}-seg{finder.digest[7:19]}"
    maps, kept = config_maps(cfg, manifest, backbone, variant=variant, image_fn=image_fn,
                             image_size=image_size, progress=progress)
    return aligned(maps, kept, manifest)


class _LungFinder:
    """``grey -> lung mask`` from the segmenter of ``data.lung_model`` (None where it finds no lungs)."""

    def __init__(self, roi):
        self.roi, self.digest = roi, roi.setting.lung_digest or ""

    def __call__(self, grey: np.ndarray) -> np.ndarray | None:
        info = self.roi.locate(grey)  # with a lung ROI configured, the image was just located by it: a memo hit
        return None if info.fallback or info.mask is None else info.mask


def _lung_finder(cfg: Config) -> _LungFinder:
    """The configured lung ROI itself (one segmenter, one memo of masks); a lung crop of the same segmenter when the
    ROI is the full image."""
    from ..features.roi import RegionOfInterest, RoiSetting

    roi = RegionOfInterest.from_config(cfg.data)
    if roi.setting.roi == "full":
        roi = RegionOfInterest.shared(RoiSetting("lung_crop", lung_model=cfg.data.lung_model).resolved())
    return _LungFinder(roi)


def _mirror(grey: np.ndarray, row) -> np.ndarray:
    return np.ascontiguousarray(grey[:, ::-1])


def grid_size(cfg: Config, req: GridRequest, backbone: str) -> int:
    """Input size of ``backbone`` in this grid: its native size with ``req.native_size``, else ``data.image_size``."""
    from ..models.backbones import get_spec

    return get_spec(backbone).input_size[1] if req.native_size else cfg.data.image_size


def _finetune_blocks(cfg: Config, backbone: str) -> int:
    """``train.finetune_blocks``, or 0 for a backbone with nothing to fine-tune (the raw-signal one)."""
    from ..models.backbones import get_spec

    return cfg.train.finetune_blocks if get_spec(backbone).has_weights else 0


def run_task(cfg: Config, task: str, req: GridRequest, *, progress: bool = True, log=print,
             store: FoldStore | None = None) -> dict:
    """One task of the grid; ``store``: finished folds kept on disk and reused (an interrupted run resumes)."""
    ev = cfg.evaluation
    root = cfg.data.resolved_root()
    manifest = task_manifest(root, task, cfg.data.manifest, req.benchmark)
    result = TaskResult()
    extras_note = None
    retrain_input = None
    shape_input = None
    loso_runs: dict[str, CVRun] = {}
    loso_plan = None
    loso_rows = None
    for backbone in req.backbones:
        size = grid_size(cfg, req, backbone)
        ft_blocks = _finetune_blocks(cfg, backbone)
        ft_cfg = _finetune_cfg(cfg) if ft_blocks else None
        try:
            maps, kept = config_maps(cfg, manifest, backbone, image_size=size, progress=progress)
        except WeightsUnavailableError as exc:
            log(f"[yellow]skipped[/] {backbone}: weights unavailable offline")
            result.rows.append(_skipped_row(f"{backbone} + {', '.join(req.models)}",
                                            f"{backbone}: every model of the grid", str(exc)))
            continue
        rows = manifest[manifest["image"].isin(set(kept["image"]))].reset_index(drop=True)
        maps = aligned(maps, kept, rows)
        plan = fold_plan(rows, ev.folds, ev.fold_seed, ev.val_fraction)
        shape_input = shape_input or (rows, plan)
        extra = {}
        for name, wanted in (("lungs_blacked_out", req.blackout), ("border_only", req.border)):
            if wanted:
                extra[name] = _control_maps(cfg, rows, backbone, name, progress, image_size=size)
        tta_maps = None
        if req.tta:
            mirrored, kept_m = config_maps(cfg, rows, backbone, variant="hflip", image_fn=_mirror, image_size=size, progress=progress)
            tta_maps = aligned(mirrored, kept_m, rows)
        if req.blackout:
            extras_note = region_kinds(rows, root, segmenter=bool(cfg.data.lung_model))
        if extra:
            retrain_input = retrain_input or (backbone, rows, plan, extra)
        if req.by == "source":
            loso_plan = source_plan(rows, ev.min_source_images, ev.fold_seed, ev.val_fraction)
            loso_rows = rows
        for model in req.models:
            cand = Candidate.parse(model, backbone, image_size=size, finetune_blocks=ft_blocks)
            run = run_cv(maps, rows, task_classes(task), cand, ev, model_cfg=cfg.model, train_cfg=cfg.train,
                         extra_maps=extra, plan=plan, finetune_cfg=ft_cfg, progress=progress, tta_maps=tta_maps, store=store)
            for r in [run] + ([tta_run(run)] if tta_maps is not None and run.folds[0].tta_probs is not None else []):
                summary, _ = summarise(r, ev, full=False)
                result.runs[r.candidate.name] = r
                result.rows.append(table_row(summary))
                log(f"{r.candidate.name}: accuracy {summary.pooled.accuracy.value:.3f}, macro-F1 "
                    f"{summary.pooled.macro('f1').value:.3f} (val {r.mean_val_f1:.3f}) in {r.seconds:.0f} s")
            if loso_plan is not None:
                loso = run_cv(maps, rows, task_classes(task), cand, ev, model_cfg=cfg.model, train_cfg=cfg.train,
                              plan=loso_plan.folds, finetune_cfg=ft_cfg, progress=progress, store=store)
                loso_runs[cand.name] = loso
                log(f"{cand.name} leave-one-source-out: " + ", ".join(
                    f"{s} {np.mean(f.test_probs.argmax(1) == rows['target'].to_numpy()[f.test_idx]):.3f}"
                    for s, f in zip(loso_plan.sources, loso.folds)) + f" (val {loso.mean_val_f1:.3f}) in {loso.seconds:.0f} s")
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
        log(f"{ens.candidate.name}: accuracy {summary.pooled.accuracy.value:.3f} (val {ens.mean_val_f1:.3f})")
    ens = backbone_ensemble(same_rows) if req.backbone_ensemble else None
    if ens is not None and ens.candidate.name not in result.runs:
        summary, _ = summarise(ens, ev, full=False)
        result.runs[ens.candidate.name] = ens
        result.rows.append(table_row(summary))
        log(f"{ens.candidate.name}: accuracy {summary.pooled.accuracy.value:.3f} (val {ens.mean_val_f1:.3f})")
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
        "architectures": architecture_section(result.runs, ev),
    }
    limits = ReadLimits.from_config(cfg.data)
    shapes = None
    if req.shape and shape_input is not None:  # one decode per image, for the random-split and the LOSO shape control
        shape_rows, shape_plan = shape_input
        shapes = image_shapes(shape_rows, limits)
    if loso_runs:
        same = {n: r for n, r in loso_runs.items() if r.manifest["image"].equals(loso_plan_rows(loso_runs))}
        out["loso"] = loso_section(same, result.runs, loso_plan, ev, roi=roi_of(cfg), ensemble_top=req.ensemble_top)
        if shapes is not None:
            same_rows = loso_rows["image"].equals(shape_rows["image"])
            out["loso"]["shape_only"] = loso_shape_control(
                loso_rows, loso_plan.folds, list(loso_plan.sources), task_classes(task),
                shapes=shapes if same_rows else image_shapes(loso_rows, limits), n_boot=ev.bootstrap, seed=ev.fold_seed)
    if req.image_level:
        out["image_level"] = _image_level(best_run, result.runs, cfg, progress, store)
    if shapes is not None:
        out["trained_on_shape_only"] = shape_control(shape_rows, shape_plan, task_classes(task), shapes=shapes,
                                                     n_boot=ev.bootstrap, seed=ev.fold_seed)
    if retrain_input is not None:
        backbone, rows, plan, extra = retrain_input
        for name, maps in extra.items():
            key = "trained_without_lungs" if name == "lungs_blacked_out" else f"trained_on_{name}"
            out[key] = _trained_on_control(cfg, task_classes(task), backbone, rows, plan, maps, name, progress=progress)
    out["_predictions"] = predictions
    return out


def backbone_ensemble(ranked: list[CVRun]) -> CVRun | None:
    """Mean probabilities of the best candidate (by validation) of each backbone; None with fewer than two."""
    best: dict[str, CVRun] = {}
    for run in ranked:  # already in validation order
        if run.candidate.kind != "ensemble":
            best.setdefault(run.candidate.backbone, run)
    if len(best) < 2:
        return None
    members = sorted(best.values(), key=_rank_key)
    return average_runs(members, "ensemble of backbones(" + " + ".join(r.candidate.name for r in members) + ")")


def _image_level(best: CVRun, runs: dict[str, CVRun], cfg: Config, progress: bool, store: FoldStore | None = None) -> CVSummary:
    """The same model with image-level (leaky) folds: what the literature's protocol would report for it."""
    ev = cfg.evaluation
    rows = best.manifest
    plan = fold_plan(rows, ev.folds, ev.fold_seed, ev.val_fraction, group_by="image")
    members = [runs[m] for m in best.folds[0].info.get("members", [])] or [best]
    leaky = []
    for member in members:
        cand = member.candidate
        maps, kept = config_maps(cfg, rows, cand.backbone, image_size=cand.image_size, progress=progress)
        leaky.append(run_cv(aligned(maps, kept, rows), rows, best.classes, cand, ev, model_cfg=cfg.model,
                            train_cfg=cfg.train, group_by="image", plan=plan,
                            finetune_cfg=_finetune_cfg(cfg) if cand.variant.startswith("finetune") else None, progress=progress,
                            store=store))
    run = leaky[0] if len(leaky) == 1 else average_runs(leaky, best.candidate.name)
    for f in run.folds:
        f.extra_probs = {}
    run.group_by = "image"
    summary, _ = summarise(run, ev, full=False)
    shared = [len(set(rows["patient_id"].iloc[f.test_idx]) & set(rows["patient_id"].iloc[f.train_idx])) for f in run.folds]
    summary.extra["patients_in_train_and_test_per_fold"] = shared
    return summary


def loso_plan_rows(runs: dict[str, CVRun]) -> pd.Series:
    """Image column of the first LOSO run (all runs of one plan share it)."""
    return next(iter(runs.values())).manifest["image"]


def _trained_on_control(cfg: Config, classes: tuple[str, ...], backbone: str, rows: pd.DataFrame, plan, maps: np.ndarray,
                        control: str, *, progress: bool) -> dict:
    """Stronger shortcut control: a logistic regression *trained and tested* on the control images
    (lungs blacked out, or the border only)."""
    variant, _, setting = CONTROLS[control]
    cand = Candidate.parse("logreg", backbone, variant=variant, image_size=cfg.data.image_size)
    run = run_cv(maps, rows, classes, cand, cfg.evaluation, plan=plan, progress=progress)
    summary, _ = summarise(run, cfg.evaluation, full=False)
    m = summary.pooled
    chance = chance_levels(rows["target"].to_numpy(), len(run.classes))
    verdict = shortcut_verdict(m.accuracy.value, m.accuracy.ci, chance["majority"], setting=setting)
    return {"model": cand.name, "control": control, **_columns(accuracy=m.accuracy), "macro_f1": m.macro("f1").value,
            "confusion_matrix": m.confusion_matrix, "chance": chance, "verdict": verdict}


def benchmark_table(bench_name: str, tasks: dict[str, dict]) -> dict:
    """Published image-level numbers beside ours (patient-level headline, image-level leaky for contrast)."""
    bench = get_benchmark(bench_name)
    rows = []
    for t in bench.tasks:
        res = tasks.get(t.name)
        if res is None:
            continue
        best: CVSummary = res["best"]
        leaky = res["image_level"].pooled if res.get("image_level") else None
        accuracy, sensitivity = best.pooled.accuracy, best.pooled.per_class("covid", "sensitivity")
        row = {
            "task": t.name, "description": t.description, "model": best.name,
            "published_accuracy": t.published_accuracy, "published_protocol": t.published_protocol,
            **_columns(patient_accuracy=accuracy, patient_covid_sensitivity=sensitivity),
            "image_level_accuracy": leaky.accuracy.value if leaky else None,
            "image_level_accuracy_ci": leaky.accuracy.ci if leaky else None,
            "image_level_covid_sensitivity": leaky.per_class("covid", "sensitivity").value if leaky else None,
            "target_accuracy": t.target_accuracy, "target_covid_sensitivity": t.target_covid_sensitivity,
        }
        row["leakage_effect"] = (row["image_level_accuracy"] - row["patient_accuracy"]) if leaky else None
        reached = t.target_accuracy is None or accuracy.value >= t.target_accuracy
        if t.target_covid_sensitivity is not None:
            reached = reached and (sensitivity.value or 0) >= t.target_covid_sensitivity
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
    store = FoldStore(out_dir / STORE_DIR)
    for task in req.tasks:
        log(f"[bold]task {task}[/]" + (f" on benchmark {req.benchmark}" if req.benchmark else ""))
        res = run_task(cfg, task, req, progress=progress, log=log, store=store)
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
        "reused_folds": store.reused,
    }
    if store.reused:
        log(f"reused {store.reused} finished fold(s) from {store.root} (same code, input, rows and settings; "
            "delete that folder to recompute them)")
    (out_dir / "evaluation.json").write_text(json.dumps(result, indent=2, default=json_default))
    return result

