"""The lung segmenter: a U-Net (segmentation-models-pytorch) on timm's ``tf_efficientnet_lite0``.

The encoder starts from the offline ImageNet EfficientNet-Lite0 weights that the
classifier uses (:func:`~cxrdx.models.weights.offline_efficientnet_lite0_state`);
nothing is downloaded. The network takes one grey channel scaled to ``[0, 1]`` and
applies the TF-style normalisation (mean = std = 0.5) itself, so the torch model, the
saved run and the ONNX graph all take the same input. It returns lung logits.

A run folder holds ``segmenter.safetensors`` + ``segmenter.json`` (no pickle) and,
after :func:`export_onnx`, ``segmenter.onnx``.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

WEIGHTS_FILE = "segmenter.safetensors"
INFO_FILE = "segmenter.json"
ONNX_FILE = "segmenter.onnx"
FORMAT = "cxrdx-lung-segmenter/1"
INPUT_NAME, OUTPUT_NAME = "image", "lung_logits"


class SegmenterError(RuntimeError):
    """A segmenter run folder that cannot be loaded or exported."""


@dataclass
class SegmenterInfo:
    """Everything needed to rebuild the network (saved as JSON beside the weights)."""

    encoder: str = "tf_efficientnet_lite0"
    image_size: int = 256
    decoder_channels: tuple[int, ...] = (128, 64, 32, 16, 8)
    mean: float = 0.5
    std: float = 0.5
    threshold: float = 0.5
    min_lung_fraction: float = 0.02
    min_confidence: float = 0.8
    """Mean lung probability inside the predicted mask below which it counts as "no lungs found"."""
    min_contrast: float = 8.0
    """Grey-level range (max - min) below which an image is blank ("no lungs found" whatever the net says).
    Not the standard deviation: some JSRT films span only 17 grey levels (std 3) and segment well."""
    encoder_weights: str = "imagenet"
    extra: dict = field(default_factory=dict)
    """Training provenance: data, split, epochs, validation Dice ..."""

    def to_dict(self) -> dict:
        out = asdict(self)
        out["decoder_channels"] = list(self.decoder_channels)
        return {"format": FORMAT, **out}

    @classmethod
    def from_dict(cls, raw: dict) -> "SegmenterInfo":
        if raw.get("format") != FORMAT:
            raise SegmenterError(f"not a cxrdx lung segmenter (format {raw.get('format')!r}, expected {FORMAT})")
        known = {f.name for f in fields(cls)}
        info = cls(**{k: v for k, v in raw.items() if k in known})
        info.decoder_channels = tuple(int(c) for c in info.decoder_channels)
        return info


class LungSegmenter(nn.Module):
    """``(N, 1, S, S)`` grey in ``[0, 1]`` -> ``(N, 1, S, S)`` lung logits."""

    def __init__(self, info: SegmenterInfo):
        super().__init__()
        import segmentation_models_pytorch as smp

        self.info = info
        self.unet = smp.Unet(
            f"tu-{info.encoder}", encoder_weights=None, in_channels=1, classes=1,
            decoder_channels=tuple(info.decoder_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.late(self.early(x))

    def early(self, x: torch.Tensor, until: int = 3) -> list[torch.Tensor]:
        """Normalised input, then the encoder stem and ``blocks[:until]``: ``[input, stride 2, stride 4, ...]``.

        ``late(early(x))`` is exactly smp's ``Unet.forward``: training can freeze and cache the
        high-resolution early part (most of the encoder's CPU time) and train what follows.
        ``until`` must end a stage (1, 2, 3, 5 or 7 for EfficientNet-Lite0).
        """
        body = self.encoder_body
        stage_ends = sorted(body._stage_out_idx)
        if until not in stage_ends:
            raise ValueError(f"until must end an encoder stage: one of {stage_ends}")
        x = (x - self.info.mean) / self.info.std
        h = body.bn1(body.conv_stem(x))
        feats = [x]
        for i, block in enumerate(body.blocks[:until]):
            h = block(h)
            if i + 1 in body._stage_out_idx:
                feats.append(h)
        return feats

    def late(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """The rest of the encoder after :meth:`early`, then the U-Net decoder and head: lung logits."""
        body = self.encoder_body
        done = sorted(body._stage_out_idx)[len(feats) - 2]  # blocks already run
        feats, h = list(feats), feats[-1]
        for i, block in enumerate(body.blocks[done:], start=done):
            h = block(h)
            if i + 1 in body._stage_out_idx:
                feats.append(h)
        return self.unet.segmentation_head(self.unet.decoder(feats))

    @property
    def encoder_body(self) -> nn.Module:
        return self.unet.encoder.model

    @torch.inference_mode()
    def probabilities(self, batch: torch.Tensor) -> np.ndarray:
        """Lung probabilities ``(N, S, S)`` for a float batch in ``[0, 1]``."""
        return torch.sigmoid(self(batch))[:, 0].numpy()


def imagenet_encoder_state(body: nn.Module) -> dict[str, torch.Tensor]:
    """The offline ImageNet EfficientNet-Lite0 weights in the key names of smp's ``features_only`` body.

    The stem's 3 colour filters are summed into one grey filter: a grey image fed as RGB (three equal
    channels, same mean/std) gives exactly the output of that single-channel filter.
    """
    from .weights import WeightsUnavailableError, offline_efficientnet_lite0_state

    full = offline_efficientnet_lite0_state()
    target = body.state_dict()
    missing = [k for k in target if k not in full]
    if missing:
        raise WeightsUnavailableError(f"offline EfficientNet-Lite0 weights lack {len(missing)} encoder tensor(s), e.g. {missing[0]}")
    state = {k: full[k] for k in target}
    stem = state["conv_stem.weight"]
    if stem.shape[1] != target["conv_stem.weight"].shape[1]:
        state["conv_stem.weight"] = stem.sum(dim=1, keepdim=True)
    return state


def create_segmenter(info: SegmenterInfo | None = None, *, weights: str = "imagenet") -> LungSegmenter:
    """A new segmenter; ``weights="imagenet"`` loads the offline encoder weights, ``"none"`` leaves it random."""
    info = info or SegmenterInfo()
    if info.encoder != "tf_efficientnet_lite0" and weights == "imagenet":
        raise SegmenterError(f"offline ImageNet weights exist only for tf_efficientnet_lite0, not {info.encoder}")
    model = LungSegmenter(info)
    if weights == "imagenet":
        model.encoder_body.load_state_dict(imagenet_encoder_state(model.encoder_body), strict=True)
    elif weights != "none":
        raise SegmenterError(f"weights must be 'imagenet' or 'none', got {weights!r}")
    info.encoder_weights = weights
    return model


def save_segmenter(model: LungSegmenter, run_dir: str | Path) -> Path:
    """Write ``segmenter.safetensors`` + ``segmenter.json`` into ``run_dir``; returns the folder."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.unet.state_dict().items()}
    save_file(state, str(run_dir / WEIGHTS_FILE))
    (run_dir / INFO_FILE).write_text(json.dumps(model.info.to_dict(), indent=2))
    return run_dir


def segmenter_digest(run_dir: str | Path) -> str:
    """``sha256:`` + 16 hex digits of ``segmenter.json`` + ``segmenter.safetensors``: the segmenter's identity
    (feature-cache keys, ``model.json`` of classifiers trained on its regions)."""
    import hashlib

    run_dir = Path(run_dir)
    digest = hashlib.sha256()
    for name in (INFO_FILE, WEIGHTS_FILE):
        path = run_dir / name
        if not path.is_file():
            raise SegmenterError(f"{run_dir} is not a lung segmenter run (no {name}); train one with `cxrdx lungs train`")
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return f"sha256:{digest.hexdigest()[:16]}"


def load_segmenter(run_dir: str | Path) -> LungSegmenter:
    """Rebuild a segmenter from its run folder (no network, no pickle); the model is in eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    info_path, weights_path = run_dir / INFO_FILE, run_dir / WEIGHTS_FILE
    if not info_path.is_file() or not weights_path.is_file():
        raise SegmenterError(f"{run_dir} is not a lung segmenter run ({INFO_FILE} and {WEIGHTS_FILE} expected)")
    try:
        info = SegmenterInfo.from_dict(json.loads(info_path.read_text()))
    except (ValueError, TypeError) as exc:
        raise SegmenterError(f"{info_path}: {exc}") from None
    model = LungSegmenter(info)
    try:
        model.unet.load_state_dict(load_file(str(weights_path)), strict=True)
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise SegmenterError(f"{weights_path}: weights do not fit the segmenter ({type(exc).__name__})") from None
    return model.eval()


def export_onnx(model: LungSegmenter, run_dir: str | Path, *, opset: int = 17, atol: float = 1e-4) -> Path:
    """Write ``segmenter.onnx`` (dynamic batch) and check it against torch with ONNX Runtime within ``atol``."""
    import onnx

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / ONNX_FILE
    size = model.info.image_size
    model = model.eval()
    example = torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(0))
    tmp = path.with_suffix(".tmp.onnx")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notes
        torch.onnx.export(
            model, (example,), str(tmp), dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    proto = onnx.load(str(tmp))
    onnx.checker.check_model(proto)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "cxrdx_segmenter", json.dumps(model.info.to_dict())
    onnx.save(proto, str(path))
    tmp.unlink(missing_ok=True)
    diff = onnx_max_difference(model, path, example)
    if diff > atol:
        path.unlink(missing_ok=True)
        raise SegmenterError(f"ONNX export differs from torch by {diff:.2e} (> {atol:g}); not written")
    return path


def onnx_session(path: str | Path, threads: int | None = None):
    """A CPU ONNX Runtime session for ``segmenter.onnx``."""
    import os

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or (os.cpu_count() or 1)
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_max_difference(model: LungSegmenter, path: str | Path, batch: torch.Tensor) -> float:
    """Largest absolute difference between torch and ONNX Runtime logits on ``batch``."""
    with torch.inference_mode():
        ref = model.eval()(batch).numpy()
    out = onnx_session(path).run([OUTPUT_NAME], {INPUT_NAME: batch.numpy().astype(np.float32)})[0]
    return float(np.abs(out - ref).max())
