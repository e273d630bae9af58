"""The typed sections of a configuration: data, model, training, explain, series, evaluation, lungs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..tasks import get_task
from .paths import default_cache_dir, default_data_root


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
    fit: str = "squash"
    """How the region meets the square input: ``squash`` (resized as it is) or ``square`` (made square around its
    centre first, so the archive's aspect ratio is no cue). Part of the ROI step: recorded in ``model.json`` and the
    feature-cache key, applied alike by train, cv, compare, predict, explain, serve and ONNX."""
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
    head: str = "pool"
    """The default head is chosen by unseen hospitals (leave-one-source-out on cxr3, ``unseen_selection``): the
    pooled CNN head generalises best to held-out sources (mean per-source accuracy 0.607 vs 0.571 BiLSTM, 0.545 GRU,
    0.530 attention; docs/generalisation.md); the RNN heads stay one option away (``--head bilstm``)."""
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
    patience: int = 10
    """Early stopping: epochs without a better validation macro-F1. Replayed on 12 saved head histories trained
    with patience 15 and on 4 demo seeds run to 80 epochs, patience 10 kept the same best epoch as 15 every time,
    5 epochs sooner."""
    seed: int = 0
    class_weighted: bool = True
    finetune_blocks: int = 0
    """Stage (b): unfreeze the last N backbone blocks and train end to end (0 = frozen only)."""
    finetune_epochs: int = 4
    finetune_lr: float = 1e-4
    finetune_batch_size: int = 16
    augment: str | bool = "basic"
    """Fine-tuning augmentation (``cxrdx.data.transforms``): ``none``, ``basic`` (small affine + brightness /
    contrast; what ``true`` meant before) or ``domain`` (basic + contrast, gamma, blur, crops and burned-in
    markers, for unseen hospitals). ``true`` / ``false`` still work (-> basic / none)."""
    sampling: str = "none"
    """Training-row weights (``cxrdx.data.sampling``): ``none`` or ``source_balanced`` (within each class every
    manifest ``source`` has the same total weight; classes still balanced with ``class_weighted``). Used by
    head training, fine-tuning, cv, compare and leave-one-source-out alike; no ``source`` column -> none + a warning."""
    source_min_images: int = 20
    """``source_balanced``: a source with ``n`` < this many images of a class gets ``n / source_min_images`` of a
    full source's share of that class (so 3 images of one archive do not carry a third of the class)."""
    precision: str = "auto"
    """Training forwards: ``auto`` = bf16 autocast on CUDA and on CPUs with native bf16 (Intel AMX /
    AVX512-BF16; about 2x faster head training there), fp32 elsewhere; or force ``bf16`` / ``fp32``.
    Weights and optimiser state stay fp32; so do the predictions of the saved model."""
    num_workers: int = 0
    threads: int | None = None
    feature_runtime: str = "onnx"
    """What computes the frozen backbone's maps for ``cxrdx train`` / ``demo`` (and the test part they score):
    ``onnx`` (ONNX Runtime fp32 on the CPU, ~3x faster there; torch on a GPU) or ``torch``. Not bit-identical
    (~1e-6 relative), so each has its own cache entries; the run's ``model.json`` records which one it used."""


AUGMENT_ALIASES = {"true": "basic", "yes": "basic", "on": "basic", "1": "basic",
                   "false": "none", "no": "none", "off": "none", "0": "none"}


def augment_mode(value: str | bool) -> str:
    """``train.augment`` as a mode name: booleans (and their strings) of older configs -> ``basic`` / ``none``."""
    if isinstance(value, bool):
        return "basic" if value else "none"
    text = str(value).strip().lower()
    return AUGMENT_ALIASES.get(text, text)


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
