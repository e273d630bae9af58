"""Several models in one server (``cxrdx serve --model runs/xray --model runs/ct``): which model answers an upload.

Rules (issue 13):

* One model per modality. Each run's ``model.json`` says what it reads (``xray``, ``ct``, or ``xray+ct`` for a
  joint model); two runs reading the same modality are refused at start (:class:`~cxrdx.config.ConfigError`,
  one line, exit 2): which of them should answer an X-ray would be a guess. Run names (folder names) must
  differ too: a client names a model by its run name.
* A request may name the model (``model=<run name or modality>``, query or form field). An unknown name is
  404 ``unknown_model``. The input guard still screens the image: a non-chest image, or one of a modality the
  named model does not read, is 422 ``not_a_chest_image``.
* Otherwise the input guard routes. The routers are the loaded runs that have a ``guard.json``: the first one
  whose guard knows every loaded modality, else all of them, their decisions combined (per modality the
  smallest distance / threshold; an image goes to the modality with the smallest score <= 1). Neither modality:
  422 ``not_a_chest_image``. A modality no loaded model reads: 422 ``no_model_for_modality``, naming it.
* Without any guard: a single model answers everything (as before); several models need ``model=``
  (422 ``model_required``).

The guard's backbone pass is reused: when the routing guard belongs to the model that answers, or to a model
with the same frozen backbone and input (:attr:`ModelService.feature_key`), the torch runtime answers from that
backbone map with the answering model's head (:meth:`ModelService.score` with ``fmap``), and the fp32 ONNX
runtime answers from the examining pass itself when the router is the answering model: one backbone pass per
upload. The routing guard's verdict then stands (the answering model's own guard is not asked again).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from ..config import ConfigError, DataConfig, ServeConfig
from ..inference.guard import MODALITY_NAMES, NotAChestImageError, Verdict
from ..models.run import INFO_FILE, read_info
from .errors import ServeError
from .service import Examined, ModelService


class UnknownModelError(ServeError):
    code, http_status = "unknown_model", 404


class ModelRequiredError(ServeError):
    code, http_status = "model_required", 422


class NoModelForModalityError(ServeError):
    code, http_status = "no_model_for_modality", 422


@dataclass
class Routed:
    """Which model answers one upload, and why."""

    service: ModelService
    by: str
    """``request`` (the client named it), ``guard`` (the input guard's verdict) or ``only_model``."""
    verdict: Verdict | None = None
    """The (combined) guard verdict, when a guard was asked."""
    x: tuple | None = None
    """The answering model's prepared input, when routing made it already."""
    fmap: "torch.Tensor | Examined | None" = None
    """What the examining guard's pass left for the answer (:meth:`ModelService.examine`): a backbone map of ``x``
    (torch), or an ONNX model's own probabilities; :meth:`ModelService.score` takes it (no second backbone pass)."""
    screened: bool = False
    """The answering model's own guard took part in the verdict (it need not screen again)."""


def check_runs(run_dirs: list[str]) -> None:
    """Refuse duplicate runs, run names or modalities before any weights are loaded (one-line ConfigError)."""
    seen_paths: dict[Path, str] = {}
    names: dict[str, str] = {}
    modalities: dict[str, str] = {}
    for d in run_dirs:
        path = Path(d).expanduser().resolve()
        if path in seen_paths:
            raise ConfigError(f"--model {d}: the same run is given twice ({seen_paths[path]})")
        seen_paths[path] = d
        if path.name in names:
            raise ConfigError(f"--model {d}: another served run is also named {path.name!r} ({names[path.name]}); "
                              "clients name models by their run folder's name, so rename one")
        names[path.name] = d
        info_path = path / INFO_FILE
        if not info_path.is_file():
            continue  # loading it gives the usual one-line "not a cxrdx model folder"
        for m in read_info(info_path)[0].modality.split("+"):
            if m in modalities:
                raise ConfigError(f"--model {modalities[m]} and --model {d} both read {m}: serve one model per "
                                  "modality (the input guard routes each image to the model of its modality)")
            modalities[m] = d


def combine(verdicts: list[Verdict]) -> Verdict:
    """Several guards' verdicts on one image -> one: per modality the smallest score; accept the best <= 1."""
    scores: dict[str, float] = {}
    for v in verdicts:
        for m, s in v.scores.items():
            scores[m] = min(scores.get(m, math.inf), s)
    best = min(scores, key=scores.get)
    return Verdict(best if scores[best] <= 1.0 else None, scores)


def _wanted(modalities) -> str:
    return " or ".join(MODALITY_NAMES.get(m, m) for m in modalities)


class ModelPool:
    """The served models, by run name and by modality, and the guards that route between them."""

    def __init__(self, services: list[ModelService]):
        if not services:
            raise ConfigError("serve: no model to serve")
        check_runs([str(s.run_dir) for s in services])
        self.services = {s.name: s for s in services}
        self.primary = services[0]
        self.by_modality = {m: s for s in services for m in s.accepts}
        guarded = [s for s in services if s.screen is not None]
        covering = [s for s in guarded if set(self.by_modality) <= set(s.screen.guard.modalities)]
        self.routers: list[ModelService] = covering[:1] or guarded

    @classmethod
    def load(cls, cfg: ServeConfig, data_cfg: DataConfig | None = None) -> "ModelPool":
        dirs = cfg.model_dirs()
        check_runs(dirs)  # before loading anything heavy
        return cls([ModelService(cfg, data_cfg, run_dir=d) for d in dirs])

    def __iter__(self) -> Iterator[ModelService]:
        return iter(self.services.values())

    def __len__(self) -> int:
        return len(self.services)

    @property
    def routing(self) -> str:
        """``only_model``, ``guard`` or ``request`` (several models, no guard: requests name the model)."""
        return "only_model" if len(self) == 1 and not self.routers else ("guard" if self.routers else "request")

    def choose(self, name: str | None) -> ModelService | None:
        """The model a request names (run name or modality), None when it names none; 404 for an unknown name."""
        if name is None or not name.strip():
            return None
        name = name.strip()
        if name in self.services:
            return self.services[name]
        if name in self.by_modality:
            return self.by_modality[name]
        known = ", ".join(f"{s.name} ({s.modality})" for s in self)
        raise UnknownModelError(f"no model named {name[:64]!r} is served; choose one of: {known} (or a modality)")

    def without_guard(self, chosen: ModelService | None) -> Routed:
        """The answer when no guard routes: the named model, the only model, or 422 ``model_required``."""
        if chosen is not None:
            return Routed(chosen, "request")
        if len(self) == 1:
            return Routed(self.primary, "only_model")
        known = ", ".join(f"{s.name} ({s.modality})" for s in self)
        raise ModelRequiredError(f"this server holds {len(self)} models and no input guard to choose between them: "
                                 f"name one with model= ({known})")

    def target(self, verdict: Verdict, chosen: ModelService | None) -> ModelService:
        """The model for a guard verdict (or the named model, if the verdict allows it); else the refusal."""
        guard = self.routers[0].screen.guard
        if verdict.refused:
            raise guard.refusal(verdict, "upload", None)
        if chosen is not None:
            err = guard.refusal(verdict, "upload", chosen.accepts)
            if err is not None:
                raise err
            return chosen
        service = self.by_modality.get(verdict.modality)
        if service is None:
            served = ", ".join(f"{_wanted(s.accepts)} ({s.name})" for s in self)
            raise NoModelForModalityError(
                f"the input guard reads this upload as a {MODALITY_NAMES.get(verdict.modality, verdict.modality)} "
                f"(modality {verdict.modality}), and no model for {verdict.modality} is served; this server reads: {served}")
        return service

    def notes(self) -> list[str]:
        """Warnings for the operator at start: models routing cannot reach."""
        if len(self) == 1:
            return []
        if not self.routers:
            return ["no served run has an input guard (guard.json): requests must name the model (model=)"]
        known = {m for r in self.routers for m in r.screen.guard.modalities}
        return [f"the input guard does not know {m}: model {s.name} answers only when a request names it"
                for m, s in self.by_modality.items() if m not in known]


__all__ = ["ModelPool", "Routed", "check_runs", "combine", "NotAChestImageError", "UnknownModelError",
           "ModelRequiredError", "NoModelForModalityError"]
