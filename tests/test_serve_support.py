"""Shared helpers for the serve / ONNX / audit / web tests (no tests here).

Models are built in the test session: the ImageNet backbone (offline weights)
with a seeded random head, saved with ``save_run`` and exported to ONNX.
The load-test tool (``benchmarks/loadtest.py``, not part of the package) is imported here for the tests.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import dicom_bytes, make_xray  # noqa: F401 (dicom_bytes re-exported for the serve tests)

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

from loadtest import Upload, bad_uploads, free_port, run_load, serve_in_thread  # noqa: E402,F401 (re-exported)


def make_run(run_dir: Path, head: str = "bilstm", weights: str = "imagenet", seed: int = 0, export: bool = True) -> Path:
    from cxrdx.models.factory import create_model
    from cxrdx.inference.onnx_export import export_run
    from cxrdx.models.run import save_run

    torch.manual_seed(seed)
    save_run(create_model("tf_efficientnet_lite0", head, weights=weights), run_dir)
    if export:
        export_run(run_dir)
    return run_dir


def cxr3_images(root: Path, n: int) -> list[Path]:
    """``n`` real cxr3 PNGs spread over the three classes."""
    import pandas as pd

    meta = pd.read_csv(root / "metadata.csv")
    rows = pd.concat([g.head((n + 2) // 3) for _, g in meta.groupby("label")]).head(n)
    return [root / p for p in rows["image"]]


def png_bytes(arr: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(arr: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="session")
def served_run(tmp_path_factory) -> Path:
    """ImageNet backbone + seeded random bilstm head, with model.onnx (shared by the serve tests)."""
    return make_run(tmp_path_factory.mktemp("served") / "run")


def make_app(run_dir: Path, tmp_path: Path, **settings):
    from cxrdx.config import ServeConfig
    from cxrdx.serve.app import create_app

    settings.setdefault("database_url", f"sqlite:///{tmp_path / 'audit.db'}")
    return create_app(ServeConfig(model_dir=str(run_dir), **settings))
