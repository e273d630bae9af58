"""Input guard: is this a chest X-ray, a CT slice, or neither? (issue 13)

The guard looks at the frozen backbone's pooled features (the ``C x h x w`` map
averaged to ``C`` numbers) and measures how far an image lies from each
modality's images (:mod:`cxrdx.inference.guard_scores`): by default the cosine
distance to the 10th nearest reference image on power-normalised features.
Each modality's threshold is calibrated on out-of-fold distances of all its
fitting images (patient-grouped folds) as the ``1 - false_refusal`` quantile of
the *worst* source, so about ``false_refusal`` of a source's real images, at
most, are wrongly refused. An image within one or more thresholds goes to the
modality whose distance is smallest relative to its threshold; an image outside
all of them is refused (:class:`NotAChestImageError`, HTTP 422
``not_a_chest_image``).

Saved in a run folder as ``guard.json`` (method, modalities, thresholds, the
features' backbone, calibration numbers) and ``guard.safetensors`` (per modality
the reference features, or a Gaussian's mean and inverse covariance for guards
fitted with ``--method mahalanobis``): no pickle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from ..data.errors import ImageReadError
from ..data.io import read_image
from ..models.hybrid import HybridModel
from ..models.outputs import probabilities
from .guard_scores import DEFAULT_NEIGHBOURS, crossfit_threshold, distance_class, out_of_fold_distances

GUARD_INFO = "guard.json"
GUARD_WEIGHTS = "guard.safetensors"
DEFAULT_FALSE_REFUSAL = 0.005
"""Per source: with ~60 images a source's 1 % quantile is its largest value, and a 2 % goal needs room for that noise."""
MODALITY_NAMES = {"xray": "chest X-ray", "ct": "chest CT slice"}
MODALITY_PLURALS = {"xray": "chest X-rays", "ct": "chest CT slices"}


class NotAChestImageError(ImageReadError):
    """The guard found the image to be neither a chest X-ray nor a CT slice (or not the model's modality)."""

    code = "not_a_chest_image"
    http_status = 422


class GuardError(ValueError):
    """A guard that cannot be fitted or read."""


def pooled(fmap: torch.Tensor | np.ndarray) -> np.ndarray:
    """``[N, C, h, w]`` backbone maps -> ``[N, C]`` float64 means (what the guard measures)."""
    arr = fmap.detach().float().cpu().numpy() if isinstance(fmap, torch.Tensor) else np.asarray(fmap, np.float32)
    return arr.reshape(arr.shape[0], arr.shape[1], -1).mean(axis=2).astype(np.float64)


@dataclass
class Verdict:
    modality: str | None
    """The routed modality, or None: refused."""
    scores: dict[str, float]
    """Distance / threshold per modality (<= 1: within that modality's accepted region)."""

    @property
    def refused(self) -> bool:
        return self.modality is None

    def to_dict(self) -> dict:
        return {"modality": self.modality, "scores": {k: round(v, 4) for k, v in self.scores.items()}}


@dataclass
class InputGuard:
    backbone: str
    weights_tag: str
    image_size: int
    modalities: list[str]
    measures: dict
    """modality -> a distance from :mod:`~cxrdx.inference.guard_scores` (callable on ``[N, C]`` features)."""
    thresholds: dict[str, float]
    false_refusal: float = DEFAULT_FALSE_REFUSAL
    info: dict = field(default_factory=dict)
    roi: str = ""
    """The features' region of interest (:attr:`RoiSetting.key`; empty: the whole image)."""

    @property
    def method(self) -> str:
        return next(iter(self.measures.values())).method

    @classmethod
    def fit(cls, features: dict[str, np.ndarray], *, backbone: str, weights_tag: str, image_size: int,
            groups: dict[str, np.ndarray] | None = None, sources: dict[str, np.ndarray] | None = None,
            false_refusal: float = DEFAULT_FALSE_REFUSAL, method: str = "knn", neighbours: int = DEFAULT_NEIGHBOURS,
            folds: int = 5, roi: str = "") -> "InputGuard":
        """``features``: modality -> ``[N, C]`` pooled features of its fitting images (train + validation patients,
        never the test patients); ``groups`` / ``sources``: modality -> ``[N]`` patient ids / source names.

        The reference is fitted on all N; the threshold on out-of-fold distances (``folds`` patient-grouped folds).
        """
        if not features:
            raise GuardError("need the features of at least one modality")
        if not 0 < false_refusal < 0.5:
            raise GuardError(f"false_refusal must be in (0, 0.5), not {false_refusal}")
        try:
            kind = distance_class(method)
        except ValueError as exc:
            raise GuardError(str(exc)) from None
        groups, sources = groups or {}, sources or {}
        make = lambda rows: kind.fit(rows, neighbours)  # noqa: E731
        measures, thresholds, calibration = {}, {}, {}
        for m in sorted(features):
            x = np.asarray(features[m], np.float64)
            if len(x) < 20:
                raise GuardError(f"{m}: at least 20 images are needed to fit and calibrate the guard (got {len(x)})")
            oof = out_of_fold_distances(x, groups.get(m), make, folds)
            thresholds[m], per_source = crossfit_threshold(oof, sources.get(m), false_refusal)
            measures[m] = make(x)
            calibration[m] = {"images": int(len(x)), "per_source_quantile": per_source}
        info = {"neighbours": neighbours, "folds": folds, "calibration": calibration}
        return cls(backbone, weights_tag, image_size, sorted(features), measures, thresholds, false_refusal, info, roi)

    def distances(self, feats: np.ndarray) -> dict[str, np.ndarray]:
        """Each row's distance to each modality (the guard's method)."""
        return {m: self.measures[m](feats) for m in self.modalities}

    def decide(self, feats: np.ndarray) -> list[Verdict]:
        dist = self.distances(feats)
        verdicts = []
        for i in range(len(next(iter(dist.values())))):
            scores = {m: float(dist[m][i] / self.thresholds[m]) for m in self.modalities}
            best = min(scores, key=scores.get)
            verdicts.append(Verdict(best if scores[best] <= 1.0 else None, scores))
        return verdicts

    def check_compatible(self, model_info) -> None:
        from ..features.roi import RoiSetting

        mine = (self.backbone, self.weights_tag, self.image_size, self.roi or "whole image")
        theirs = (model_info.backbone, model_info.weights_tag, model_info.image_size,
                  RoiSetting.from_model_info(model_info).key or "whole image")
        if mine != theirs or model_info.extra.get("finetuned"):
            raise GuardError(f"the guard was fitted on {mine} features; the model uses {theirs}"
                             + (" (fine-tuned backbone)" if model_info.extra.get("finetuned") else ""))

    def refusal(self, verdict: Verdict, source: str | None, accepts: tuple[str, ...] | None) -> NotAChestImageError | None:
        """The error for an image the guard refuses, or that is not one of ``accepts`` (None: accept)."""
        if verdict.modality is None:
            return NotAChestImageError(
                "not a chest X-ray or chest CT slice (input guard: outside every modality's accepted region)", source=source)
        if accepts is not None and verdict.modality not in accepts:
            wanted = " or ".join(MODALITY_PLURALS.get(m, m) for m in accepts)
            return NotAChestImageError(
                f"looks like a {MODALITY_NAMES.get(verdict.modality, verdict.modality)}; this model reads {wanted}", source=source)
        return None

    # --- persistence ---------------------------------------------------------------------------------------------

    def save(self, run_dir: str | Path) -> Path:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for m in self.modalities:
            tensors.update(self.measures[m].tensors(m))
        save_file(tensors, str(run_dir / GUARD_WEIGHTS))
        meta = {"method": self.method, "features": "backbone map, spatial mean",
                "backbone": self.backbone, "weights_tag": self.weights_tag, "image_size": self.image_size,
                "roi": self.roi, "modalities": self.modalities, "thresholds": self.thresholds, "false_refusal": self.false_refusal,
                **self.info}
        (run_dir / GUARD_INFO).write_text(json.dumps(meta, indent=2))
        return run_dir / GUARD_INFO

    @classmethod
    def load(cls, run_dir: str | Path) -> "InputGuard":
        run_dir = Path(run_dir)
        try:
            meta = json.loads((run_dir / GUARD_INFO).read_text(encoding="utf-8"))
            tensors = load_file(str(run_dir / GUARD_WEIGHTS))
            mods = [str(m) for m in meta["modalities"]]
            kind = distance_class(str(meta.get("method", "mahalanobis-ledoit-wolf")))
            extra = {k: v for k, v in meta.items() if k not in (
                "method", "backbone", "weights_tag", "image_size", "modalities", "thresholds", "false_refusal", "roi")}
            return cls(str(meta["backbone"]), str(meta["weights_tag"]), int(meta["image_size"]), mods,
                       {m: kind.from_tensors(tensors, m, meta) for m in mods},
                       {m: float(meta["thresholds"][m]) for m in mods}, float(meta["false_refusal"]), extra,
                       str(meta.get("roi", "")))
        except FileNotFoundError:
            raise GuardError(f"{run_dir} has no input guard ({GUARD_INFO}); fit one with `cxrdx guard fit`") from None
        except Exception as exc:  # noqa: BLE001 - JSON, safetensors, missing keys: one clear line
            raise GuardError(f"{run_dir}: unreadable input guard ({type(exc).__name__}: {exc})") from None


def has_guard(run_dir: str | Path) -> bool:
    return (Path(run_dir) / GUARD_INFO).is_file()


class Screen:
    """A guard bound to a model: screens preprocessed batches before (or while) the model answers.

    ``accepts``: the modalities the model reads (from ``model.json``; ``xray+ct`` accepts both).
    With the torch model the backbone runs once for both the guard and the head.
    """

    def __init__(self, guard: InputGuard, model: HybridModel, accepts: tuple[str, ...] | None = None):
        guard.check_compatible(model.info)
        self.guard = guard
        self.model = model.eval()
        self.accepts = accepts if accepts is not None else tuple(model.info.modality.split("+"))
        self._predictor = None

    def tensor(self, grey: np.ndarray) -> torch.Tensor:
        """The model's own input for a decoded image (its region of interest, resize, normalisation)."""
        if self._predictor is None:
            from .predictor import Predictor

            self._predictor = Predictor(self.model)
        return self._predictor.tensor(grey)

    @torch.inference_mode()
    def features(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(batch)

    def refusals(self, pooled_features: np.ndarray, names: list[str]) -> list[ImageReadError | None]:
        """Per image the refusal or None, from pooled features computed elsewhere (the ONNX graph's second output)."""
        verdicts = self.guard.decide(np.asarray(pooled_features, np.float64))
        return [self.guard.refusal(v, n, self.accepts) for v, n in zip(verdicts, names)]

    @torch.inference_mode()
    def screen(self, batch: torch.Tensor, names: list[str], head: bool) -> tuple[np.ndarray | None, list[ImageReadError | None]]:
        """``(probabilities or None, per-image refusal or None)``; probabilities only with ``head`` (torch runtime)."""
        fmap = self.features(batch)
        refusals = self.refusals(pooled(fmap), names)
        probs = probabilities(self.model.forward_head(fmap)).numpy() if head else None
        return probs, refusals

    def check(self, batch: torch.Tensor, names: list[str]) -> None:
        """Raise the first refusal of a preprocessed batch (the server's and explain's path)."""
        for err in self.screen(batch, names, head=False)[1]:
            if err is not None:
                raise err


def check_image(screen: Screen | None, source: str | Path, limits=None) -> None:
    """Read ``source`` and raise the guard's refusal, if any (explain's path; no-op without a guard)."""
    if screen is not None:
        grey = read_image(source, limits=limits)
        screen.check(screen.tensor(grey)[None], [Path(source).name])


def load_screen(run_dir: str | Path, model: HybridModel) -> Screen | None:
    """The run's input guard bound to ``model``, or None when the run has none."""
    return Screen(InputGuard.load(run_dir), model) if has_guard(run_dir) else None


def attach_guard(predictor, run_dir: str | Path, model: HybridModel | None = None):
    """Give ``predictor`` the run's input guard (when ``run_dir`` has one); returns the predictor."""
    if has_guard(run_dir):
        from ..models.run import load_run

        model = model if model is not None else (getattr(predictor, "model", None) or load_run(run_dir))
        predictor.screen = Screen(InputGuard.load(run_dir), model)
    return predictor
