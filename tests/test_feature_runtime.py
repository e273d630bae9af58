"""Frozen features through ONNX Runtime: its own cache entries, maps matching torch's within fp16 rounding."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from cxrdx.features.cache import cache_key, extract_features
from cxrdx.models.factory import create_model
from test_serve_support import cxr3_images


def test_onnx_feature_maps_match_torch_and_are_cached_apart(cxr3_root, tmp_path):
    torch.manual_seed(0)
    model = create_model("tf_efficientnet_lite0", "bilstm", weights="imagenet")
    rows = pd.DataFrame({"image": [str(p) for p in cxr3_images(cxr3_root, 5)], "target": 0})
    ref = extract_features(model, rows, tmp_path, runtime="torch", progress=False)
    fast = extract_features(model, rows, tmp_path, runtime="onnx", progress=False)
    assert fast.misses == len(rows) and fast.hits == 0  # not served from the torch entries
    a, b = ref.features.astype(np.float32), fast.features.astype(np.float32)
    # fp32 in both, different summation order: equal after fp16 rounding but for a last-bit difference here and there
    assert (ref.features == fast.features).mean() > 0.99
    np.testing.assert_allclose(b, a, rtol=1e-2, atol=2e-3)
    with torch.inference_mode():
        pa, pb = (torch.softmax(model.head(torch.from_numpy(x)), -1).numpy() for x in (a, b))
    assert np.abs(pa - pb).max() < 1e-3
    assert (tmp_path / "features" / cache_key("tf_efficientnet_lite0", model.info.weights_tag, 224, runtime="onnx")).is_dir()
    assert len(list((tmp_path / "onnx").glob("backbone-*.onnx"))) == 1  # the exported backbone, made once

    model.info.extra["feature_runtime"] = "onnx"  # what model.json records for a run trained this way
    again = extract_features(model, rows, tmp_path, progress=False)
    assert again.hits == len(rows) and np.array_equal(again.features, fast.features)
