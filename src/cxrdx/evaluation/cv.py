"""Patient-grouped, stratified k-fold cross-validation on cached frozen features.

Every fold: the test part is one fold of patients; a patient-grouped
validation part is held out of the remaining folds for early stopping,
temperature and the covid threshold; the model is fitted on the rest. Nothing
is ever tuned on the test fold. Out-of-fold predictions of all folds are then
pooled and scored (:mod:`cxrdx.evaluation.summary`).

``group_by="image"`` gives the leaky image-level protocol of the literature;
it exists only to measure the leakage effect beside the patient-level numbers.
"""

from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import f1_score, log_loss

from ..config import Config, ConfigError, EvalConfig, ModelConfig, TrainConfig
from ..data.io import ReadLimits
from ..data.sampling import manifest_weights
from ..data.splits import assert_no_patient_leakage, kfold_indices
from ..features.roi import RoiSetting, record_setting
from ..inference.predictor import Predictor
from ..models.factory import create_model
from ..models.heads import HEADS, create_head
from ..models.outputs import predict_proba
from ..progress import progress_bar
from ..training.finetune import finetune
from ..training.head_trainer import train_head
from .baselines import BASELINES
from .fold_store import FoldStore, array_digest, rows_digest


@dataclass(frozen=True)
class Candidate:
    """One model: a sequence/pool head on a backbone's cached map, or a scikit-learn baseline."""

    name: str
    kind: str
    """``head``, ``svm`` or ``logreg``."""
    backbone: str = "tf_efficientnet_lite0"
    head: str | None = None
    variant: str = "plain"
    image_size: int = 224

    @classmethod
    def parse(cls, model: str, backbone: str = "tf_efficientnet_lite0", variant: str = "plain", image_size: int = 224,
              finetune_blocks: int = 0) -> "Candidate":
        """``bilstm`` / ``pool`` / ... (heads) or ``svm`` / ``logreg`` (baselines); a head with
        ``finetune_blocks`` > 0 is named ``<backbone>+<head>+ft<N>``."""
        if model in BASELINES:
            return cls(f"{backbone}+{model}", model, backbone, None, variant, image_size)
        if model not in HEADS:
            raise ConfigError(f"unknown model {model!r}; choose a head {sorted(HEADS.names())} or a baseline {sorted(BASELINES.names())}")
        if finetune_blocks > 0:
            return cls(f"{backbone}+{model}+ft{finetune_blocks}", "head", backbone, model, f"finetune{finetune_blocks}", image_size)
        return cls(f"{backbone}+{model}", "head", backbone, model, variant, image_size)

    @property
    def description(self) -> str:
        if self.kind == "ensemble":
            return f"{self.backbone}: mean probabilities of {self.name}"
        what = BASELINES.describe(self.kind) if self.kind in BASELINES else HEADS.describe(self.head)
        size = f", {self.image_size}px" if self.image_size != 224 else ""
        if self.variant.startswith("finetune"):
            variant = f", last {self.variant.removeprefix('finetune')} backbone blocks fine-tuned per fold"
        else:
            variant = f", features '{self.variant}'" if self.variant != "plain" else ""
        return f"{self.backbone}{size}{variant}: {what}"


@dataclass
class FoldPrediction:
    fold: int
    train_idx: np.ndarray
    val_idx: np.ndarray
    test_idx: np.ndarray
    val_probs: np.ndarray
    test_probs: np.ndarray
    extra_probs: dict[str, np.ndarray] = field(default_factory=dict)
    """Probabilities of the test rows under other feature sets (e.g. lungs blacked out)."""
    val_f1: float = float("nan")
    info: dict = field(default_factory=dict)
    seconds: float = 0.0
    tta_probs: tuple[np.ndarray, np.ndarray] | None = None
    """Test-time augmentation: (validation, test) probabilities averaged with the mirrored images' (``tta_maps``)."""


@dataclass
class CVRun:
    candidate: Candidate
    classes: tuple[str, ...]
    manifest: pd.DataFrame
    group_by: str
    folds: list[FoldPrediction]
    seconds: float = 0.0

    @property
    def mean_val_f1(self) -> float:
        return float(np.mean([f.val_f1 for f in self.folds]))

    @property
    def mean_val_log_loss(self) -> float:
        """Validation log-loss (tie-breaker when validation F1 saturates)."""
        y = self.manifest["target"].to_numpy()
        labels = list(range(len(self.classes)))
        return float(np.mean([log_loss(y[f.val_idx], np.clip(f.val_probs, 1e-7, 1), labels=labels) for f in self.folds]))


def rank_key(run: CVRun) -> tuple[float, float]:
    """Model choice from validation only: higher mean validation macro-F1 first; ties by lower validation log-loss."""
    return (-round(run.mean_val_f1, 4), run.mean_val_log_loss)


def fold_plan(df: pd.DataFrame, n_folds: int, seed: int, val_fraction: float, group_by: str = "patient_id"):
    """``(train_idx, val_idx, test_idx)`` per fold; validation is always grouped by patient."""
    plan = []
    for test_fold, (rest, test) in enumerate(kfold_indices(df, n_splits=n_folds, seed=seed, group_by=group_by)):
        rest_df = df.iloc[rest].reset_index(drop=True)
        n_inner = max(2, int(round(1.0 / val_fraction)))
        tr, va = next(kfold_indices(rest_df, n_splits=n_inner, seed=seed + 1 + test_fold))
        train, val = rest[tr], rest[va]
        if group_by == "patient_id":
            assert_no_patient_leakage(df.iloc[train], df.iloc[val], df.iloc[test])
        plan.append((train, val, test))
    return plan


def _macro_f1(y: np.ndarray, probs: np.ndarray, n: int) -> float:
    return float(f1_score(y, probs.argmax(1), labels=list(range(n)), average="macro", zero_division=0))


def head_train_config(train: TrainConfig, ev: EvalConfig) -> TrainConfig:
    """The training recipe inside CV: ``train`` with the evaluation section's epochs / lr / patience / batch."""
    cfg = copy.deepcopy(train)
    cfg.epochs, cfg.lr, cfg.patience, cfg.batch_size = ev.epochs, ev.lr, ev.patience, ev.batch_size
    return cfg


def fold_weights(rows: pd.DataFrame, train: np.ndarray, train_cfg: TrainConfig, *, class_weighted: bool | None = None):
    """Per-row weights of a fold's training rows under ``train.sampling`` (None for ``none``: the trainers'
    own class weighting, unchanged)."""
    if train_cfg.sampling == "none":
        return None
    return manifest_weights(rows.iloc[train], train_cfg.sampling, min_group=train_cfg.source_min_images,
                            class_weighted=train_cfg.class_weighted if class_weighted is None else class_weighted)


def _train_fold_head(cand, maps, y, train, val, n_cls, model_cfg: ModelConfig, train_cfg: TrainConfig, weights=None):
    torch.manual_seed(train_cfg.seed)
    head = create_head(cand.head, maps.shape[1], n_cls, hidden=model_cfg.hidden, proj_dim=model_cfg.proj_dim, dropout=model_cfg.dropout)
    result = train_head(head, maps[train], y[train], maps[val], y[val], train_cfg, n_cls, progress=False, sample_weight=weights)
    return head, {"best_epoch": result.best_epoch, "epochs_run": len(result.history)}


def _fit_head(cand, maps, y, train, val, evals, n_cls, model_cfg: ModelConfig, train_cfg: TrainConfig, weights=None):
    head, info = _train_fold_head(cand, maps, y, train, val, n_cls, model_cfg, train_cfg, weights)
    outs = [predict_proba(head, x) for x in evals]
    return predict_proba(head, maps[val]), outs, info


def _image_probs(model, rows: pd.DataFrame, limits: ReadLimits) -> np.ndarray:
    results = Predictor(model, limits=limits).predict_paths(rows["image"])
    failed = [r for r in results if not r.ok]
    if failed:  # these rows were read once already, to cache their features
        raise RuntimeError(f"{len(failed)} images could no longer be read, e.g. {failed[0].source}: {failed[0].error}")
    return np.array([[r.probabilities[c] for c in model.classes] for r in results], dtype=np.float32)


def _fit_finetuned(cand, maps, y, train, val, test, classes, cfg: Config, rows: pd.DataFrame):
    """Stage (a) on the cached maps, then stage (b): the last ``train.finetune_blocks`` backbone blocks and the
    head trained end to end on the fold's training images (augmented); validation and test fold scored from
    their images. Early stopping on the validation part, as everywhere."""
    head, info = _train_fold_head(cand, maps, y, train, val, len(classes), cfg.model, head_train_config(cfg.train, cfg.evaluation),
                                  fold_weights(rows, train, cfg.train))
    model = create_model(cand.backbone, cand.head, weights=cfg.model.weights, classes=list(classes), hidden=cfg.model.hidden,
                         proj_dim=cfg.model.proj_dim, dropout=cfg.model.dropout, image_size=cand.image_size)
    record_setting(model.info, RoiSetting.from_config(cfg.data))  # fine-tune and score on the features' region
    model.head.load_state_dict(head.state_dict())
    with tempfile.TemporaryDirectory(prefix="cxrdx-cv-finetune-") as tmp:
        ft = finetune(model, rows.iloc[train].reset_index(drop=True), rows.iloc[val].reset_index(drop=True), cfg, tmp, progress=False)
    limits = ReadLimits.from_config(cfg.data)
    info.update(finetune_blocks=cfg.train.finetune_blocks, finetune_best_epoch=ft.best_epoch, finetune_epochs_run=len(ft.history))
    return _image_probs(model, rows.iloc[val], limits), [_image_probs(model, rows.iloc[test], limits)], info


def _fit_sklearn(cand, pooled, y, train, val, evals, n_cls, seed: int, weights=None):
    """``weights``: per training row (class balance is the baselines' own ``class_weight="balanced"``)."""
    baseline = BASELINES.get(cand.kind)
    best = None
    for c in baseline.c_grid:  # regularisation chosen on the validation part only
        model = baseline.make(c, seed)
        fit_args = {} if weights is None else {f"{model.steps[-1][0]}__sample_weight": weights}
        model = model.fit(pooled[train], y[train], **fit_args)
        val_probs = model.predict_proba(pooled[val])
        score = _macro_f1(y[val], val_probs, n_cls)
        if best is None or score > best[0]:
            best = (score, c, model, val_probs)
    _, c, model, val_probs = best
    return val_probs, [model.predict_proba(x) for x in evals], {"C": c}


def run_cv(
    maps: np.ndarray,
    manifest: pd.DataFrame,
    classes: tuple[str, ...],
    candidate: Candidate,
    ev: EvalConfig,
    *,
    model_cfg: ModelConfig | None = None,
    train_cfg: TrainConfig | None = None,
    group_by: str = "patient_id",
    extra_maps: dict[str, np.ndarray] | None = None,
    plan: list | None = None,
    finetune_cfg: Config | None = None,
    progress: bool = True,
    tta_maps: np.ndarray | None = None,
    store: FoldStore | None = None,
) -> CVRun:
    """Cross-validate ``candidate`` on feature ``maps`` (``[N, C, H, W]``, rows of ``manifest``).

    With ``finetune_cfg`` (whose ``train.finetune_blocks`` > 0), a head candidate is also fine-tuned end to
    end in every fold (:func:`_fit_finetuned`; minutes per fold on a CPU). Its folds carry no ``extra_maps``
    predictions: those are scores of the frozen backbone's cached features.

    ``tta_maps``: the maps of the mirrored images (same rows); each fold then also keeps ``tta_probs``, the
    same fold model's validation and test probabilities averaged over both (:func:`tta_run`).

    ``store``: finished folds are written there and, when code, input, candidate, rows and settings are all the
    same, read back instead of recomputed (:mod:`cxrdx.evaluation.fold_store`: an interrupted run resumes)."""
    t0 = time.perf_counter()
    model_cfg = model_cfg or ModelConfig()
    tcfg = head_train_config(train_cfg or TrainConfig(), ev)
    y = manifest["target"].to_numpy()
    n_cls = len(classes)
    plan = plan if plan is not None else fold_plan(manifest, ev.folds, ev.fold_seed, ev.val_fraction, group_by)
    extra_maps = extra_maps or {}
    if candidate.kind == "head":
        prep = lambda m: torch.from_numpy(np.asarray(m, dtype=np.float32))  # noqa: E731
    else:
        prep = lambda m: np.asarray(m, dtype=np.float32).mean(axis=(2, 3))  # noqa: E731
    data = prep(maps)
    extras = {k: prep(v) for k, v in extra_maps.items()}
    tta = prep(tta_maps) if tta_maps is not None and finetune_cfg is None else None
    folds: list[FoldPrediction] = []
    if store is not None:
        data_key = "|".join([array_digest(maps, tta_maps, *(extra_maps[k] for k in sorted(extra_maps))),
                             ",".join(sorted(extra_maps)), rows_digest(manifest), group_by])
        settings = {"model": model_cfg, "train": tcfg, "evaluation": ev,
                    "finetune": finetune_cfg.to_dict() if finetune_cfg is not None else None}
    with progress_bar(total=len(plan), description=f"cv {candidate.name}", enabled=progress) as bar:
        for k, (train, val, test) in enumerate(plan):
            key = None
            if store is not None:
                key = store.key(candidate=candidate, classes=classes, data=data_key, settings=settings, fold=k,
                                train=train, val=val, test=test)
                stored = store.load(candidate, k, key)
                if stored is not None:
                    folds.append(FoldPrediction(k, train, val, test, **stored))
                    bar.set(f"fold {k + 1}: stored (validation macro-F1 {stored['val_f1']:.3f})")
                    bar.advance()
                    continue
            t = time.perf_counter()
            evals = [data[test]] + [extras[name][test] for name in extras] + ([tta[val], tta[test]] if tta is not None else [])
            if candidate.kind == "head" and finetune_cfg is not None:
                val_probs, outs, info = _fit_finetuned(candidate, data, y, train, val, test, classes, finetune_cfg, manifest)
            elif candidate.kind == "head":
                val_probs, outs, info = _fit_head(candidate, data, y, train, val, evals, n_cls, model_cfg, tcfg,
                                                  fold_weights(manifest, train, tcfg))
            else:
                val_probs, outs, info = _fit_sklearn(candidate, data, y, train, val, evals, n_cls, tcfg.seed,
                                                     fold_weights(manifest, train, tcfg, class_weighted=False))
            tta_probs = None
            if tta is not None and len(outs) == len(evals):
                tta_probs = ((val_probs + outs[-2]) / 2, (outs[0] + outs[-1]) / 2)
                outs = outs[:-2]
            folds.append(FoldPrediction(
                k, train, val, test, val_probs, outs[0], dict(zip(extras, outs[1:])),
                _macro_f1(y[val], val_probs, n_cls), info, time.perf_counter() - t, tta_probs,
            ))
            if store is not None:
                store.save(candidate, folds[-1], key)
            bar.set(f"fold {k + 1}: validation macro-F1 {folds[-1].val_f1:.3f} in {folds[-1].seconds:.0f} s")
            bar.advance()
    return CVRun(candidate, tuple(classes), manifest, group_by, folds, time.perf_counter() - t0)


def tta_run(run: CVRun) -> CVRun:
    """``run``'s fold models scored with test-time augmentation (mean over the image and its mirror), as
    candidate ``<name>+tta``: validation probabilities too, so that ranking it stays validation-only."""
    y = run.manifest["target"].to_numpy()
    folds = [FoldPrediction(f.fold, f.train_idx, f.val_idx, f.test_idx, f.tta_probs[0], f.tta_probs[1], {},
                            _macro_f1(y[f.val_idx], f.tta_probs[0], len(run.classes)), dict(f.info), f.seconds)
             for f in run.folds]
    c = run.candidate
    cand = Candidate(f"{c.name}+tta", c.kind, c.backbone, c.head, "tta-hflip", c.image_size)
    return CVRun(cand, run.classes, run.manifest, run.group_by, folds, run.seconds)


def average_runs(runs: list[CVRun], name: str) -> CVRun:
    """Ensemble: the mean probabilities of runs made on the same folds and rows."""
    first = runs[0]
    folds = []
    for parts in zip(*(r.folds for r in runs)):
        f0 = parts[0]
        if any(not np.array_equal(p.test_idx, f0.test_idx) or not np.array_equal(p.val_idx, f0.val_idx) for p in parts):
            raise ValueError("ensemble members must share the same folds")
        val_probs = np.mean([p.val_probs for p in parts], axis=0)
        y_val = first.manifest["target"].to_numpy()[f0.val_idx]
        folds.append(FoldPrediction(
            f0.fold, f0.train_idx, f0.val_idx, f0.test_idx, val_probs, np.mean([p.test_probs for p in parts], axis=0),
            {k: np.mean([p.extra_probs[k] for p in parts], axis=0) for k in f0.extra_probs if all(k in p.extra_probs for p in parts)},
            _macro_f1(y_val, val_probs, len(first.classes)), {"members": [r.candidate.name for r in runs]},
            sum(p.seconds for p in parts),
        ))
    cand = Candidate(name, "ensemble", first.candidate.backbone, None, first.candidate.variant, first.candidate.image_size)
    return CVRun(cand, first.classes, first.manifest, first.group_by, folds, sum(r.seconds for r in runs))
