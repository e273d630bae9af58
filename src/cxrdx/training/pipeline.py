"""``cxrdx train`` end to end: data -> split -> features -> head (-> fine-tune) -> test -> run folder.

The same code runs under ``torchrun --nproc-per-node N``: every rank computes the
same patient-grouped split, feature extraction is sharded over ranks, head
training and fine-tuning use DDP, rank 0 alone scores the test part and writes
the run folder, and every rank returns the same :class:`RunOutcome`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch.distributed as dist

from ..config import Config
from ..data.io import ReadLimits
from ..data.manifest import load_manifest
from ..data.modality import select_modality
from ..data.sampling import manifest_weights
from ..data.splits import assert_no_patient_leakage, train_val_test_split
from ..features.cache import FeatureSet, extract_features
from ..features.roi import RoiSetting, record_setting
from ..inference.predictor import predict_manifest
from ..models.factory import create_model
from ..models.hybrid import HybridModel
from ..models.run import save_run
from ..stats.bootstrap import metrics_with_ci
from .distributed import DistContext, barrier, init_distributed, shutdown
from .finetune import finetune
from .head_trainer import TrainResult, train_head
from .seed import seed_everything

SPLIT_FILE = "split.csv"


@dataclass
class RunOutcome:
    run_dir: Path
    model: HybridModel
    metrics: dict
    split_sizes: dict[str, dict[str, int]]
    timings: dict[str, float] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)


def load_dataset(cfg: Config) -> pd.DataFrame:
    """The task's rows (of ``data.modality`` when the manifest has a modality column); ``df.attrs["modality"]`` says which."""
    df = load_manifest(cfg.data.resolved_root(), cfg.data.manifest, classes=cfg.data.classes, benchmark=cfg.data.benchmark)
    df, modality = select_modality(df, cfg.data.modality)
    df.attrs["modality"] = modality
    return df


def build_model(cfg: Config) -> HybridModel:
    m = cfg.model
    return create_model(
        m.backbone, m.head, weights=m.weights, classes=list(cfg.data.classes), hidden=m.hidden,
        proj_dim=m.proj_dim, dropout=m.dropout, image_size=cfg.data.image_size,
    )


def features_for(fs: FeatureSet, part: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of ``fs`` for the images of ``part`` (unreadable ones are absent from both)."""
    pos = {p: i for i, p in enumerate(fs.manifest["image"])}
    idx = np.array([pos[p] for p in part["image"] if p in pos], dtype=int)
    return idx, fs.targets(idx)


def _sizes(part: pd.DataFrame, classes) -> dict[str, int]:
    counts = part["label"].value_counts()
    return {"images": int(len(part)), "patients": int(part["patient_id"].nunique()), **{c: int(counts.get(c, 0)) for c in classes}}


def _threads(cfg: Config, ctx: DistContext) -> int | None:
    """Under torchrun on CPU, share the cores between the local processes instead of oversubscribing."""
    if cfg.train.threads is not None or not ctx.enabled or os.environ.get("CXRDX_THREADS"):
        return cfg.train.threads
    local = int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world_size))
    return max(1, (os.cpu_count() or 1) // max(local, 1))


def _share_from_main(ctx: DistContext, value):
    """Rank 0's ``value`` on every rank (pickled through the process group)."""
    if not ctx.enabled:
        return value
    box = [value if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def run_training(cfg: Config, *, progress: bool = True, resume: bool = False) -> RunOutcome:
    started_group = not dist.is_initialized()
    ctx = init_distributed()
    started_group = started_group and ctx.enabled
    try:
        return _run(cfg, ctx, progress=progress and ctx.is_main, resume=resume)
    finally:
        if started_group:
            shutdown()


def _run(cfg: Config, ctx: DistContext, *, progress: bool, resume: bool) -> RunOutcome:
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    seed_everything(cfg.train.seed, _threads(cfg, ctx))
    run_dir = Path(cfg.out_dir)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / "config.json")

    df = load_dataset(cfg)
    train, val, test = train_val_test_split(df, cfg.data.test_fraction, cfg.data.val_fraction, cfg.data.split_seed)
    assert_no_patient_leakage(train, val, test)
    split = pd.concat([train.assign(part="train"), val.assign(part="val"), test.assign(part="test")])
    if ctx.is_main:
        split[["relpath", "image", "label", "patient_id", "part"]].to_csv(run_dir / SPLIT_FILE, index=False)
    sizes = {name: _sizes(p, cfg.data.classes) for name, p in (("train", train), ("val", val), ("test", test))}
    timings["data_s"] = time.perf_counter() - t0

    t = time.perf_counter()
    model = build_model(cfg)
    record_setting(model.info, RoiSetting.from_config(cfg.data))  # model.json says which region the model sees
    model.info.modality = df.attrs["modality"]
    # what computes the frozen maps (model.json records it, so evaluate / predict_manifest use the same cache entries)
    model.info.extra["feature_runtime"] = "torch" if ctx.enabled and ctx.device.type == "cuda" else cfg.train.feature_runtime
    limits = ReadLimits.from_config(cfg.data)
    cache_dir = cfg.data.resolved_cache_dir()
    if ctx.enabled:  # each rank fills its shard of the cache (test images too), then all read it back
        model.to(ctx.device)
        extract_features(model, pd.concat([train, val, test]), cache_dir, progress=progress, limits=limits,
                         rank=ctx.rank, world_size=ctx.world_size)
        model.to("cpu")
        barrier()
    fs = extract_features(model, pd.concat([train, val]), cache_dir, progress=progress, limits=limits)
    timings["features_s"] = time.perf_counter() - t

    t = time.perf_counter()
    tr_idx, y_tr = features_for(fs, train)
    va_idx, y_va = features_for(fs, val)
    weights = None
    if cfg.train.sampling != "none":  # rows of the feature set (unreadable images are absent)
        weights = manifest_weights(fs.manifest.iloc[tr_idx], cfg.train.sampling, class_weighted=cfg.train.class_weighted,
                                   min_group=cfg.train.source_min_images)
    result: TrainResult = train_head(
        model.head, fs.tensor(tr_idx), y_tr, fs.tensor(va_idx), y_va, cfg.train, len(cfg.data.classes), progress=progress,
        sample_weight=weights,
    )
    history = {"head": result.history}
    timings["head_s"] = time.perf_counter() - t
    if cfg.train.finetune_blocks > 0:
        t = time.perf_counter()
        ft = finetune(model, train, val, cfg, run_dir, resume=resume, progress=progress)
        history["finetune"] = ft.history
        timings["finetune_s"] = time.perf_counter() - t

    if not ctx.is_main:  # rank 0 scores the test part and writes the run folder
        metrics, test_failures, timings = _share_from_main(ctx, None)
        return RunOutcome(run_dir, model, metrics, sizes, timings, fs.failures + test_failures)

    t = time.perf_counter()
    probs, kept, test_failures = predict_manifest(model, test, cache_dir, progress=progress, limits=limits)
    metrics = metrics_with_ci(kept["target"].to_numpy(), probs, kept["patient_id"].to_numpy(), cfg.data.classes)
    timings["test_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0
    _share_from_main(ctx, (metrics, test_failures, timings))

    save_run(model, run_dir)
    pd.DataFrame(probs, columns=[f"p_{c}" for c in cfg.data.classes]).assign(
        image=kept["relpath"].to_numpy(), patient_id=kept["patient_id"].to_numpy(), label=kept["label"].to_numpy(),
    ).to_csv(run_dir / "test_predictions.csv", index=False)
    failures = fs.failures + test_failures
    report = {
        "model": model.info.to_dict(),
        "protocol": "single held-out split, grouped by patient_id (no patient in two parts)",
        "split": sizes,
        "best_val_macro_f1": result.best_val_f1,
        "best_epoch": result.best_epoch,
        "test": metrics,
        "timings": timings,
        "distributed": {
            "world_size": ctx.world_size, "backend": dist.get_backend() if ctx.enabled else None,
            "head_global_batch": cfg.train.batch_size * ctx.world_size,
            "finetune_global_batch": cfg.train.finetune_batch_size * ctx.world_size,
        },
        "failures": [{"image": p, "error": e} for p, e in failures],
    }
    (run_dir / "metrics.json").write_text(json.dumps(report, indent=2))
    (run_dir / "history.json").write_text(json.dumps(history, indent=2))
    return RunOutcome(run_dir, model, metrics, sizes, timings, failures)
