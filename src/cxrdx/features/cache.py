"""Frozen-backbone feature cache.

The backbone's ``C x 7 x 7`` map of every image is computed once and stored on
disk under a key made of (backbone, weights, image size, variant, region of interest); each image's
entry is named by the SHA-1 of its file's bytes, so any subset of a dataset
(benchmark rows, folds, a user's own CSV) reuses what is already there. Heads,
folds and model comparisons then train in seconds.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from ..data.io import ImageReadError, ReadLimits, read_image
from ..data.transforms import build_transform, preprocess
from ..models.hybrid import HybridModel
from ..progress import progress_bar
from .onnx_backbone import OnnxBackbone, resolve_runtime
from .roi import RegionOfInterest

CACHE_VERSION = "v1"


def file_digest(path: str | Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def cache_key(backbone: str, weights_tag: str, image_size: int, variant: str = "plain", roi: str = "",
              runtime: str = "torch") -> str:
    """``roi``: :attr:`RegionOfInterest.key` (empty for the whole image, so those caches keep their key).
    ``runtime``: what computed the maps; ONNX Runtime's (not bit-identical to torch's) get an ``__onnx`` suffix."""
    return (f"{CACHE_VERSION}__{backbone}__{weights_tag}__{image_size}__{variant}" + (f"__{roi}" if roi else "")
            + ("" if runtime == "torch" else f"__{runtime}"))


@dataclass
class FeatureSet:
    """Features of the rows of ``manifest`` that could be read, in the same order."""

    features: np.ndarray
    """``[N, C, H, W]`` float16."""
    manifest: pd.DataFrame
    failures: list[tuple[str, str]] = field(default_factory=list)
    hits: int = 0
    misses: int = 0
    roi_fallbacks: list[str] = field(default_factory=list)
    """Images computed now whose ROI fell back to the whole image (no lungs found)."""

    def tensor(self, index: np.ndarray | None = None) -> torch.Tensor:
        arr = self.features if index is None else self.features[index]
        return torch.from_numpy(arr.astype(np.float32))

    def targets(self, index: np.ndarray | None = None) -> np.ndarray:
        t = self.manifest["target"].to_numpy()
        return t if index is None else t[index]

    def subset(self, mask: np.ndarray) -> "FeatureSet":
        idx = np.flatnonzero(mask) if mask.dtype == bool else mask
        return FeatureSet(self.features[idx], self.manifest.iloc[idx].reset_index(drop=True), self.failures)


class FeatureCache:
    def __init__(self, cache_dir: str | Path, key: str):
        self.root = Path(cache_dir) / "features" / key
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.root / digest[:2] / f"{digest}.npy"

    def get(self, digest: str) -> np.ndarray | None:
        p = self.path(digest)
        if not p.is_file():
            return None
        try:
            return np.load(p)
        except (ValueError, OSError, EOFError):
            p.unlink(missing_ok=True)  # a half-written entry from an interrupted run
            return None

    def put(self, digest: str, value: np.ndarray) -> None:
        p = self.path(digest)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f"{p.name}.{os.getpid()}.tmp")  # one per process: ranks may share a digest
        with open(tmp, "wb") as fh:
            np.save(fh, value.astype(np.float16))
        tmp.replace(p)


def extract_features(
    model: HybridModel,
    manifest: pd.DataFrame,
    cache_dir: str | Path,
    *,
    variant: str = "plain",
    image_fn: Callable[[np.ndarray, pd.Series], np.ndarray] | None = None,
    roi: RegionOfInterest | None = None,
    batch_size: int = 32,
    limits: ReadLimits | None = None,
    progress: bool = True,
    rank: int = 0,
    world_size: int = 1,
    runtime: str | None = None,
) -> FeatureSet:
    """Backbone maps for every row of ``manifest``, from the cache or computed now.

    Unreadable images are listed in ``failures`` and dropped, never fatal.
    With ``world_size > 1`` this process computes only its shard of the missing
    entries (``rank::world_size``); call again after a barrier to gather all.
    The backbone runs on the model's device, in fp32 (no autocast: cached maps
    must not depend on which machine computed them).

    ``roi``: the region of interest (default: the one ``model.info`` records, i.e. the whole image for
    models trained before ROIs). It is located on the decoded image; ``image_fn`` (a shortcut control)
    then alters the image, and the region is cut from the altered image.

    ``runtime``: ``torch`` or ``onnx`` (ONNX Runtime fp32 on the CPU, ~3x faster on small CPUs, its own cache
    entries: :mod:`cxrdx.features.onnx_backbone`); default: ``model.info.extra["feature_runtime"]``, else torch.
    With ``onnx`` the next batch is decoded in a thread while ONNX Runtime runs.
    """
    info = model.info
    roi = roi if roi is not None else RegionOfInterest.from_model_info(info)
    runtime = resolve_runtime(model, runtime)
    cache = FeatureCache(cache_dir, cache_key(info.backbone, info.weights_tag, info.image_size, variant, roi.key, runtime))
    transform = build_transform(info.image_size, model.spec.mean, model.spec.std, augment=False)
    digests: list[str | None] = []
    failures: list[tuple[str, str]] = []
    fallbacks: list[str] = []
    for path in manifest["image"]:
        try:
            digests.append(file_digest(path))
        except OSError as exc:
            digests.append(None)
            failures.append((str(path), f"cannot read file: {exc}"))
    found: dict[int, np.ndarray] = {}
    todo: list[int] = []
    for i, d in enumerate(digests):
        if d is None:
            continue
        hit = cache.get(d)
        if hit is not None:
            found[i] = hit
        else:
            todo.append(i)
    hits = len(found)
    mine = todo[rank::world_size]
    model.eval()
    device = next(model.parameters()).device
    if runtime == "onnx" and mine:
        forward = OnnxBackbone(model, cache_dir)
    else:
        def forward(batch: torch.Tensor) -> np.ndarray:
            with torch.inference_mode():
                return model.forward_features(batch.to(device)).float().cpu().numpy()

    def load(positions: list[int]) -> tuple[list[int], list[torch.Tensor], list[tuple[str, str]], list[str]]:
        """Read + preprocess one batch: kept rows, their tensors, failures, ROI fallbacks (no shared state)."""
        batch_idx, greys, failed, fell_back = [], [], [], []
        for i in positions:
            try:
                greys.append(read_image(manifest.iloc[i]["image"], limits=limits))
                batch_idx.append(i)
            except ImageReadError as exc:
                failed.append((str(manifest.iloc[i]["image"]), str(exc)))
        regions = roi.locate_many(greys) if greys and not roi.is_identity else [None] * len(greys)
        kept_idx, tensors = [], []
        for i, grey, where in zip(batch_idx, greys, regions):
            row = manifest.iloc[i]
            try:
                if image_fn is not None:
                    grey = image_fn(grey, row)
            except ImageReadError as exc:
                failed.append((str(row["image"]), str(exc)))
                continue
            if where is not None:
                grey = roi.apply(grey, where)
                if where.fallback:
                    fell_back.append(str(row["image"]))
            kept_idx.append(i)
            tensors.append(preprocess(grey, transform))
        return kept_idx, tensors, failed, fell_back

    batches = [mine[s : s + batch_size] for s in range(0, len(mine), batch_size)]
    read_ahead = runtime == "onnx"  # torch's OpenMP workers spin: a concurrent reader would slow them down
    with progress_bar(total=len(mine), description=f"features {info.backbone}", enabled=progress and len(mine) > 0) as bar, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="cxrdx-features") as reader:
        pending = reader.submit(load, batches[0]) if read_ahead and batches else None
        for n, positions in enumerate(batches):
            if read_ahead:
                loaded = pending.result()
                pending = reader.submit(load, batches[n + 1]) if n + 1 < len(batches) else None
            else:
                loaded = load(positions)
            batch_idx, tensors, failed, fell_back = loaded
            failures.extend(failed)
            fallbacks.extend(fell_back)
            if tensors:
                fmap = forward(torch.stack(tensors))
                for i, f in zip(batch_idx, fmap):
                    cache.put(digests[i], f)
                    found[i] = f.astype(np.float16)
            bar.advance(len(positions))
    order = sorted(found)
    feats = np.stack([found[i] for i in order]) if order else np.zeros((0, model.spec.channels, 7, 7), np.float16)
    kept = manifest.iloc[order].reset_index(drop=True)
    return FeatureSet(feats, kept, failures, hits=hits, misses=len(mine), roi_fallbacks=fallbacks)
