"""Patient-level cross-validation of the series models, with patient bootstrap 95% CIs.

Each row of a :class:`PatientSeries` is one patient, so stratified K-fold over rows
never puts a patient in two folds. Inside each fold the exam embeddings are
standardised and PCA-reduced with statistics of the training patients only, then
the sequence model and both baselines are trained with the same fixed recipe.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from scipy.stats import rankdata
from sklearn.decomposition import PCA
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.class_weight import compute_class_weight

from ..config import SeriesConfig
from ..models.outputs import probabilities
from ..progress import progress_bar
from ..stats.bootstrap import patient_resamples, percentile_ci
from .model import SERIES_MODELS, create_series_model
from .sequences import PatientSeries, pad

MODEL_NAMES = tuple(SERIES_MODELS.names())  # rnn, mean_pool, last_exam


def fit(model: nn.Module, x: torch.Tensor, lengths: torch.Tensor, y: np.ndarray, cfg: SeriesConfig) -> nn.Module:
    """Full-batch AdamW with class-balanced cross-entropy for a fixed number of epochs."""
    present = np.unique(y)
    weight = np.ones(2, dtype=np.float32)
    weight[present] = compute_class_weight("balanced", classes=present, y=y)
    loss_fn = nn.CrossEntropyLoss(weight=torch.tensor(weight))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    yt = torch.as_tensor(y, dtype=torch.long)
    model.train()
    for _ in range(cfg.epochs):
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x, lengths), yt).backward()
        opt.step()
    return model.eval()


@torch.inference_mode()
def positive_probability(model: nn.Module, x: torch.Tensor, lengths: torch.Tensor) -> np.ndarray:
    model.eval()
    return probabilities(model(x, lengths))[:, 1].numpy()


def fold_inputs(train: PatientSeries, test: PatientSeries, pca_dim: int) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Per-exam input = PCA(standardised embedding) fitted on ``train`` exams, then the time features."""
    train_exams = np.concatenate(train.embeddings)
    dim = max(1, min(pca_dim, train_exams.shape[0] - 1, train_exams.shape[1]))
    reducer = make_pipeline(StandardScaler(), PCA(n_components=dim, random_state=0)).fit(train_exams)

    def inputs(part: PatientSeries) -> tuple[torch.Tensor, torch.Tensor]:
        steps = [np.hstack([reducer.transform(e), t]).astype(np.float32) for e, t in zip(part.embeddings, part.times)]
        return pad(steps)

    return inputs(train), inputs(test)


def out_of_fold(series: PatientSeries, cfg: SeriesConfig, progress: bool = True) -> dict[str, np.ndarray]:
    """Out-of-fold P(positive) for every labelled patient and model (averaged over ``cfg.repeats``)."""
    y = series.labels
    if (y < 0).any():
        raise ValueError("out_of_fold needs labelled patients only; subset the series first")
    counts = np.bincount(y, minlength=2)
    folds = int(min(cfg.folds, counts.min()))
    if folds < 2:
        raise ValueError(f"too few patients per class for cross-validation: {counts.tolist()}")
    probs = {name: np.zeros(len(y)) for name in MODEL_NAMES}
    with progress_bar(total=cfg.repeats * folds, description="series CV folds", enabled=progress) as bar:
        for repeat in range(cfg.repeats):
            splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=cfg.seed + repeat)
            for fold, (tr, te) in enumerate(splitter.split(np.zeros(len(y)), y)):
                (x_tr, len_tr), (x_te, len_te) = fold_inputs(series.subset(tr), series.subset(te), cfg.pca_dim)
                for name in MODEL_NAMES:
                    torch.manual_seed(cfg.seed + 1000 * repeat + fold)
                    model = create_series_model(name, x_tr.shape[-1], 2, hidden=cfg.hidden, rnn=cfg.rnn, dropout=cfg.dropout)
                    fit(model, x_tr, len_tr, y[tr], cfg)
                    probs[name][te] += positive_probability(model, x_te, len_te) / cfg.repeats
                bar.advance()
    return probs


def _binary_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """AUC (sklearn) and the 0.5-threshold rates; NaN where a class is absent from ``y``."""
    pred = p >= 0.5
    pos, neg = y == 1, y == 0
    sens = float(pred[pos].mean()) if pos.any() else float("nan")
    spec = float((~pred[neg]).mean()) if neg.any() else float("nan")
    return {
        "auc": float(roc_auc_score(y, p)) if pos.any() and neg.any() else float("nan"),
        "balanced_accuracy": (sens + spec) / 2,
        "accuracy": float((pred == pos).mean()),
        "sensitivity": sens,
        "specificity": spec,
    }


def _resampled_metrics(y: np.ndarray, p: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """:func:`_binary_metrics` for every row of ``draws`` at once, ``[B, 5]`` (NaN where a class is missing).

    AUC is the Mann-Whitney rank statistic (ties averaged), identical to ``roc_auc_score``.
    """
    yb, pb = y[draws], p[draws]
    pos, pred = yb == 1, pb >= 0.5
    n1, n0 = pos.sum(1).astype(float), (~pos).sum(1).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        ranks = rankdata(pb, axis=1)
        auc = ((ranks * pos).sum(1) - n1 * (n1 + 1) / 2) / (n1 * n0)
        sens = (pred & pos).sum(1) / n1
        spec = (~pred & ~pos).sum(1) / n0
    acc = (pred == pos).mean(1)
    return np.stack([auc, (sens + spec) / 2, acc, sens, spec], axis=1)


def bootstrap_metrics(
    y: np.ndarray, probs: dict[str, np.ndarray], *, n_boot: int = 2000, seed: int = 0, level: float = 0.95,
    reference: str = "last_exam",
) -> dict[str, dict]:
    """Point estimates and percentile CIs from resampling patients (the same resamples for every model),
    plus the paired CI of each model's AUC minus the ``reference`` model's."""
    draws = patient_resamples(len(y), n_boot, seed)  # one row per patient: resampling rows = patients

    def ci(values: np.ndarray) -> list[float | None]:
        return percentile_ci(values, level)

    boot = {name: _resampled_metrics(y, p, draws) for name, p in probs.items()}
    out: dict[str, dict] = {}
    for name, p in probs.items():
        point = _binary_metrics(y, p)
        entry = {k: {"value": point[k], "ci": ci(boot[name][:, i])} for i, k in enumerate(point)}
        if reference in probs and name != reference:
            diff = boot[name][:, 0] - boot[reference][:, 0]
            entry[f"auc_minus_{reference}"] = {"value": point["auc"] - _binary_metrics(y, probs[reference])["auc"], "ci": ci(diff)}
        out[name] = entry
    return out


@dataclass
class SeriesCVResult:
    target: str
    probs: dict[str, np.ndarray]
    labels: np.ndarray
    lengths: np.ndarray
    patient_ids: list[str]
    metrics: dict[str, dict[str, dict]]
    """``{"all": {model: metrics}, "2plus_exams": {model: metrics}}``."""


def cross_validate(series: PatientSeries, cfg: SeriesConfig, progress: bool = True) -> SeriesCVResult:
    labelled = series.subset(series.labels >= 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny full-batch models: one thread is fastest, more only contend
    try:
        probs = out_of_fold(labelled, cfg, progress=progress)
    finally:
        torch.set_num_threads(threads)
    y, lengths = labelled.labels, labelled.lengths
    metrics = {"all": bootstrap_metrics(y, probs, n_boot=cfg.bootstrap, seed=cfg.seed)}
    multi = lengths >= 2
    if len(np.unique(y[multi])) == 2:
        metrics["2plus_exams"] = bootstrap_metrics(y[multi], {k: v[multi] for k, v in probs.items()}, n_boot=cfg.bootstrap, seed=cfg.seed)
    return SeriesCVResult(cfg.target, probs, y, lengths, labelled.patient_ids, metrics)
