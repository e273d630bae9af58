"""Run folders: a trained model on disk as safetensors weights plus a JSON description. No pickle anywhere.

A run folder holds ``model.safetensors`` and ``model.json``. When the backbone
is frozen at reproducible weights (``imagenet`` / ``none``) only the head is
stored and the backbone is rebuilt from its source; after fine-tuning (or for
weights from a file) the whole model is stored. :func:`model_identity` names
the model a folder holds (a stable id and a content-derived version), for the
server, the audit log and ONNX export.

A model trained on lung regions (``data.roi`` = ``lung_crop`` / ``lung_mask``) is self-contained: :func:`save_run`
copies its lung segmenter into ``RUN/lungs/`` and ``model.json`` records ``"lung_model": "lungs"`` (relative to
the run folder) with the segmenter's ``lung_digest``; :func:`read_info` resolves that path, and :func:`load_run`
refuses a stored segmenter whose files no longer match the digest. Older runs that name a segmenter folder by
absolute path keep working as before.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

from safetensors.torch import load_file, save_file

from .factory import create_model_from_info
from .hybrid import HybridModel, ModelInfo
from .segmenter import INFO_FILE as SEG_INFO_FILE
from .segmenter import ONNX_FILE as SEG_ONNX_FILE
from .segmenter import WEIGHTS_FILE as SEG_WEIGHTS_FILE
from .segmenter import SegmenterError, segmenter_digest

WEIGHTS_FILE = "model.safetensors"
INFO_FILE = "model.json"
LUNGS_DIR = "lungs"
"""Sub-folder of a run holding the lung segmenter its region of interest needs."""


class RunError(RuntimeError):
    """A folder that is not (or no longer) a usable cxrdx run folder."""


CheckpointError = RunError
"""The name this error had before run folders moved to :mod:`cxrdx.models.run`."""


def _require_run(run_dir: Path, hint: str = "") -> tuple[Path, Path]:
    info_path, weights_path = run_dir / INFO_FILE, run_dir / WEIGHTS_FILE
    if not info_path.is_file() or not weights_path.is_file():
        raise RunError(f"{run_dir} is not a cxrdx model folder (needs {INFO_FILE} and {WEIGHTS_FILE}){hint}")
    return info_path, weights_path


def save_run(model: HybridModel, run_dir: str | Path, *, include_backbone: bool | None = None) -> Path:
    """Write ``model`` into ``run_dir``; returns the weights file. The backbone is stored only when it cannot be rebuilt."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if include_backbone is None:
        include_backbone = model.info.weights not in ("imagenet", "none") or bool(model.info.extra.get("finetuned"))
    state = {f"head.{k}": v for k, v in model.head.state_dict().items()}
    if include_backbone:
        state.update({f"backbone.{k}": v for k, v in model.backbone.state_dict().items()})
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(run_dir / WEIGHTS_FILE))
    meta = model.info.to_dict()
    if _needs_segmenter(meta["extra"].get("roi")):
        meta["extra"]["roi"] = store_segmenter(meta["extra"]["roi"], run_dir)
    meta["backbone_in_checkpoint"] = include_backbone
    (run_dir / INFO_FILE).write_text(json.dumps(meta, indent=2))
    return run_dir / WEIGHTS_FILE


def _needs_segmenter(roi: object) -> bool:
    return isinstance(roi, dict) and roi.get("roi", "full") != "full" and bool(roi.get("lung_model"))


def _check_digest(folder: Path, expected: str | None, what: str) -> str:
    try:
        current = segmenter_digest(folder)
    except SegmenterError as exc:
        raise RunError(f"{what}: {exc}") from None
    if expected and current != expected:
        raise RunError(f"{what}: the lung segmenter in {folder} is {current}, but the model was trained with {expected} "
                       "(its files changed since): restore that segmenter or retrain the model")
    return current


def store_segmenter(roi: dict, run_dir: Path) -> dict:
    """Copy the segmenter of ``roi`` (``model.json``'s ``extra["roi"]``) into ``run_dir/lungs``; the returned
    setting names it relative to the run folder. Refused when the segmenter no longer matches ``lung_digest``."""
    src = Path(roi["lung_model"])
    if not src.is_absolute():
        src = (run_dir / src).resolve()
    dest = run_dir / LUNGS_DIR
    expected = roi.get("lung_digest")
    if src.resolve() != dest.resolve():
        _check_digest(src, expected, "cannot store the run's lung segmenter")
        dest.mkdir(parents=True, exist_ok=True)
        for name in (SEG_INFO_FILE, SEG_WEIGHTS_FILE, SEG_ONNX_FILE):
            if (src / name).is_file():
                shutil.copyfile(src / name, dest / name)
            elif (dest / name).is_file():
                (dest / name).unlink()  # a stale export of another segmenter
    stored = _check_digest(dest, expected, "cannot store the run's lung segmenter")
    origin = roi.get("lung_model_origin") or str(src)
    return {**roi, "lung_model": LUNGS_DIR, "lung_digest": stored, "lung_model_origin": origin}


def load_run(path: str | Path) -> HybridModel:
    """Rebuild a model (eval mode) from a run folder (or its ``model.safetensors``)."""
    path = Path(path)
    run_dir = path.parent if path.is_file() else path
    info_path, weights_path = _require_run(run_dir, "; train one with `cxrdx train`")
    info, in_ckpt = read_info(info_path)
    roi = info.extra.get("roi")
    if _needs_segmenter(roi) and Path(roi["lung_model"]).resolve() == (run_dir / LUNGS_DIR).resolve():
        _check_digest(run_dir / LUNGS_DIR, roi.get("lung_digest"), f"{run_dir}")
    try:
        model = create_model_from_info(info, weights="none" if in_ckpt else info.weights)
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:
        if type(exc).__name__ in ("UnknownNameError", "WeightsUnavailableError"):
            raise  # already one clear line
        raise RunError(f"{info_path}: cannot build the model it describes ({type(exc).__name__}: {_line(exc)})") from None
    model.info = info
    try:
        state = load_file(str(weights_path))
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError ...: truncated, empty or not safetensors
        raise RunError(
            f"{weights_path} is not a readable safetensors file (empty, truncated, or another format such as "
            f"a pickle; {type(exc).__name__})"
        ) from None
    try:
        model.head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")}, strict=True)
        if in_ckpt:
            model.backbone.load_state_dict({k[9:]: v for k, v in state.items() if k.startswith("backbone.")}, strict=True)
    except RuntimeError as exc:
        raise RunError(
            f"{weights_path} does not match {info_path.name} ({len(info.classes)} classes, {info.backbone} + "
            f"{info.head}): {_line(exc)}"
        ) from None
    model.eval()
    return model


def _line(exc: BaseException, limit: int = 240) -> str:
    """An exception's text as one short line."""
    text = " ".join(str(exc).split())
    return text[:limit] + ("..." if len(text) > limit else "")


def read_info(info_path: Path) -> tuple[ModelInfo, bool]:
    """``model.json`` as a checked :class:`ModelInfo` (+ whether the backbone is in the weights), or a one-line RunError."""
    try:
        meta = json.loads(info_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunError(f"{info_path} is not valid JSON ({_line(exc)})") from None
    if not isinstance(meta, dict):
        raise RunError(f"{info_path} must hold a JSON object, not a {type(meta).__name__}")
    in_ckpt = meta.pop("backbone_in_checkpoint", False)
    known = {f.name: f for f in fields(ModelInfo)}
    unknown = sorted(set(meta) - set(known))
    missing = sorted(n for n, f in known.items() if n not in meta and f.default is MISSING and f.default_factory is MISSING)
    if unknown or missing:
        parts = ([f"unknown key(s) {unknown}"] if unknown else []) + ([f"missing key(s) {missing}"] if missing else [])
        raise RunError(f"{info_path}: {'; '.join(parts)}; expected keys {sorted(known)}")
    for name, value in meta.items():
        check, wanted = _FIELD_TYPES.get(name, (lambda v: True, ""))
        if not check(value):
            raise RunError(f"{info_path}: {name!r} must be {wanted}, not {json.dumps(value)[:60]}")
    if not isinstance(in_ckpt, bool):
        raise RunError(f"{info_path}: 'backbone_in_checkpoint' must be true or false")
    if len(meta["classes"]) < 2 or len(set(meta["classes"])) != len(meta["classes"]):
        raise RunError(f"{info_path}: 'classes' must list at least two distinct class names")
    roi = meta["extra"].get("roi")
    if _needs_segmenter(roi) and not Path(roi["lung_model"]).is_absolute():  # stored with the run (RUN/lungs)
        meta["extra"] = {**meta["extra"], "roi": {**roi, "lung_model": str((info_path.parent / roi["lung_model"]).resolve())}}
    return ModelInfo(**meta), in_ckpt


def _is_str_list(v: object) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) and x for x in v)


_FIELD_TYPES = {
    "backbone": (lambda v: isinstance(v, str) and bool(v), "a non-empty string"),
    "head": (lambda v: isinstance(v, str) and bool(v), "a non-empty string"),
    "weights": (lambda v: isinstance(v, str), "a string"),
    "weights_tag": (lambda v: isinstance(v, str), "a string"),
    "classes": (_is_str_list, "a list of class names"),
    "hidden": (lambda v: type(v) is int and v >= 0, "a non-negative integer"),
    "proj_dim": (lambda v: type(v) is int and v >= 0, "a non-negative integer"),
    "image_size": (lambda v: type(v) is int and 32 <= v <= 4096, "an integer between 32 and 4096"),
    "dropout": (lambda v: type(v) in (int, float) and 0 <= v < 1, "a number in [0, 1)"),
    "extra": (lambda v: isinstance(v, dict), "a JSON object"),
    "modality": (lambda v: isinstance(v, str) and bool(v), "a non-empty string (xray, ct)"),
}



@dataclass(frozen=True)
class ModelIdentity:
    id: str
    """``backbone+head``, e.g. ``tf_efficientnet_lite0+bilstm``."""
    version: str
    """``sha256:`` + first 16 hex digits of the SHA-256 of model.json and model.safetensors."""
    run: str
    """The run folder's name."""


def model_identity(run_dir: str | Path) -> ModelIdentity:
    """Which model ``run_dir`` holds: a stable id and a version derived from its files' bytes."""
    run_dir = Path(run_dir)
    info_path, weights_path = _require_run(run_dir)
    digest = hashlib.sha256()
    for path in (info_path, weights_path):
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    info, _ = read_info(info_path)
    return ModelIdentity(
        id=f"{info.backbone}+{info.head}",
        version=f"sha256:{digest.hexdigest()[:16]}",
        run=run_dir.resolve().name,
    )
