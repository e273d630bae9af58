"""One typed place for every setting cxrdx uses.

A :class:`Config` is built from defaults, optionally updated from a YAML file,
then from ``section.key=value`` overrides given on the command line::

    cfg = load_config("configs/demo.yaml", overrides=["model.head=gru", "train.epochs=40"])

Environment variables only decide *where* things live (data, cache), never how
a model is trained, so a run is reproducible from its saved ``config.json``."""

from __future__ import annotations

from .paths import default_data_root, default_cache_dir, default_home_dir
from .errors import ConfigError
from .sections import DataConfig, ModelConfig, TrainConfig, ExplainConfig, SeriesConfig, EvalConfig, LungsConfig
from .serve import ServeConfig
from .loading import Config, apply_overrides, REGISTERED_NAMES, validate, load_config

__all__ = ['Config', 'ConfigError', 'DataConfig', 'EvalConfig', 'ExplainConfig', 'LungsConfig', 'ModelConfig', 'REGISTERED_NAMES', 'SeriesConfig', 'ServeConfig', 'TrainConfig', 'apply_overrides', 'default_cache_dir', 'default_data_root', 'default_home_dir', 'load_config', 'validate']
