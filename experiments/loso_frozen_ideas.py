"""Four domain-generalisation ideas on frozen features, under cxrdx's leave-one-source-out folds (issue 12).

Measurement script behind docs/generalisation.md ("four more ideas on frozen features"); none of the ideas is a
cxrdx setting, because none moved the held-out sources. Everything comes from the library: the task's manifest,
the cached backbone maps (``data.*`` settings, ``CXRDX_CACHE``), the LOSO folds of ``cxrdx cv --by source``
(:func:`cxrdx.evaluation.loso.source_plan`) and its per-source metrics with patient-bootstrap CIs. Each idea is
scored beside its own unchanged baseline on the same folds, with a linear model on the pooled maps:

* ``baseline``: cxrdx's logistic-regression baseline (C 0.01, balanced classes) on standardised pooled features.
* ``nullspace-K``: iterative null-space projection, K rounds: within each class, a source classifier on the
  training sources; its directions are projected out of the features before the classifier.
* ``familiarity``: cosine distance to the 10th nearest training image; AUROC of held-out images against the
  training sources' validation images, and the share above the validation 95th percentile.
* ``archive-prior``: a linear head trained with a fixed per-archive log prior of the labels added to its logits
  (product of experts), dropped at test time; ``linear`` is the same head without the prior.
* ``processing-K``: the baseline trained on the clean maps plus K processing-randomised copies of every training
  image (crop, rotation, unsharp mask or blur, equalise or auto-contrast, gamma, contrast, brightness; seeded per
  image and copy, cached as their own feature variants); validation and held-out images are never altered.

    CXRDX_CACHE=/path/to/cache python experiments/loso_frozen_ideas.py --out runs/loso-ideas.json
"""

from __future__ import annotations

import argparse
import json
import math
import re
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.preprocessing import StandardScaler

from cxrdx.config import load_config
from cxrdx.evaluation.baselines import BASELINES
from cxrdx.evaluation.benchmark import task_classes, task_manifest
from cxrdx.evaluation.compare import config_maps
from cxrdx.evaluation.feature_maps import aligned, backbone_model
from cxrdx.evaluation.loso import source_column, source_metrics, source_plan
from cxrdx.features.cache import extract_features
from cxrdx.features.roi import RegionOfInterest


def processing_copy(k: int):
    """An ``image_fn``: the k-th processing-randomised copy of a decoded greyscale image (seeded by path and k)."""

    def fn(grey: np.ndarray, row) -> np.ndarray:
        rng = np.random.default_rng([k, zlib.crc32(str(row["image"]).encode())])
        im = Image.fromarray(grey)
        w, h = im.size
        area, ratio = rng.uniform(0.7, 1.0) * w * h, math.exp(rng.uniform(math.log(0.8), math.log(1.25)))
        cw, ch = min(w, round(math.sqrt(area * ratio))), min(h, round(math.sqrt(area / ratio)))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        im = im.crop((x0, y0, x0 + cw, y0 + ch)).rotate(float(rng.uniform(-7, 7)), resample=Image.BILINEAR)
        u = rng.random()
        if u < 0.4:
            im = im.filter(ImageFilter.UnsharpMask(radius=float(rng.uniform(1.5, 12)), percent=int(rng.uniform(50, 200)),
                                                   threshold=0))
        elif u < 0.7:
            im = im.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.0))))
        u = rng.random()
        if u < 0.15:
            im = ImageOps.equalize(im)
        elif u < 0.3:
            im = ImageOps.autocontrast(im, cutoff=1)
        x = (np.asarray(im, dtype=np.float32) / 255) ** math.exp(rng.uniform(math.log(0.6), math.log(1.6)))
        x = (x - 0.5) * rng.uniform(0.7, 1.3) + 0.5 + rng.uniform(-0.1, 0.1)
        return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)

    return fn


def pooled(maps: np.ndarray, kept, rows) -> np.ndarray:
    """Mean over the grid of each row's map, in the order of ``rows``."""
    return aligned(maps, kept, rows).astype(np.float32).mean(axis=(2, 3))


def logreg(train_x, train_y, test_x):
    """cxrdx's own logistic-regression baseline (``BASELINES["logreg"]``) at C 0.01, the value its folds choose here."""
    clf = BASELINES.get("logreg").make(0.01, 0).fit(train_x, train_y)
    return clf.predict_proba, clf.predict_proba(test_x)


def nullspace(x, y, groups, rounds: int, min_images: int = 20) -> np.ndarray:
    """Projection removing, ``rounds`` times, the directions that tell the sources apart within each class."""
    proj = np.eye(x.shape[1])
    for _ in range(rounds):
        dirs = []
        for c in np.unique(y):
            names, counts = np.unique(groups[y == c], return_counts=True)
            keep = (y == c) & np.isin(groups, names[counts >= min_images])
            if len(np.unique(groups[keep])) >= 2:
                dirs.append(LogisticRegression(C=0.05, max_iter=300, class_weight="balanced")
                            .fit(x[keep] @ proj, groups[keep]).coef_)
        if not dirs:
            break
        q, _ = np.linalg.qr(np.concatenate(dirs).T)
        proj = proj @ (np.eye(x.shape[1]) - q @ q.T)
    return proj


def linear_head(x, y, archive, val_x, val_y, test_x, prior: bool, n_classes: int, seed: int = 0):
    """Linear softmax head (dropout 0.2, L2 1e-3, full batch Adam, best validation macro-F1 of 30 checks);
    with ``prior`` the training logits get the fixed log p(label | archive)."""
    torch.manual_seed(seed)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    t = lambda a: torch.tensor((a - mu) / sd, dtype=torch.float32)  # noqa: E731
    names = sorted(set(archive))
    counts = np.array([[np.sum((archive == a) & (y == k)) for k in range(n_classes)] for a in names], float) + 0.5
    bias = torch.tensor(np.log(counts / counts.sum(1, keepdims=True)), dtype=torch.float32)[[names.index(a) for a in archive]]
    head = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(x.shape[1], n_classes))
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    weight = torch.tensor(len(y) / (n_classes * np.bincount(y, minlength=n_classes).clip(1)), dtype=torch.float32)
    xt, yt, xv = t(x), torch.tensor(y), t(val_x)
    best = (-1.0, None)
    for epoch in range(300):
        head.train()
        opt.zero_grad()
        logits = head(xt) + (bias if prior else 0)
        loss = torch.nn.functional.cross_entropy(logits, yt, weight=weight) + 1e-3 * (head[1].weight ** 2).sum()
        loss.backward()
        opt.step()
        if epoch % 10 == 9:
            head.eval()
            with torch.no_grad():
                score = f1_score(val_y, head(xv).argmax(1).numpy(), average="macro")
            if score > best[0]:
                best = (score, {k: v.clone() for k, v in head.state_dict().items()})
    head.load_state_dict(best[1])
    head.eval()
    with torch.no_grad():
        return best[0], torch.softmax(head(t(test_x)), 1).numpy()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="3class")
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--copies", type=int, default=4, help="Processing-randomised copies per training image.")
    p.add_argument("--rounds", default="1,6", help="Null-space projection rounds to try.")
    p.add_argument("--out", type=Path, required=True, help="JSON results.")
    p.add_argument("--set", dest="sets", action="append", default=[], help="Config override key=value (as cxrdx --set).")
    args = p.parse_args(argv)

    cfg = load_config(None, args.sets)
    ev = cfg.evaluation
    classes = task_classes(args.task)
    manifest = task_manifest(cfg.data.resolved_root(), args.task)
    maps, kept = config_maps(cfg, manifest, args.backbone, progress=False)
    rows = manifest[manifest["image"].isin(set(kept["image"]))].reset_index(drop=True)
    x = pooled(maps, kept, rows)
    copies = []
    model = backbone_model(args.backbone, cfg.model.weights, cfg.data.image_size)
    for k in range(args.copies):
        fs = extract_features(model, rows, cfg.data.resolved_cache_dir(), variant=f"processing-v1-{k}",
                              image_fn=processing_copy(k), roi=RegionOfInterest.from_config(cfg.data), progress=False,
                              runtime="onnx")
        copies.append(pooled(fs.features, fs.manifest, rows))
    y = rows["target"].to_numpy()
    patients = rows["patient_id"].astype(str).to_numpy()
    sources = source_column(rows).to_numpy()
    archive = np.array([(re.match(r"[A-Za-z]+", p) or [s])[0] for p, s in zip(patients, sources)])
    plan = source_plan(rows, ev.min_source_images, ev.fold_seed, ev.val_fraction)
    rounds = [int(r) for r in args.rounds.split(",") if r]

    results: dict = {"task": args.task, "backbone": args.backbone, "copies": args.copies, "sources": {}}
    held_probs: dict[str, list] = {}
    for source, (train, val, test) in zip(plan.sources, plan.folds):
        out = results["sources"][source] = {}

        def score(name, probs, val_f1=None):
            m = source_metrics(y[test], probs, patients[test], classes, ev)
            out[name] = {"accuracy": m["accuracy"], "accuracy_ci": m["ci"]["accuracy"], "val_macro_f1": val_f1}
            held_probs.setdefault(name, []).append((test, probs))

        predict, probs = logreg(x[train], y[train], x[test])
        score("baseline", probs, f1_score(y[val], predict(x[val]).argmax(1), average="macro"))
        for r in rounds:
            scaler = StandardScaler().fit(x[train])
            proj = nullspace(scaler.transform(x[train]), y[train], sources[train], r)
            z = lambda i: scaler.transform(x[i]) @ proj  # noqa: E731
            clf = LogisticRegression(C=0.01, max_iter=500, class_weight="balanced").fit(z(train), y[train])
            score(f"nullspace-{r}", clf.predict_proba(z(test)), f1_score(y[val], clf.predict(z(val)), average="macro"))
        for prior in (False, True):
            f1, probs = linear_head(x[train], y[train], archive[train], x[val], y[val], x[test], prior, len(classes))
            score("archive-prior" if prior else "linear", probs, f1)
        if copies:
            aug_x = np.concatenate([x[train]] + [c[train] for c in copies])
            predict, probs = logreg(aug_x, np.tile(y[train], len(copies) + 1), x[test])
            score(f"processing-{len(copies)}", probs, f1_score(y[val], predict(x[val]).argmax(1), average="macro"))
        ref = x[train] / np.linalg.norm(x[train], axis=1, keepdims=True)
        dist = lambda i: np.sort(1 - (x[i] / np.linalg.norm(x[i], axis=1, keepdims=True)) @ ref.T, axis=1)[:, 9]  # noqa: E731
        dv, dt = dist(val), dist(test)
        out["familiarity"] = {"auroc_vs_validation": float(roc_auc_score(np.r_[np.zeros(len(dv)), np.ones(len(dt))], np.r_[dv, dt])),
                              "flagged_at_val95": float(np.mean(dt > np.quantile(dv, 0.95)))}
        print(source, json.dumps({k: round(v["accuracy"], 3) for k, v in out.items() if "accuracy" in v}),
              "familiarity AUROC", round(out["familiarity"]["auroc_vs_validation"], 3), flush=True)
    results["all_held_out"] = {}
    for name, parts in held_probs.items():
        idx = np.concatenate([t for t, _ in parts])
        probs = np.concatenate([p for _, p in parts])
        m = source_metrics(y[idx], probs, patients[idx], classes, ev)
        val_f1 = [results["sources"][s][name]["val_macro_f1"] for s in plan.sources]
        results["all_held_out"][name] = {"accuracy": m["accuracy"], "accuracy_ci": m["ci"]["accuracy"],
                                         "mean_val_macro_f1": float(np.mean(val_f1))}
        ci = m["ci"]["accuracy"]
        print(f"all held out, {name}: {m['accuracy']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}], "
              f"mean validation macro-F1 {np.mean(val_f1):.3f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
