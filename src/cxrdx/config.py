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

from .registry import UnknownNameError, get_registry
from .tasks import MODALITIES, TRAINING_TASKS, get_task


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
    max_decoded_bytes: int = 64 * 1024 * 1024
    """Decode budget: width x height x bytes per pixel (and a deflated DICOM's inflated size) above
    this is refused from the header, before pixel memory is spent; larger JPEGs are decoded downscaled."""
    max_aspect_ratio: float = 10.0
    """Long side / short side above this is refused (no radiograph is a 16 x 4,000,000 strip)."""
    cache_dir: str | None = None
    """Feature cache; None -> $CXRDX_CACHE or ~/.cache/cxrdx."""
    roi: str = "full"
    """Region of interest the classifier sees (train, cv, compare, predict, explain, serve, ONNX alike):
    ``full`` (whole image), ``lung_crop`` (the lungs' bounding box from the ``lung_model`` segmenter, grown
    by ``roi_margin``) or ``lung_mask`` (that crop, outside the dilated lungs greyed out). Recorded in
    ``model.json``; no lungs found -> the whole image, flagged ``roi_fallback`` in the output."""
    intensity: str = "none"
    """Grey-level normalisation of the region: ``none``, ``equalize`` (histogram) or ``clahe``."""
    roi_margin: float = 0.05
    """Lung box margin on each side as a share of the box's size (also the ``lung_mask`` dilation)."""
    lung_model: str | None = None
    """Lung segmenter run folder (``cxrdx lungs train``), needed when ``roi`` is not ``full``."""
    modality: str | None = None
    """``xray`` or ``ct``: recorded in ``model.json``; with a ``modality`` manifest column, keeps only those rows.
    None -> the manifest's ``modality`` column (``xray+ct`` when it holds both) or ``xray``."""

    @property
    def classes(self) -> tuple[str, ...]:
        return get_task(self.task).classes

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
    precision: str = "auto"
    """Training forwards: ``auto`` = bf16 autocast on CUDA and on CPUs with native bf16 (Intel AMX /
    AVX512-BF16; about 2x faster head training there), fp32 elsewhere; or force ``bf16`` / ``fp32``.
    Weights and optimiser state stay fp32; so do the predictions of the saved model."""
    num_workers: int = 0
    threads: int | None = None


def default_home_dir() -> Path:
    """Where the server keeps its state (audit database): ``$CXRDX_HOME`` or ``~/.local/share/cxrdx``."""
    env = os.environ.get("CXRDX_HOME")
    return Path(env) if env else Path.home() / ".local" / "share" / "cxrdx"


@dataclass
class ServeConfig:
    model_dir: str = "runs/demo"
    """Run folder served (model.safetensors + model.json; model.onnx for runtime onnx)."""
    runtime: str = "torch"
    """``torch`` or ``onnx`` (``cxrdx export --onnx RUN_DIR`` first). Grad-CAM always uses torch."""
    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_bytes: int = 20 * 1024 * 1024
    """Larger uploads get HTTP 413 before they are decoded."""
    database_url: str | None = None
    """SQLAlchemy URL of the audit log; None -> $CXRDX_DATABASE_URL or sqlite:///<$CXRDX_HOME>/audit.db."""
    token_env: str = "CXRDX_API_TOKEN"
    """Name of the environment variable holding the bearer token (unset = no auth). Never put the token in a file."""
    threads: int | None = None
    """Intra-op threads for torch / ONNX Runtime; None = all cores."""
    insecure_no_auth: bool = False
    """Allow a non-loopback ``host`` without a token (``--insecure-no-auth``); refused otherwise."""
    trusted_proxies: str = ""
    """Comma-separated IPs / CIDR networks (``--trusted-proxy``) whose ``X-Forwarded-For`` is believed;
    from any other peer the socket address is the client."""
    max_concurrent_decodes: int = 2
    """Uploads decoded + preprocessed at once (each may take up to the decode budget of memory)."""
    decode_wait_s: float = 30.0
    """A request waiting longer than this for a decode slot gets 503 ``server_busy``."""
    header_timeout_s: float = 10.0
    """A connection must send complete request headers within this many seconds, or it is closed."""
    body_timeout_s: float = 60.0
    """The whole request body must arrive within this many seconds (408 ``body_timeout``)."""
    body_idle_timeout_s: float = 10.0
    """At most this many seconds between two pieces of a request body (408 ``body_timeout``)."""
    keep_alive_s: int = 5
    """Idle keep-alive connections are closed after this many seconds."""

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        env = os.environ.get("CXRDX_DATABASE_URL")
        return env if env else f"sqlite:///{default_home_dir() / 'audit.db'}"

    def api_token(self) -> str | None:
        """The bearer token from ``token_env``; unset = no auth, set but empty (or blank) is an error."""
        value = os.environ.get(self.token_env)
        if value is None:
            return None
        if not value.strip():
            raise ConfigError(f"{self.token_env} is set but empty; unset it to run without a token, or give a token")
        return value

    def check(self) -> None:
        """Ranges of the serving settings (one-line :class:`ConfigError`)."""
        import ipaddress

        for name in ("max_upload_bytes", "max_concurrent_decodes", "decode_wait_s", "header_timeout_s",
                     "body_timeout_s", "body_idle_timeout_s", "keep_alive_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"serve.{name}: {getattr(self, name)} is out of range; it must be positive")
        for item in filter(None, (p.strip() for p in self.trusted_proxies.split(","))):
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ConfigError(f"serve.trusted_proxies: {item[:60]!r} is not an IP address or network") from None


@dataclass
class ExplainConfig:
    method: str = "gradcam"
    """``gradcam``, ``gradcam++`` or ``scorecam`` (pytorch-grad-cam); target layer = the backbone's ``target_layer``."""
    image_weight: float = 0.6
    """Overlay blend: this share is the X-ray, the rest the heatmap colours."""
    overlay_max_side: int = 1024
    """Overlays of larger images are shrunk to this side (the .npy heatmap keeps the original size)."""
    scorecam_batch_size: int = 64
    flag_lung_energy: float = 0.5
    """A model whose mean heatmap energy inside the lungs is below this is flagged."""
    bootstrap: int = 2000
    """Patient-level bootstrap resamples for the localisation CIs."""
    ci_level: float = 0.95
    seed: int = 0
    gallery_per_group: int = 3
    """Overlays per (class, correct|wrong) in the gallery."""


@dataclass
class SeriesConfig:
    """``cxrdx series``: per-patient exam sequences (ordered by offset_days) -> GRU/LSTM, patient-level CV."""

    patient_prefix: str | None = "ieee8023"
    """Cohort: patients whose patient_id starts with this (the longitudinal covid-chestxray-dataset); None = all."""
    target: str = "survival"
    """``survival`` (died vs survived, patients with a label) or ``diagnosis`` (covid vs other, last exam's label)."""
    rnn: str = "gru"
    """``gru`` or ``lstm``."""
    pca_dim: int = 16
    """Exam embeddings (mean-pooled backbone map) are standardised and PCA-reduced, fitted on each training fold."""
    hidden: int = 32
    dropout: float = 0.2
    epochs: int = 150
    """Fixed full-batch epochs (no early stopping: too few patients for an inner validation set)."""
    lr: float = 3e-3
    weight_decay: float = 1e-2
    folds: int = 5
    repeats: int = 1
    seed: int = 0
    bootstrap: int = 2000
    """Patient bootstrap resamples for the 95% CIs."""


@dataclass
class EvalConfig:
    """``cxrdx cv`` / ``compare`` / ``report``: patient-grouped k-fold CV on cached features, CIs, calibration."""

    folds: int = 5
    fold_seed: int = 42
    val_fraction: float = 0.15
    """Patient-grouped share of each fold's training part held out for early stopping, temperature and threshold."""
    epochs: int = 40
    """Head-training epochs inside CV (shorter than ``train.epochs`` so 5 folds of a head take < 60 s on 2 cores)."""
    lr: float = 2e-3
    patience: int = 5
    batch_size: int = 128
    """Head-training batch inside CV. With bf16 on CPUs that have it (``train.precision``), batch 128 and
    patience 5, 5 folds of an RNN head take 40-55 s on 2 idle cores (fp32, batch 64, patience 8: 85-120 s)
    at the same accuracy within noise (``benchmarks/cv_speed.py``)."""
    bootstrap: int = 1000
    """Patient-level bootstrap resamples for every 95% CI."""
    ci_level: float = 0.95
    seed: int = 0
    ece_bins: int = 10
    temperature: bool = False
    """Fit temperature scaling on each fold's validation part and apply it to the test fold."""
    target_sensitivity: float = 0.95
    """Operating point: covid threshold reaching this sensitivity on validation, scored on the test fold."""
    heads: str = "lstm,gru,bilstm,bigru,attention,pool"
    """``cxrdx compare`` grid: heads (comma-separated)."""
    backbones: str = "tf_efficientnet_lite0,vgg19,resnetv2_152,densenet121"
    """``cxrdx compare`` grid: backbones; those without offline weights are listed as skipped."""
    baselines: str = "svm,logreg"
    """scikit-learn baselines on pooled CNN features (``svm``, ``logreg``; empty = none)."""
    min_source_images: int = 30
    """Leave-one-source-out (``cxrdx cv/compare --by source``): a source with fewer images is never held out
    (it still trains the other folds) and is listed as skipped."""


@dataclass
class LungsConfig:
    """``cxrdx lungs``: the lung segmenter (U-Net, EfficientNet-Lite0 encoder) trained on ``lungseg``."""

    data: str | None = None
    """lungseg folder (metadata.csv: image,mask,source,patient_id); None -> $CXRDX_LUNGSEG or ../shared/data/lungseg."""
    model_dir: str = "runs/lungs"
    """Run folder of the trained segmenter (segmenter.safetensors + segmenter.json + segmenter.onnx)."""
    image_size: int = 256
    """Square network input; masks are mapped back to each image's own size."""
    epochs: int = 30
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 6
    """Early stopping: epochs without a better validation Dice."""
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    """Shares of patients, grouped by patient_id and stratified by source."""
    seed: int = 0
    augment: bool = True
    frozen_blocks: int = 3
    """The encoder stem and its first N blocks (1, 2, 3, 5 or 7) keep their ImageNet weights and their outputs
    are computed once per training image and augmented copy (~3x less CPU per epoch); 0 = fine-tune the
    whole encoder with fresh augmentation every batch."""
    augment_copies: int = 2
    """With frozen_blocks > 0: augmented copies cached per training image (each epoch draws one version)."""
    max_minutes: float | None = None
    """Stop after the epoch that passes this wall-clock budget (the best epoch so far is kept)."""
    threads: int | None = None
    """Torch intra-op threads; None -> $CXRDX_THREADS or all cores."""
    threshold: float = 0.5
    """Lung probability above which a pixel is lung."""
    min_lung_fraction: float = 0.02
    """Below this share of the image, a mask counts as "no lungs found"."""


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
}


def validate(cfg: Config) -> Config:
    """Check every name in ``cfg`` against its registry (and the task list) before any data is read."""
    if cfg.data.task not in TRAINING_TASKS:
        raise ConfigError(f"data.task: unknown task {cfg.data.task!r}; choose one of: {', '.join(TRAINING_TASKS)}")
    if cfg.data.modality is not None and cfg.data.modality not in MODALITIES:
        raise ConfigError(f"data.modality: unknown modality {cfg.data.modality!r}; choose one of: {', '.join(MODALITIES)}")
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
