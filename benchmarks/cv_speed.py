"""Time 5-fold patient-grouped CV of each head (and the baselines) on cached DarkCovidNet features.

    python benchmarks/cv_speed.py --set data.cache_dir=/tmp/cxcache [--models pool,bilstm,logreg]

Prints seconds per model for the 5 folds (features must already be cached: the
first run extracts them) plus the machine's load average, since a busy
machine slows everything down.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from cxrdx.config import load_config
from cxrdx.evaluation.benchmark import task_classes, task_manifest
from cxrdx.evaluation.cv import Candidate, fold_plan, run_cv
from cxrdx.evaluation.feature_maps import aligned, feature_maps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="pool,lstm,gru,bilstm,bigru,attention,svm,logreg")
    ap.add_argument("--task", default="3class")
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    cfg = load_config(None, args.set)
    ev = cfg.evaluation
    rows = task_manifest(cfg.data.resolved_root(), args.task, benchmark="darkcovidnet")
    maps, kept = feature_maps(rows, cfg.data.resolved_cache_dir(), progress=True)
    maps = aligned(maps, kept, rows)
    plan = fold_plan(rows, ev.folds, ev.fold_seed, ev.val_fraction)
    print(f"{len(rows)} images, {ev.folds} folds, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for model in args.models.split(","):
        t = time.perf_counter()
        run = run_cv(maps, rows, task_classes(args.task),
                     Candidate.parse(model), ev, model_cfg=cfg.model, train_cfg=cfg.train, plan=plan, progress=False)
        seconds = time.perf_counter() - t
        epochs = [f.info.get("epochs_run") for f in run.folds]
        y = rows["target"].to_numpy()
        acc = np.mean([(f.test_probs.argmax(1) == y[f.test_idx]).mean() for f in run.folds])
        print(f"{model:10s} {seconds:7.1f} s for {ev.folds} folds  (mean test-fold accuracy {acc:.3f}; "
              f"epochs run per fold: {epochs}; load {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
