"""Building a :class:`Config`: defaults <- YAML <- ``section.key=value`` overrides, then every name checked."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..registry import UnknownNameError, get_registry
from ..tasks import MODALITIES, TRAINING_TASKS
from .errors import ConfigError
from .sections import (DataConfig, ModelConfig, TrainConfig, ExplainConfig, SeriesConfig, EvalConfig, LungsConfig,
                       augment_mode)
from .serve import ServeConfig


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    explain: ExplainConfig = field(default_factory=ExplainConfig)
    series: SeriesConfig = field(default_factory=SeriesConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    lungs: LungsConfig = field(default_factory=LungsConfig)
    out_dir: str = "runs/demo"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "Config":
        cfg = cls()
        _update(cfg, raw, prefix="")
        return cfg


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    hint = annotation
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            if type(None) in args:
                return None
        non_none = [a for a in args if a is not type(None)]
        for a in non_none:
            try:
                return _coerce(value, a, key)
            except (ConfigError, ValueError, TypeError):
                continue
        raise ConfigError(f"{key}: cannot read {value!r} as {hint}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if hint in (int, float):
        try:
            return hint(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{key}: expected {hint.__name__}, got {value!r}") from exc
    if hint is str:
        return str(value)
    return value


def _update(obj: Any, raw: dict[str, Any], prefix: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in raw.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key {full!r}; known: {sorted(names)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{full}: expected a mapping")
            _update(current, value, prefix=f"{full}.")
        else:
            setattr(obj, key, _coerce(value, hints[key], full))


def apply_overrides(cfg: Config, overrides: list[str] | None) -> Config:
    """Apply ``section.key=value`` strings (values parsed as YAML scalars)."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        dotted, text = item.split("=", 1)
        value = yaml.safe_load(text) if text else ""
        tree: dict[str, Any] = {}
        node = tree
        parts = dotted.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
        _update(cfg, tree, prefix="")
    return cfg


# setting -> registry kind whose names it must hold (comma-separated lists for the compare grid)
REGISTERED_NAMES: dict[str, str] = {
    "model.backbone": "backbones",
    "model.head": "heads",
    "serve.runtime": "runtimes",
    "explain.method": "cam-methods",
    "evaluation.heads": "heads",
    "evaluation.backbones": "backbones",
    "evaluation.baselines": "baselines",
    "data.roi": "rois",
    "data.intensity": "intensities",
    "data.fit": "fits",
    "train.sampling": "samplings",
    "train.augment": "augmentations",
}


def validate(cfg: Config) -> Config:
    """Check every name in ``cfg`` against its registry (and the task list) before any data is read."""
    if cfg.data.task not in TRAINING_TASKS:
        raise ConfigError(f"data.task: unknown task {cfg.data.task!r}; choose one of: {', '.join(TRAINING_TASKS)}")
    if cfg.data.modality is not None and cfg.data.modality not in MODALITIES:
        raise ConfigError(f"data.modality: unknown modality {cfg.data.modality!r}; choose one of: {', '.join(MODALITIES)}")
    cfg.train.augment = augment_mode(cfg.train.augment)  # true / false of older configs -> basic / none
    for dotted, kind in REGISTERED_NAMES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(cfg, section), key)
        names = [n.strip() for n in value.split(",") if n.strip()] if dotted.startswith("evaluation.") else [value]
        registry = get_registry(kind)
        for name in names:
            try:
                registry.check(name)
            except UnknownNameError as exc:
                raise ConfigError(f"{dotted}: {exc}") from None
    _check_ranges(cfg)
    return cfg


def _check_ranges(cfg: Config) -> None:
    """Numbers that must lie in a range (one-line ConfigError, not a traceback later)."""
    checks = (
        ("serve.port", cfg.serve.port, 1, 65535),
        ("data.max_decoded_bytes", cfg.data.max_decoded_bytes, 1, None),
        ("data.max_aspect_ratio", cfg.data.max_aspect_ratio, 1, None),
        ("train.source_min_images", cfg.train.source_min_images, 1, None),
    )
    for dotted, value, lo, hi in checks:
        if value < lo or (hi is not None and value > hi):
            span = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
            raise ConfigError(f"{dotted}: {value} is out of range; it must be {span}")
    if not 0 <= cfg.data.roi_margin <= 1:
        raise ConfigError(f"data.roi_margin: {cfg.data.roi_margin} is out of range; it must be between 0 and 1")
    if cfg.data.roi != "full" and not cfg.data.lung_model:
        raise ConfigError(f"data.roi={cfg.data.roi} needs data.lung_model: a lung segmenter run folder "
                          "(`cxrdx lungs train`)")
    cfg.serve.check()
    if cfg.serve.database_url:
        _check_database_url(cfg.serve.database_url)


def _check_database_url(url: str) -> None:
    """``serve.database_url`` must be an SQLAlchemy URL of an installed dialect (checked without connecting)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        make_url(url).get_dialect()
    except (ArgumentError, NoSuchModuleError, ImportError, ValueError) as exc:
        scheme = url.split(":", 1)[0][:40]
        raise ConfigError(
            f"serve.database_url: {scheme!r} is not a usable SQLAlchemy database URL "
            f"({type(exc).__name__}); use e.g. sqlite:///path/audit.db or postgresql+psycopg://user@host/db"
        ) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, *, check_names: bool = True) -> Config:
    """Defaults <- YAML file <- ``section.key=value`` overrides, then every registered name checked."""
    cfg = Config()
    if path:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        _update(cfg, raw, prefix="")
    apply_overrides(cfg, overrides)
    return validate(cfg) if check_names else cfg
