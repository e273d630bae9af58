"""The hybrid CNN -> RNN model: backbone feature map, read as a sequence by a head."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from ..config.errors import ConfigError
from .backbones import BackboneSpec
from .outputs import probabilities


@dataclass
class ModelInfo:
    """Everything needed to rebuild a model; saved as JSON beside the weights."""

    backbone: str
    head: str
    weights: str
    classes: list[str]
    hidden: int = 128
    proj_dim: int = 256
    dropout: float = 0.3
    image_size: int = 224
    weights_tag: str = "none"
    modality: str = "xray"
    """What the model was trained on: ``xray``, ``ct`` (or ``xray+ct`` for a joint model)."""
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class HybridModel(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module, spec: BackboneSpec, info: ModelInfo):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.spec = spec
        self.info = info

    @property
    def classes(self) -> list[str]:
        return list(self.info.classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S]`` normalised images -> ``[B, C, S/32, S/32]`` map."""
        return self.backbone.forward_features(x)

    def forward_head(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.head(fmap)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.inference_mode()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        self.eval()
        return probabilities(self(x))

    def freeze_backbone(self, trainable_blocks: int = 0) -> None:
        """Freeze the backbone except its last ``trainable_blocks`` blocks and the layers after them."""
        for p in self.backbone.parameters():
            p.requires_grad = False
        if trainable_blocks <= 0:
            return
        if not self.spec.blocks:
            raise ConfigError(f"backbone {self.spec.name} has no CNN blocks to fine-tune (it reads raw pixels); "
                             "train it with train.finetune_blocks=0")
        container = self.backbone.get_submodule(self.spec.blocks)
        for child in list(container.children())[-trainable_blocks:]:
            child.requires_grad_(True)
        parent_path, _, top = self.spec.blocks.rpartition(".")
        parent = self.backbone.get_submodule(parent_path) if parent_path else self.backbone
        after = False
        for name, module in parent.named_children():  # the layers after the blocks (conv head, norm)
            if after:
                module.requires_grad_(True)
            after = after or name == top


class ProbabilityModel(nn.Module):
    """Wraps a model so that its output is :func:`~cxrdx.models.outputs.probabilities` (for export and serving).

    ``pooled_features``: also return the backbone map's spatial mean ``[B, C]`` (what the input guard measures),
    from the same backbone pass."""

    def __init__(self, model: nn.Module, pooled_features: bool = False):
        super().__init__()
        self.model = model
        self.pooled_features = pooled_features

    def forward(self, x: torch.Tensor):
        if not self.pooled_features:
            return probabilities(self.model(x))
        fmap = self.model.forward_features(x)
        return probabilities(self.model.forward_head(fmap)), fmap.float().mean(dim=(2, 3))
