"""Issue 16: EfficientNet-Lite1/2 offline weights, the raw-signal RNN baseline, multi-scale maps, test-time
augmentation, backbone ensembles and the four-architecture table of ``cxrdx compare``.

Weights come from the installed packages (no network); the grid runs on a small data set made here.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from PIL import Image

from cxrdx.config import ConfigError
from cxrdx.models.backbones import BACKBONES, get_spec
from cxrdx.models.factory import create_model
from cxrdx.models.weights import offline_state

from conftest import make_xray


@pytest.mark.parametrize("name,size,grid", [("tf_efficientnet_lite1", 240, 8), ("tf_efficientnet_lite2", 260, 9)])
def test_lite_offline_weights_load_tensor_by_tensor(name, size, grid):
    state = offline_state(name)
    ref = timm.create_model(name, pretrained=False, num_classes=0).state_dict()
    assert list(state) == list(ref)
    assert all(state[k].shape == ref[k].shape for k in ref)
    assert not any(torch.equal(state[k], ref[k]) for k in ref if k.endswith("conv_stem.weight"))  # not the random init
    spec = get_spec(name)
    assert spec.offline_weights and spec.input_size == (3, size, size) and spec.feature_size == (grid, grid)
    model = create_model(name, "pool", weights="imagenet", image_size=size)
    assert model.info.weights_tag == "imagenet"
    assert torch.equal(model.backbone.state_dict()["conv_stem.weight"], state["conv_stem.weight"])
    with torch.inference_mode():
        fmap = model.forward_features(torch.randn(1, 3, size, size))
    assert tuple(fmap.shape) == (1, spec.channels, grid, grid)


def test_raw_patches_are_a_pure_rearrangement_of_the_pixels():
    spec = get_spec("raw_patches")
    assert not spec.has_weights and "no weights" in BACKBONES.describe("raw_patches")
    model = create_model("raw_patches", "bilstm", weights="imagenet")
    assert model.info.weights_tag == "none" and not list(model.backbone.parameters())
    x = torch.randn(2, 3, 224, 224)
    fmap = model.forward_features(x)
    assert tuple(fmap.shape) == (2, 1024, 7, 7) == (2, spec.channels, *spec.feature_size)
    for i, j in ((0, 0), (3, 5), (6, 6)):
        patch = x[1, 0, 32 * i: 32 * i + 32, 32 * j: 32 * j + 32].reshape(-1)
        assert torch.equal(fmap[1, :, i, j], patch)
    assert torch.equal(fmap.sort(dim=1).values.flatten().sort().values, x[:, 0].flatten().sort().values)
    assert model(x).shape == (2, 3)


def test_raw_patches_refuse_finetuning_and_gradcam_with_one_line():
    from cxrdx.explain.cam import target_layer

    model = create_model("raw_patches", "gru", weights="none")
    with pytest.raises(ConfigError, match="no CNN blocks"):
        model.freeze_backbone(2)
    model.freeze_backbone(0)  # frozen: nothing to do
    with pytest.raises(ConfigError, match="no convolutional layer"):
        target_layer(model)


def test_multiscale_concatenates_the_final_map_and_the_stride16_stage():
    ms = create_model("tf_efficientnet_lite0_ms", "pool", weights="imagenet")
    plain = create_model("tf_efficientnet_lite0", "pool", weights="imagenet")
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        a, b = ms.forward_features(x), plain.forward_features(x)
    assert tuple(a.shape) == (1, 1392, 7, 7) == (1, get_spec("tf_efficientnet_lite0_ms").channels, 7, 7)
    assert torch.allclose(a[:, :1280], b, atol=1e-5)
    ms.freeze_backbone(1)  # the last block and the conv head after it train
    assert ms.backbone.base.conv_head.weight.requires_grad and not ms.backbone.base.conv_stem.weight.requires_grad


def test_tta_is_off_by_default_and_keeps_shapes():
    from cxrdx.inference.predictor import Predictor

    model = create_model("raw_patches", "pool", weights="none")
    plain = Predictor(model)
    assert plain.tta is False
    arrays = [make_xray(seed=s) for s in range(3)]
    p0 = plain.predict_arrays(arrays)
    tta = Predictor(model, tta=True)
    p1 = tta.predict_arrays(arrays)
    assert p0.shape == p1.shape == (3, 3)
    assert np.allclose(p1.sum(1), 1, atol=1e-5)
    flipped = plain.predict_arrays([a[:, ::-1].copy() for a in arrays])
    assert np.allclose(p1, (p0 + flipped) / 2, atol=1e-5)


def _made_dataset(root, n_patients: int = 36) -> None:
    (root / "images").mkdir(parents=True)
    rows = []
    for p in range(n_patients):
        label = ("covid", "pneumonia", "normal")[p % 3]
        coarse = np.random.default_rng(p).integers(0, 200, (8, 8)).astype(np.uint8)  # no two alike (duplicate check)
        img = np.asarray(Image.fromarray(coarse).resize((128, 128), Image.BICUBIC)).astype(np.int16)
        img[16:48, 16 + 30 * (p % 3): 48 + 30 * (p % 3)] += 60  # a class-dependent bright patch
        rel = f"images/p{p:02d}.png"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / rel)
        rows.append({"image": rel, "label": label, "patient_id": f"p{p:02d}", "source": "made"})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)


@pytest.mark.slow
def test_compare_grid_gives_the_four_architecture_table(tmp_path):
    from cxrdx.config import load_config
    from cxrdx.evaluation.architectures import markdown
    from cxrdx.evaluation.compare import GridRequest, run_grid

    _made_dataset(tmp_path / "data")
    cfg = load_config(None, [f"data.root={tmp_path / 'data'}", f"data.cache_dir={tmp_path / 'cache'}", "evaluation.folds=3",
                             "evaluation.epochs=2", "evaluation.bootstrap=50", "model.proj_dim=16", "model.hidden=8"])
    req = GridRequest(tasks=["3class"], models=["pool", "gru", "attention", "logreg"],
                      backbones=["raw_patches", "tf_efficientnet_lite0_ms"], blackout=False, border=False, native_size=True,
                      tta=True)
    result = run_grid(cfg, req, tmp_path / "out", progress=False, log=lambda *_: None)
    res = result["tasks"]["3class"]
    names = {r["name"] for r in res["rows"]}
    assert {"raw_patches+gru", "raw_patches+gru+tta", "tf_efficientnet_lite0_ms+attention", "tf_efficientnet_lite0_ms+logreg+tta"} <= names
    assert any(n.startswith("ensemble of backbones(") for n in names)
    arch = res["architectures"]
    groups = {r["architecture"] for r in arch["rows"]}
    assert {"raw-signal RNN", "CNN only", "hybrid CNN-RNN", "attention hybrid", "ensemble"} <= groups
    row = next(r for r in arch["rows"] if r["architecture"] == "raw-signal RNN" and r["cell"] == "raw_patches")
    assert row["head"] in ("gru", "attention") and row["image_size"] == 224
    assert set(row["per_class"]) == {"covid", "pneumonia", "normal"}
    sens = row["per_class"]["covid"]["sensitivity"]
    assert len(sens) == 3 and sens[1] <= sens[0] <= sens[2]
    saved = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    text = markdown(saved["tasks"]["3class"]["architectures"])
    assert text.count("\n") == len(arch["rows"]) + 1 and "raw-signal RNN" in text
    from cxrdx.evaluation.report import SECTIONS, write_report

    html = write_report(tmp_path / "out", n_boot=20)[0].read_text()
    assert SECTIONS[0] == "architectures" and html.index('id="architectures"') < html.index('id="unseen-hospitals"')
    raw_rows = [r for r in arch["rows"] if r["architecture"] == "raw-signal RNN"]
    assert {r["cell"] for r in raw_rows} == {"raw_patches", "raw_patches+tta-hflip"}  # with and without TTA
    assert html.count("<td style=\"text-align:left\">raw-signal RNN</td>") == len(raw_rows)


def test_candidates_fall_into_the_designs_architecture_groups():
    from cxrdx.evaluation.architectures import architecture_of

    raw = {"raw_patches"}
    assert architecture_of({"kind": "head", "backbone": "raw_patches", "head": "gru"}, raw) == "raw-signal RNN"
    assert architecture_of({"kind": "head", "backbone": "tf_efficientnet_lite1", "head": "pool"}, raw) == "CNN only"
    assert architecture_of({"kind": "logreg", "backbone": "tf_efficientnet_lite2", "head": None}, raw) == "CNN only"
    assert architecture_of({"kind": "head", "backbone": "tf_efficientnet_lite0_ms", "head": "bilstm"}, raw) == "hybrid CNN-RNN"
    assert architecture_of({"kind": "head", "backbone": "tf_efficientnet_lite0", "head": "attention"}, raw) == "attention hybrid"
    assert architecture_of({"kind": "ensemble", "backbone": "tf_efficientnet_lite0", "head": None}, raw) == "ensemble"
