import time

import pytest
import torch

from cxrdx.models import BACKBONES, HEADS, WeightsUnavailableError, create_head, create_model
from cxrdx.models.weights import offline_efficientnet_lite0_state


@pytest.mark.parametrize("head", sorted(HEADS))
def test_default_backbone_with_every_head(head):
    model = create_model("tf_efficientnet_lite0", head, num_classes=3, weights="none").eval()
    with torch.no_grad():
        fmap = model.forward_features(torch.randn(2, 3, 224, 224))
        logits = model.forward_head(fmap)
    assert fmap.shape == (2, 1280, 7, 7)
    assert logits.shape == (2, 3)


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_every_backbone_gives_7x7xC_and_every_head_reads_it(backbone):
    """Each seed backbone gives the 7x7xC map; each head turns it into class logits (3-class and binary)."""
    model = create_model(backbone, "pool", num_classes=3, weights="none").eval()
    channels = BACKBONES.get(backbone).channels
    with torch.no_grad():
        fmap = model.forward_features(torch.randn(1, 3, 224, 224))
        assert fmap.shape == (1, channels, 7, 7)
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 3)
        for head in HEADS:
            for k in (3, 2):
                assert create_head(head, channels, k).eval()(fmap).shape == (1, k)


def test_offline_imagenet_weights_load_and_change_predictions():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 224, 224)
    random_net = create_model("tf_efficientnet_lite0", "pool", weights="none").eval()
    pretrained = create_model("tf_efficientnet_lite0", "pool", weights="imagenet").eval()
    state = offline_efficientnet_lite0_state()
    assert len(state) == 294  # the 296 tensors of the package minus the ImageNet classifier
    for key, value in pretrained.backbone.state_dict().items():
        assert torch.equal(value, state[key])
    with torch.no_grad():
        assert not torch.allclose(random_net.forward_features(x), pretrained.forward_features(x))


def test_weights_from_local_safetensors_file(tmp_path):
    from safetensors.torch import save_file

    source = create_model("tf_efficientnet_lite0", "gru", weights="imagenet")
    path = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in source.backbone.state_dict().items()}, str(path))
    loaded = create_model("tf_efficientnet_lite0", "gru", weights=str(path))
    assert loaded.info.weights_tag.startswith("file-")
    for key, value in source.backbone.state_dict().items():
        assert torch.equal(value, loaded.backbone.state_dict()[key])


def test_unavailable_imagenet_weights_fail_fast_with_advice(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # empty hub cache
    monkeypatch.setenv("CXRDX_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match="cannot be reached") as info:
        create_model("densenet121", "lstm", weights="imagenet")
    assert "--weights" in str(info.value)
    assert time.monotonic() - start < 60  # it says so instead of hanging


def test_missing_weights_file_is_explained(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        create_model("tf_efficientnet_lite0", "gru", weights=str(tmp_path / "nope.safetensors"))


def test_freeze_backbone_keeps_only_last_blocks_trainable():
    model = create_model("tf_efficientnet_lite0", "bilstm", weights="none")
    model.freeze_backbone(0)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    model.freeze_backbone(1)
    trainable = {n.split(".")[0] + "." + n.split(".")[1] if n.startswith("blocks") else n.split(".")[0]
                 for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable == {"blocks.6", "conv_head", "bn2"}


def test_backbone_without_published_weights_says_so():
    with pytest.raises(WeightsUnavailableError, match="publishes no ImageNet weights"):
        create_model("resnetv2_152", "lstm", weights="imagenet")
