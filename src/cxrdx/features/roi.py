"""Region of interest: the one preprocessing step between decoding an X-ray and the classifier's transform.

``data.roi`` (:data:`ROIS`): ``full`` (the whole image, no segmenter), ``lung_crop`` (the lungs'
bounding box from the lung segmenter, grown by ``data.roi_margin`` x the box size on each side) or
``lung_mask`` (the same crop with everything outside the dilated lung mask set to mid-grey).
``data.intensity`` (:data:`INTENSITIES`): ``none``, ``equalize`` (global histogram equalisation) or
``clahe`` (contrast-limited adaptive equalisation), both OpenCV, applied to the region.
``data.fit`` (:data:`FITS`): ``squash`` (the region resized to the square input as it is) or ``square``
(the region made square around its centre first, so that an archive's aspect ratio, e.g. 1:1 NIH films
against 1.2:1 films elsewhere, is not a cue the model can use).

:class:`RegionOfInterest` is built once from the config (training) or from a run folder's
``model.json`` (prediction); the segmenter is loaded lazily on first use. Feature extraction, the
torch and ONNX predictors (hence ``cxrdx predict`` and the server) and Grad-CAM all call it, so a
model always sees the region it was trained on. When the segmenter finds no lungs, the whole image
is used and :attr:`RoiInfo.fallback` says so: never an exception.

    >>> roi = RegionOfInterest(RoiSetting("lung_crop", lung_model="runs/lungs/seg-v1"))
    >>> region, info = roi(grey)          # uint8 region, RoiInfo(box=(x0, y0, x1, y1), fallback=False, ...)
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..data.lungseg import resize_mask
from ..registry import Registry
from .lungs import LungPredictor, NoLungsError, create_lung_predictor, lung_bbox

ROIS: Registry[str] = Registry("rois", describe=lambda text: text)
ROIS.register("full", "the whole image (no segmenter)")
ROIS.register("lung_crop", "crop to the lungs' bounding box (+ data.roi_margin), then resize")
ROIS.register("lung_mask", "lung_crop with everything outside the dilated lung mask greyed out")

FITS: Registry[str] = Registry("fits", describe=lambda text: text)
FITS.register("squash", "the region is resized to the square input as it is (its aspect ratio distorts the anatomy)")
FITS.register("square", "the region is first made square around its centre: the short side grows where the image "
                        "allows, then the long side is cut to match (the aspect ratio no longer reaches the model)")

INTENSITIES: Registry[str] = Registry("intensities", describe=lambda text: text)
INTENSITIES.register("none", "grey levels as decoded")
INTENSITIES.register("equalize", "global histogram equalisation (OpenCV equalizeHist)")
INTENSITIES.register("clahe", "contrast-limited adaptive histogram equalisation (OpenCV, clip 2, 8x8 tiles)")

ROI_VERSION = "r1"
"""Bumped whenever the region computed for the same image and setting changes (part of the cache key)."""
FILL = 128
MEMO_SIZE = 4096
"""Grey level outside the lungs for ``lung_mask``."""
EXTRA_KEY = "roi"
"""Key of the ROI setting in ``model.json``'s ``extra`` (absent = full image, no intensity change)."""


class RoiError(ValueError):
    """An ROI setting that cannot be used (no segmenter, or not the one the model was trained with)."""


def segmenter_digest(run_dir: str | Path) -> str:
    """``sha256:`` + 16 hex digits of the segmenter's weights and JSON: its identity in cache keys and runs."""
    from ..models.segmenter import SegmenterError
    from ..models.segmenter import segmenter_digest as digest

    try:
        return digest(run_dir)
    except SegmenterError as exc:
        raise RoiError(f"data.lung_model: {exc}") from None


@dataclass(frozen=True)
class RoiSetting:
    """What region a model sees; recorded in ``model.json`` (``extra["roi"]``) unless it is the identity."""

    roi: str = "full"
    intensity: str = "none"
    margin: float = 0.05
    lung_model: str | None = None
    """Segmenter run folder (absolute once resolved); needed unless ``roi == "full"``."""
    lung_digest: str | None = None
    fit: str = "squash"

    def __post_init__(self):
        ROIS.check(self.roi)
        INTENSITIES.check(self.intensity)
        FITS.check(self.fit)
        if not 0 <= self.margin <= 1:
            raise RoiError(f"data.roi_margin: {self.margin} is out of range; it must be between 0 and 1")

    @property
    def is_identity(self) -> bool:
        """Full image, grey levels untouched: exactly the behaviour before ROIs existed."""
        return self.roi == "full" and self.intensity == "none" and self.fit == "squash"

    @property
    def key(self) -> str:
        """Feature-cache key part: empty for the identity (old caches stay valid), else the whole setting."""
        if self.is_identity:
            return ""
        fit = "" if self.fit == "squash" else f"-{self.fit}"
        if self.roi == "full":
            return f"full-{self.intensity}{fit}"
        return f"{self.roi}-m{self.margin:g}-{self.intensity}-seg{(self.lung_digest or '')[7:19]}-{ROI_VERSION}{fit}"

    def resolved(self) -> "RoiSetting":
        """With the segmenter's absolute path and digest (checked to exist) when a segmenter is needed."""
        if self.roi == "full":
            return RoiSetting("full", self.intensity, self.margin, fit=self.fit)
        if not self.lung_model:
            raise RoiError(f"data.roi={self.roi} needs data.lung_model (a `cxrdx lungs train` run folder)")
        path = Path(self.lung_model).expanduser().resolve()
        return RoiSetting(self.roi, self.intensity, self.margin, str(path), segmenter_digest(path), self.fit)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict | None) -> "RoiSetting":
        raw = raw or {}
        return cls(**{k: raw[k] for k in ("roi", "intensity", "margin", "lung_model", "lung_digest", "fit") if k in raw})

    @classmethod
    def from_config(cls, data) -> "RoiSetting":
        """From a :class:`~cxrdx.config.DataConfig` (``roi``, ``intensity``, ``roi_margin``, ``lung_model``, ``fit``),
        resolved."""
        return cls(data.roi, data.intensity, float(data.roi_margin), data.lung_model, fit=data.fit).resolved()

    @classmethod
    def from_model_info(cls, info) -> "RoiSetting":
        """The setting a model was trained with (``info.extra["roi"]``; none recorded = identity)."""
        return cls.from_dict(info.extra.get(EXTRA_KEY))


def record_setting(info, setting: RoiSetting) -> None:
    """Write ``setting`` into a model's ``info.extra`` (nothing for the identity: old run folders are unchanged)."""
    if setting.is_identity:
        info.extra.pop(EXTRA_KEY, None)
    else:
        info.extra[EXTRA_KEY] = setting.to_dict()


@dataclass
class RoiInfo:
    """Where the region of one image came from."""

    roi: str
    """The setting asked for."""
    applied: str
    """What was done: the setting, or ``full`` after a fallback."""
    box: tuple[int, int, int, int]
    """``(x0, y0, x1, y1)`` of the region in the original image (x1 / y1 exclusive)."""
    size: tuple[int, int]
    """The original image's ``(height, width)``."""
    intensity: str = "none"
    fallback: bool = False
    """True when the segmenter found no lungs and the whole image was used."""
    reason: str | None = None
    lung_fraction: float | None = None
    mask: np.ndarray | None = field(default=None, repr=False, compare=False)
    """The lung mask at the original size (None for ``full``)."""

    def to_dict(self) -> dict:
        return {"roi": self.roi, "applied": self.applied, "box": list(self.box), "intensity": self.intensity,
                "fallback": self.fallback, "reason": self.reason,
                "lung_fraction": None if self.lung_fraction is None else round(self.lung_fraction, 4)}


def adjust_intensity(grey: np.ndarray, intensity: str) -> np.ndarray:
    """``none`` / ``equalize`` / ``clahe`` on a uint8 image."""
    import cv2

    INTENSITIES.check(intensity)
    grey = np.ascontiguousarray(grey, dtype=np.uint8)
    if intensity == "equalize":
        return cv2.equalizeHist(grey)
    if intensity == "clahe":
        return cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(grey)
    return grey


def square_box(box: tuple[int, int, int, int], shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """``box`` (x0, y0, x1, y1) made square around its centre inside an image of ``shape`` (h, w): the short side
    grows to the long one as far as the image allows, then the long side is cut to the same length."""
    h, w = shape[:2]
    x0, y0, x1, y1 = box
    side = min(max(x1 - x0, y1 - y0), w, h)

    def span(lo: int, hi: int, limit: int) -> tuple[int, int]:
        start = (lo + hi - side) // 2  # centred, then shifted back inside the image
        start = min(max(start, 0), limit - side)
        return start, start + side

    (nx0, nx1), (ny0, ny1) = span(x0, x1, w), span(y0, y1, h)
    return nx0, ny0, nx1, ny1


def dilate(mask: np.ndarray, radius: float, max_side: int = 512) -> np.ndarray:
    """Grow a bool mask by ``radius`` pixels (Euclidean), computed at most ``max_side`` px for big images."""
    from scipy import ndimage

    if radius <= 0 or not mask.any():
        return mask
    h, w = mask.shape
    scale = min(1.0, max_side / max(h, w))
    small = mask if scale == 1.0 else resize_mask(mask, (max(1, round(h * scale)), max(1, round(w * scale))))
    grown = ndimage.distance_transform_edt(~small) <= radius * scale
    return grown if scale == 1.0 else resize_mask(grown, (h, w))


_SHARED: dict[tuple, "RegionOfInterest"] = {}
_SHARED_LOCK = threading.Lock()


class RegionOfInterest:
    """``roi(grey) -> (region, RoiInfo)``; see the module docstring. Thread-safe; the segmenter loads once."""

    def __init__(self, setting: RoiSetting | None = None, *, runtime: str = "auto", threads: int | None = None):
        self.setting = setting or RoiSetting()
        self.runtime = runtime
        self.threads = threads
        self._lungs: LungPredictor | None = None
        self._lock = threading.Lock()
        self._memo: OrderedDict[bytes, tuple[np.ndarray, tuple[int, ...], NoLungsError | None]] = OrderedDict()
        """Image hash -> packed lung mask: the shortcut controls cut the same regions again without the segmenter."""

    @classmethod
    def shared(cls, setting: RoiSetting, runtime: str = "auto", threads: int | None = None) -> "RegionOfInterest":
        """One instance per (setting, runtime) in this process, so a segmenter is loaded once."""
        key = (setting, runtime, threads)
        with _SHARED_LOCK:
            if key not in _SHARED:
                _SHARED[key] = cls(setting, runtime=runtime, threads=threads)
            return _SHARED[key]

    @classmethod
    def from_config(cls, data, **kwargs) -> "RegionOfInterest":
        """The ROI of a :class:`~cxrdx.config.DataConfig` (segmenter path resolved and digested)."""
        return cls.shared(RoiSetting.from_config(data), **kwargs)

    @classmethod
    def from_model_info(cls, info, *, check: bool = True, **kwargs) -> "RegionOfInterest":
        """The ROI a model was trained with; ``check`` refuses a segmenter that changed since."""
        setting = RoiSetting.from_model_info(info)
        if check and setting.roi != "full":
            current = segmenter_digest(setting.lung_model)
            if current != setting.lung_digest:
                raise RoiError(f"the lung segmenter {setting.lung_model} is {current}, but the model was trained "
                               f"with {setting.lung_digest}: restore that segmenter or retrain the model")
        return cls.shared(setting, **kwargs)

    @property
    def key(self) -> str:
        return self.setting.key

    @property
    def is_identity(self) -> bool:
        return self.setting.is_identity

    @property
    def lungs(self) -> LungPredictor:
        """The segmenter. ``runtime="auto"`` (default): ONNX Runtime when the run has ``segmenter.onnx`` (4x faster
        than torch on 2 CPU cores), else torch; every classifier runtime then gets the very same masks."""
        with self._lock:
            if self._lungs is None:
                from ..models.segmenter import ONNX_FILE

                run_dir = Path(self.setting.lung_model or "")
                has_onnx = (run_dir / ONNX_FILE).is_file()
                runtime = "onnx" if self.runtime == "onnx" or (self.runtime == "auto" and has_onnx) else "torch"
                self._lungs = create_lung_predictor(run_dir, runtime=runtime, threads=self.threads)
            return self._lungs

    def locate_many(self, greys: list[np.ndarray]) -> list[RoiInfo]:
        """The region of each image (one batched segmenter call)."""
        s = self.setting
        fit = square_box if s.fit == "square" else (lambda box, shape: box)
        if s.roi == "full":
            return [RoiInfo("full", "full", fit((0, 0, g.shape[1], g.shape[0]), g.shape), g.shape, s.intensity)
                    for g in greys]
        infos = []
        for grey, (mask, error) in zip(greys, self._masks(greys)):
            h, w = grey.shape
            if error is not None:  # blank image, too little lung, or a mask the segmenter is not sure of
                infos.append(RoiInfo(s.roi, "full", fit((0, 0, w, h), (h, w)), (h, w), s.intensity, True, str(error),
                                     float(mask.mean()), mask))
                continue
            box = fit(lung_bbox(mask, margin=s.margin, min_fraction=0.0), (h, w))
            infos.append(RoiInfo(s.roi, s.roi, box, (h, w), s.intensity, False, None, float(mask.mean()), mask))
        return infos

    def _masks(self, greys: list[np.ndarray]) -> list[tuple[np.ndarray, NoLungsError | None]]:
        """Lung mask at each image's size and the segmenter's no-lungs verdict (:meth:`LungPredictor.predict_results`):
        remembered for the last :data:`MEMO_SIZE` images, else one segmenter batch."""
        keys = [hashlib.sha1(g.tobytes() + str(g.shape).encode()).digest() for g in greys]
        with self._lock:
            known = [self._memo.get(k) for k in keys]
        todo = [i for i, m in enumerate(known) if m is None]
        fresh = self.lungs.predict_results([greys[i] for i in todo]) if todo else []
        with self._lock:
            for i, result in zip(todo, fresh):
                known[i] = (np.packbits(result.mask), result.mask.shape, result.error)
                self._memo[keys[i]] = known[i]
                while len(self._memo) > MEMO_SIZE:
                    self._memo.popitem(last=False)
        return [(np.unpackbits(packed, count=int(np.prod(shape))).reshape(shape).astype(bool), error)
                for packed, shape, error in known]

    def locate(self, grey: np.ndarray) -> RoiInfo:
        return self.locate_many([grey])[0]

    def apply(self, grey: np.ndarray, info: RoiInfo) -> np.ndarray:
        """The region of ``grey`` described by ``info`` (``grey`` may be an altered copy of the located image)."""
        if self.is_identity:
            return grey
        x0, y0, x1, y1 = info.box
        region = adjust_intensity(grey[y0:y1, x0:x1], info.intensity)
        if info.applied == "lung_mask" and info.mask is not None:
            inside = dilate(info.mask[y0:y1, x0:x1], self.setting.margin * max(y1 - y0, x1 - x0))
            region = np.where(inside, region, np.uint8(FILL)).astype(np.uint8)
        return np.ascontiguousarray(region)

    def __call__(self, grey: np.ndarray) -> tuple[np.ndarray, RoiInfo]:
        info = self.locate(grey)
        return self.apply(grey, info), info

    @staticmethod
    def to_original(region_map: np.ndarray, info: RoiInfo, fill: float = 0.0) -> np.ndarray:
        """A float map over the region (any size, e.g. a Grad-CAM) placed in the original image's frame."""
        import cv2

        x0, y0, x1, y1 = info.box
        out = np.full(info.size, fill, dtype=np.float32)
        out[y0:y1, x0:x1] = cv2.resize(np.asarray(region_map, np.float32), (x1 - x0, y1 - y0),
                                       interpolation=cv2.INTER_LINEAR)
        return out
