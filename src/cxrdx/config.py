"""One typed place for every setting cxrdx uses.

A :class:`Config` is built from defaults, optionally updated from a YAML file,
then from ``section.key=value`` overrides given on the command line::

    cfg = load_config("configs/demo.yaml", overrides=["model.head=gru", "train.epochs=40"])

Environment variables only decide *where* things live (data, cache), never how
a model is trained, so a run is reproducible from its saved ``config.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CLASSES_3 = ("covid", "pneumonia", "normal")
CLASSES_BINARY = ("covid", "non-covid")


def default_data_root() -> Path:
    """``$CXRDX_DATA`` if set, else ``../shared/data/cxr3`` next to the checkout."""
    env = os.environ.get("CXRDX_DATA")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent.parent / "shared" / "data" / "cxr3"
        if candidate.is_dir():
            return candidate
    return Path.cwd().parent / "shared" / "data" / "cxr3"


def default_cache_dir() -> Path:
    """``$CXRDX_CACHE`` if set, else ``~/.cache/cxrdx``."""
    env = os.environ.get("CXRDX_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "cxrdx"


@dataclass
class DataConfig:
    root: str | None = None
    """Dataset folder (CSV manifest or folder-per-class). None -> $CXRDX_DATA or ../shared/data/cxr3."""
    manifest: str | None = None
    """CSV manifest; None -> ``<root>/metadata.csv`` when present, else folder-per-class under root."""
    task: str = "3class"
    """``3class`` (covid / pneumonia / normal) or ``binary`` (covid / non-covid)."""
    benchmark: str | None = None
    """Keep only rows whose ``benchmark`` column equals this (e.g. ``darkcovidnet``)."""
    image_size: int = 224
    test_fraction: float = 0.2
    val_fraction: float = 0.15
    split_seed: int = 42
    max_pixels: int = 64_000_000
    """Decompression-bomb guard: images with more pixels are refused."""
    max_file_bytes: int = 64 * 1024 * 1024
    cache_dir: str | None = None
    """Feature cache; None -> $CXRDX_CACHE or ~/.cache/cxrdx."""

    @property
    def classes(self) -> tuple[str, ...]:
        return CLASSES_BINARY if self.task == "binary" else CLASSES_3

    def resolved_root(self) -> Path:
        return Path(self.root) if self.root else default_data_root()

    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else default_cache_dir()


@dataclass
class ModelConfig:
    backbone: str = "tf_efficientnet_lite0"
    head: str = "bilstm"
    weights: str = "imagenet"
    """``imagenet``, ``none`` or a path to a .safetensors / state_dict file."""
    hidden: int = 128
    proj_dim: int = 256
    """Per-step linear projection of the C backbone channels before the RNN (0 = none)."""
    dropout: float = 0.3


@dataclass
class TrainConfig:
    epochs: int = 80
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-2
    patience: int = 15
    """Early stopping: epochs without a better validation macro-F1."""
    seed: int = 0
    class_weighted: bool = True
    finetune_blocks: int = 0
    """Stage (b): unfreeze the last N backbone blocks and train end to end (0 = frozen only)."""
    finetune_epochs: int = 4
    finetune_lr: float = 1e-4
    finetune_batch_size: int = 16
    augment: bool = True
    num_workers: int = 0
    threads: int | None = None


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
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


class ConfigError(ValueError):
    """A config file or override names an unknown key or a value of the wrong type."""


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


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    cfg = Config()
    if path:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        _update(cfg, raw, prefix="")
    return apply_overrides(cfg, overrides)
