"""Prediction from a trained model on files, bytes, arrays or a manifest.

One bad input never stops a batch: each result is either probabilities or the
typed :class:`~cxrdx.data.io.ImageReadError` that explains the failure.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import torch

from ..data.io import ImageReadError, ReadLimits, expand_paths, read_image
from ..data.transforms import build_transform, preprocess
from ..features.cache import extract_features
from ..features.roi import RegionOfInterest, RoiInfo
from ..models.hybrid import HybridModel
from ..models.outputs import predict_proba, probabilities


@dataclass
class Prediction:
    source: str
    probabilities: dict[str, float] | None = None
    predicted: str | None = None
    error: ImageReadError | None = None
    extra: dict = field(default_factory=dict)
    roi: RoiInfo | None = None
    """The region of interest the model saw (None for models trained on the whole image)."""

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def roi_fallback(self) -> bool:
        """True when the segmenter found no lungs and the whole image was used instead."""
        return self.roi is not None and self.roi.fallback

    def to_dict(self) -> dict:
        out = {"source": self.source, "predicted": self.predicted, "probabilities": self.probabilities}
        if self.roi is not None:
            out["roi"], out["roi_fallback"] = self.roi.to_dict(), self.roi.fallback
        if self.error is not None:
            out["error"] = {"code": self.error.code, "message": str(self.error)}
        return out


def _done(fn):
    """``chunk -> finished Future of fn(chunk)``: the synchronous stand-in for a reader thread."""

    def run(chunk):
        future: Future = Future()
        future.set_result(fn(chunk))
        return future

    return run


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of ``model``'s first weight (the CPU for a model without any)."""
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


class Predictor:
    """Wraps a :class:`HybridModel` for batched, failure-tolerant inference."""

    read_ahead: bool = False
    """Decode the next batch in a thread while the model runs. Off for torch: its OpenMP workers busy-wait
    between operators, so a concurrent reader slows it (-14 % on 2 cores); on for ONNX Runtime, whose idle
    workers sleep (:class:`~cxrdx.inference.onnx_runtime.OnnxPredictor`, +9 %)."""

    screen = None
    """An :class:`~cxrdx.inference.guard.Screen` (input guard) that refuses non-chest images, or None."""

    guard_features: bool = False
    """The runtime's own pass also gives the input guard's pooled features (:meth:`probabilities_and_pooled`;
    the fp32 ONNX graph), so the guard needs no torch backbone pass of its own."""

    tta: bool = False
    """Test-time augmentation: average the probabilities of each image and its left-right mirror (off by default)."""

    def __init__(self, model: HybridModel, limits: ReadLimits | None = None, batch_size: int = 16,
                 roi: RegionOfInterest | None = None, tta: bool = False):
        self.model = model.eval()
        self.device = model_device(model)
        """Where the model runs (its weights' device): batches are moved there, probabilities come back to the CPU."""
        self.tta = tta
        self.roi = roi if roi is not None else RegionOfInterest.from_model_info(model.info)
        """The region of interest (default: the one the model was trained with, from ``model.json``)."""
        self.limits = limits or ReadLimits()
        self.batch_size = batch_size
        self.transform = build_transform(model.info.image_size, model.spec.mean, model.spec.std)

    @property
    def classes(self) -> list[str]:
        return self.model.classes

    def tensor(self, grey: np.ndarray) -> torch.Tensor:
        """Decoded image -> model input (region of interest, then resize + normalise)."""
        return self.prepare(grey)[0]

    def prepare(self, grey: np.ndarray, where: RoiInfo | None = None) -> tuple[torch.Tensor, RoiInfo | None]:
        """Model input and the region it shows (None for whole-image models); ``where``: already located."""
        if self.roi.is_identity:
            return preprocess(grey, self.transform), None
        where = where if where is not None else self.roi.locate(grey)
        return preprocess(self.roi.apply(grey, where), self.transform), where

    @torch.inference_mode()
    def probabilities(self, batch: torch.Tensor) -> np.ndarray:
        batch = batch.to(self.device)
        probs = probabilities(self.model(batch)).cpu().numpy()
        if self.tta:  # mean over the image and its mirror
            probs = (probs + probabilities(self.model(batch.flip(-1))).cpu().numpy()) / 2
        return probs

    def predict_arrays(self, arrays: list[np.ndarray]) -> np.ndarray:
        out = []
        for start in range(0, len(arrays), self.batch_size):
            batch = torch.stack([self.tensor(a) for a in arrays[start : start + self.batch_size]])
            out.append(self.probabilities(batch))
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)

    def _result(self, source: str, probs: np.ndarray, roi: RoiInfo | None = None) -> Prediction:
        return Prediction(
            source=source,
            probabilities={c: float(p) for c, p in zip(self.classes, probs)},
            predicted=self.classes[int(np.argmax(probs))],
            roi=roi,
        )

    def _read_chunk(self, chunk: list[tuple[str, str | Path | bytes]]
                    ) -> list[tuple[str, torch.Tensor | ImageReadError, RoiInfo | None]]:
        """Read and preprocess one batch of sources (one batched segmenter call for the regions of interest);
        a bad file becomes its error, never an exception."""
        read: list[tuple[str, np.ndarray | ImageReadError]] = []
        for name, src in chunk:
            try:
                read.append((name, read_image(src, name=Path(name).name, limits=self.limits)))
            except ImageReadError as exc:
                read.append((name, exc))
        greys = [x for _, x in read if isinstance(x, np.ndarray)]
        located = iter(self.roi.locate_many(greys) if greys and not self.roi.is_identity else [None] * len(greys))
        return [(name, *self.prepare(x, next(located))) if isinstance(x, np.ndarray) else (name, x, None)
                for name, x in read]

    def predict_sources(self, sources: Iterable[tuple[str, str | Path | bytes]]) -> list[Prediction]:
        """``(name, path-or-bytes)`` pairs -> one :class:`Prediction` each, in order.

        Sources are read ``batch_size`` at a time. With :attr:`read_ahead`, a
        reader thread decodes and preprocesses the next batch while the model
        runs on this one, so decoding hides behind inference.
        """
        results: list[Prediction] = []
        chunks = iter(lambda it=iter(sources): list(islice(it, self.batch_size)), [])
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cxrdx-read") as reader:
            read = (lambda chunk: reader.submit(self._read_chunk, chunk)) if self.read_ahead else _done(self._read_chunk)
            ahead = read(next(chunks, []))
            while True:
                items = ahead.result()
                if not items:
                    break
                ahead = read(next(chunks, []))
                ok = [(len(results) + i, x) for i, (_, x, _) in enumerate(items) if isinstance(x, torch.Tensor)]
                results.extend(Prediction(source=name, error=None if isinstance(x, torch.Tensor) else x, roi=where)
                               for name, x, where in items)
                if ok:
                    probs, refused = self.answer(torch.stack([x for _, x in ok]), [results[i].source for i, _ in ok])
                    for (i, _), p, err in zip(ok, probs, refused):
                        results[i] = (self._result(results[i].source, p, results[i].roi) if err is None
                                      else Prediction(results[i].source, error=err, roi=results[i].roi))
        return results

    def answer(self, batch: torch.Tensor, names: list[str]) -> tuple[np.ndarray, list[ImageReadError | None]]:
        """Probabilities, and per image the input guard's refusal (None: accepted; always None without a guard)."""
        if self.screen is None:
            return self.probabilities(batch), [None] * len(names)
        if self.guard_features:  # ONNX fp32: the guard reads the graph's own pooled features (one backbone pass)
            probs, feats = self.probabilities_and_pooled(batch)
            return probs, self.screen.refusals(feats, names)
        probs, refused = self.screen.screen(batch, names, head=self.model is not None and self.model is self.screen.model)
        return (probs if probs is not None else self.probabilities(batch)), refused

    def predict_paths(self, paths: Iterable[str | Path]) -> list[Prediction]:
        return self.predict_sources((str(p), p) for p in expand_paths(paths))


def predict_manifest(
    model: HybridModel, manifest: pd.DataFrame, cache_dir: str | Path, *, progress: bool = True,
    limits: ReadLimits | None = None,
) -> tuple[np.ndarray, pd.DataFrame, list[tuple[str, str]]]:
    """Probabilities for every readable row of ``manifest`` (``kept`` rows, in order).

    A model with a frozen backbone reuses the feature cache; a fine-tuned one
    runs end to end.
    """
    if model.info.extra.get("finetuned"):
        predictor = Predictor(model, limits=limits)
        preds = predictor.predict_paths(manifest["image"])
        ok = [i for i, p in enumerate(preds) if p.ok]
        probs = np.array([[preds[i].probabilities[c] for c in model.classes] for i in ok])
        failures = [(p.source, str(p.error)) for p in preds if not p.ok]
        return probs.reshape(len(ok), len(model.classes)), manifest.iloc[ok].reset_index(drop=True), failures
    fs = extract_features(model, manifest, cache_dir, progress=progress, limits=limits)
    return predict_proba(model.head, fs.tensor(), num_classes=len(model.classes)), fs.manifest, fs.failures
