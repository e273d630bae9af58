"""Lung masks for X-rays: batched, failure-tolerant, at each image's own size.

:class:`LungPredictor` runs a trained segmenter (torch or ONNX Runtime) on files,
bytes or arrays. Each result is a :class:`LungResult`: a bool mask at the original
image size (cleaned to the two largest connected regions, holes filled), or the
typed error that explains why there is none: an unreadable file
(:class:`~cxrdx.data.io.ImageReadError`) or :class:`NoLungsError` when the image is blank,
less than ``min_lung_fraction`` of it is lung, or the network is not confident about the lung
region (mean probability inside it under ``min_confidence``). :func:`lung_bbox` gives the box used
for ROI cropping and raises :class:`NoLungsError` the same way.

It lives in the features layer (not inference) because the one preprocessing path,
:class:`~cxrdx.features.roi.RegionOfInterest`, runs it inside feature extraction;

"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from PIL import Image

from ..data.io import ImageReadError, ReadLimits, expand_paths, read_image
from ..data.lungseg import resize_image
from ..models.segmenter import INPUT_NAME, ONNX_FILE, OUTPUT_NAME, LungSegmenter, load_segmenter, onnx_session


class NoLungsError(ImageReadError):
    """The segmenter found no (or too little) lung in the image."""

    code = "no_lungs"
    http_status = 422


@dataclass
class LungResult:
    source: str
    mask: np.ndarray | None = None
    """``HxW`` bool at the image's own size; None on error."""
    error: ImageReadError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def found(self) -> bool:
        """False when no lungs were found (``error`` is a :class:`NoLungsError`) or the image was unreadable."""
        return self.ok

    @property
    def lung_fraction(self) -> float | None:
        return None if self.mask is None else float(self.mask.mean())

    def to_dict(self) -> dict:
        out: dict = {"source": self.source, "lung_fraction": self.lung_fraction}
        if self.mask is not None and self.mask.any():
            out["bbox"] = list(lung_bbox(self.mask, min_fraction=0.0))
        if self.error is not None:
            out["error"] = {"code": self.error.code, "message": str(self.error)}
        return out


def clean_mask(mask: np.ndarray, keep: int = 2) -> np.ndarray:
    """Keep the ``keep`` largest 8-connected regions of a bool mask and fill their holes."""
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return np.zeros_like(mask, dtype=bool)
    if n > keep:
        sizes = np.bincount(labels.ravel())[1:]
        kept = np.argsort(sizes)[::-1][:keep] + 1
        mask = np.isin(labels, kept)
    return ndimage.binary_fill_holes(mask)


def lung_bbox(
    mask: np.ndarray, *, margin: float = 0.0, min_fraction: float = 0.02, name: str | None = None,
) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` (x1 / y1 exclusive) around the lungs, grown by ``margin`` x box size on each side
    and clipped to the image. Raises :class:`NoLungsError` when under ``min_fraction`` of the image is lung."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    fraction = float(mask.mean()) if mask.size else 0.0
    if not mask.any() or fraction < min_fraction:
        raise NoLungsError(f"no lungs found ({fraction:.1%} of the image is lung, minimum {min_fraction:.1%})", source=name)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    dy, dx = int(round(margin * (y1 - y0))), int(round(margin * (x1 - x0)))
    h, w = mask.shape
    return max(0, x0 - dx), max(0, y0 - dy), min(w, x1 + dx), min(h, y1 + dy)


def probabilities_to_mask(prob: np.ndarray, shape: tuple[int, int], threshold: float = 0.5, clean: bool = True) -> np.ndarray:
    """A network-size probability map -> bool mask at ``shape`` (bilinear upsampling, then threshold)."""
    img = Image.fromarray(prob.astype(np.float32), mode="F").resize((shape[1], shape[0]), Image.BILINEAR)
    mask = np.asarray(img) > threshold
    return clean_mask(mask) if clean else mask


class LungPredictor:
    """Batched lung masks from a :class:`LungSegmenter` (``runtime="torch"``) or its ONNX graph (``"onnx"``)."""

    def __init__(self, model: LungSegmenter, *, runtime: str = "torch", onnx_path: str | Path | None = None,
                 batch_size: int = 8, limits: ReadLimits | None = None, clean: bool = True, threads: int | None = None):
        self.model = model.eval()
        self.info = model.info
        self.batch_size = batch_size
        self.limits = limits or ReadLimits()
        self.clean = clean
        if runtime not in ("torch", "onnx"):
            raise ValueError(f"runtime must be 'torch' or 'onnx', got {runtime!r}")
        self.runtime = runtime
        self.session = onnx_session(onnx_path, threads) if runtime == "onnx" else None

    @property
    def size(self) -> int:
        return self.info.image_size

    def network_input(self, grey: np.ndarray) -> np.ndarray:
        """``uint8 HxW`` -> ``float32 (1, S, S)`` in [0, 1]."""
        return (resize_image(grey, self.size).astype(np.float32) / 255.0)[None]

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """``(N, 1, S, S)`` float32 -> lung probabilities ``(N, S, S)``."""
        if self.session is not None:
            logits = self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
            return torch.sigmoid(torch.from_numpy(np.ascontiguousarray(logits[:, 0]))).numpy()  # no exp overflow
        return self.model.probabilities(torch.from_numpy(batch))

    def _predict(self, arrays: list[np.ndarray]) -> list[tuple[np.ndarray, float]]:
        """``(bool mask at the array's size, mean lung probability inside the network-size mask)`` each."""
        out: list[tuple[np.ndarray, float]] = []
        for start in range(0, len(arrays), self.batch_size):
            chunk = arrays[start:start + self.batch_size]
            probs = self.probabilities(np.stack([self.network_input(a) for a in chunk]))
            for p, a in zip(probs, chunk):
                inside = p[p > self.info.threshold]
                confidence = float(inside.mean()) if inside.size else 0.0
                out.append((probabilities_to_mask(p, a.shape, self.info.threshold, self.clean), confidence))
        return out

    def predict_arrays(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """Bool masks at each array's size (no lung check: see :meth:`predict_results`)."""
        return [mask for mask, _ in self._predict(arrays)]

    def predict_results(self, arrays: list[np.ndarray], names: list[str] | None = None) -> list[LungResult]:
        """A checked :class:`LungResult` per uint8 array (no lungs -> ``error`` is a :class:`NoLungsError`)."""
        names = names or [f"image {i}" for i in range(len(arrays))]
        return [self.assess(n, a, m, c) for n, a, (m, c) in zip(names, arrays, self._predict(arrays))]

    def assess(self, name: str, grey: np.ndarray, mask: np.ndarray, confidence: float) -> LungResult:
        """The mask, flagged with :class:`NoLungsError` when the image is blank, the lung region is too small,
        or the network is not confident about it (a trained segmenter paints lungs even on a blank image)."""
        info = self.info
        contrast = int(grey.max()) - int(grey.min()) if grey.size else 0
        try:
            if contrast < info.min_contrast:
                raise NoLungsError(f"no lungs found: the image is blank (grey levels span {contrast})", source=name)
            lung_bbox(mask, min_fraction=info.min_lung_fraction, name=name)
            if confidence < info.min_confidence:
                raise NoLungsError(f"no lungs found: the lung region is not confident (mean probability "
                                   f"{confidence:.2f} < {info.min_confidence:.2f})", source=name)
        except NoLungsError as exc:
            return LungResult(name, mask, exc)
        return LungResult(name, mask)

    def predict_sources(self, sources: Iterable[tuple[str, str | Path | bytes | np.ndarray]]) -> list[LungResult]:
        """``(name, path | bytes | uint8 array)`` pairs -> one :class:`LungResult` each, in order."""
        results: list[LungResult | None] = []
        pending: list[tuple[int, str, np.ndarray]] = []

        def flush() -> None:
            predicted = self._predict([arr for _, _, arr in pending])
            for (i, name, grey), (mask, confidence) in zip(pending, predicted):
                results[i] = self.assess(name, grey, mask, confidence)
            pending.clear()

        for name, src in sources:
            results.append(None)
            try:
                grey = src if isinstance(src, np.ndarray) else read_image(src, name=name, limits=self.limits)
            except ImageReadError as exc:
                results[-1] = LungResult(name, error=exc)
                continue
            pending.append((len(results) - 1, name, grey))
            if len(pending) >= self.batch_size:
                flush()
        if pending:
            flush()
        return results  # type: ignore[return-value]

    def predict_paths(self, paths: Iterable[str | Path]) -> list[LungResult]:
        return self.predict_sources((str(p), p) for p in expand_paths(paths))


def create_lung_predictor(run_dir: str | Path, *, runtime: str = "torch", **kwargs) -> LungPredictor:
    """A :class:`LungPredictor` for a segmenter run folder (``runtime="onnx"`` needs ``segmenter.onnx``)."""
    model = load_segmenter(run_dir)
    onnx_path = Path(run_dir) / ONNX_FILE if runtime == "onnx" else None
    if onnx_path is not None and not onnx_path.is_file():
        raise FileNotFoundError(f"{onnx_path} not found: the run has no ONNX export")
    return LungPredictor(model, runtime=runtime, onnx_path=onnx_path, **kwargs)


def write_mask_png(mask: np.ndarray, path: str | Path) -> Path:
    """Save a bool mask as an 8-bit PNG (0 background, 255 lung), like the lungseg masks."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    return path
