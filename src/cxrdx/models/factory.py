"""``create_model``: the one way to build a cxrdx model, by registered backbone and head names."""

from __future__ import annotations

from ..config.sections import ModelConfig
from ..tasks import classes_for
from .backbones import BACKBONES, build_backbone
from .heads import HEADS, create_head
from .hybrid import HybridModel, ModelInfo
from .weights import load_backbone_weights


def create_model(
    backbone: str = ModelConfig.backbone,
    head: str = ModelConfig.head,
    num_classes: int | None = None,
    weights: str = ModelConfig.weights,
    *,
    classes: list[str] | tuple[str, ...] | None = None,
    hidden: int = ModelConfig.hidden,
    proj_dim: int = ModelConfig.proj_dim,
    dropout: float = ModelConfig.dropout,
    image_size: int = 224,
    modality: str = "xray",
) -> HybridModel:
    """Build backbone + head. ``weights``: ``imagenet``, ``none`` or a file path (backbone weights). The defaults
    are :class:`~cxrdx.config.sections.ModelConfig`'s (one place).

    ``backbone`` and ``head`` are names in :data:`~cxrdx.models.backbones.BACKBONES` and
    :data:`~cxrdx.models.heads.HEADS`; both are checked before any network is built.
    """
    spec = BACKBONES.get(backbone)
    HEADS.check(head)
    classes = list(classes_for(3 if num_classes is None else num_classes) if classes is None else classes)
    if num_classes is not None and num_classes != len(classes):
        raise ValueError(f"num_classes={num_classes} but {len(classes)} class names given")
    net = build_backbone(spec)
    tag = load_backbone_weights(net, backbone, weights)
    head_module = create_head(head, spec.channels, len(classes), hidden=hidden, proj_dim=proj_dim, dropout=dropout)
    info = ModelInfo(
        backbone=backbone, head=head, weights=weights, classes=classes, hidden=hidden,
        proj_dim=proj_dim, dropout=dropout, image_size=image_size, weights_tag=tag,
        modality=modality,
    )
    return HybridModel(net, head_module, spec, info)


def create_model_from_info(info: ModelInfo, weights: str | None = None) -> HybridModel:
    return create_model(
        info.backbone, info.head, weights=weights if weights is not None else info.weights,
        classes=info.classes, hidden=info.hidden, proj_dim=info.proj_dim, dropout=info.dropout,
        image_size=info.image_size, modality=info.modality,
    )
