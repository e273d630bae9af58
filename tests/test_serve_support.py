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

from loadtest import Upload, bad_uploads, free_port, kill_under_load, run_load, serve_in_thread  # noqa: E402,F401 (re-exported)


def make_run(run_dir: Path, head: str = "bilstm", weights: str = "imagenet", seed: int = 0, export: bool = True,
             modality: str = "xray", classes: list[str] | None = None) -> Path:
    from cxrdx.models.factory import create_model
    from cxrdx.inference.onnx_export import export_run
    from cxrdx.models.run import save_run

    torch.manual_seed(seed)
    save_run(create_model("tf_efficientnet_lite0", head, weights=weights, classes=classes, modality=modality), run_dir)
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


def make_ct(size: tuple[int, int] = (256, 256), seed: int = 0) -> np.ndarray:
    """A synthetic axial chest-CT-like uint8 slice: air around an elliptic body, two dark lungs, heart, spine, table."""
    h, w = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    j = lambda s=0.02: rng.normal(0, s)  # noqa: E731 - a little anatomy jitter per slice
    img = np.full((h, w), 8.0)
    img[((xx - 0.5 - j()) / (0.42 + j())) ** 2 + ((yy - 0.5) / (0.31 + j())) ** 2 <= 1] = 125
    for cx in (0.32, 0.68):
        img[((xx - cx - j()) / (0.13 + j(0.01))) ** 2 + ((yy - 0.46 - j()) / (0.2 + j(0.01))) ** 2 <= 1] = 22
    img[((xx - 0.54) / 0.1) ** 2 + ((yy - 0.55) / 0.09) ** 2 <= 1] = 140
    img[((xx - 0.5) / 0.045) ** 2 + ((yy - 0.74) / 0.05) ** 2 <= 1] = 235
    img[(yy > 0.86) & (yy < 0.88) & (xx > 0.1) & (xx < 0.9)] = 170
    img += rng.normal(0, 6, size=(h, w))
    return np.clip(img, 0, 255).astype(np.uint8)


def synthetic_features(run: Path, modalities: tuple[str, ...] = ("xray", "ct"), n: int = 90) -> dict[str, np.ndarray]:
    """Pooled backbone features of ``n`` synthetic X-ray- / CT-like pictures per modality, read like uploads
    through ``run``'s model (what the input guard is fitted on)."""
    from cxrdx.inference.guard_fit import array_features
    from cxrdx.models.run import load_run

    model = load_run(run)
    makers = {"xray": make_xray, "ct": make_ct}
    return {m: array_features(model, [makers[m]((int(200 + 7 * (i % 9)), int(220 + 11 * (i % 7))), seed=i)
                                      for i in range(n)]) for m in modalities}


def fit_guard_on(features: dict[str, np.ndarray], run: Path, save_to: list[Path]):
    """A real :class:`~cxrdx.inference.guard.InputGuard` on ``features`` (thresholds from out-of-fold distances),
    for ``run``'s backbone, saved into each of ``save_to``."""
    from cxrdx.inference.guard import InputGuard
    from cxrdx.models.run import read_info

    info = read_info(run / "model.json")[0]
    guard = InputGuard.fit(features, backbone=info.backbone, weights_tag=info.weights_tag, image_size=info.image_size,
                           false_refusal=0.02)
    for target in save_to:
        guard.save(target)
    return guard


_LAYOUTS: dict[str, tuple[Path, Path]] = {}


@pytest.fixture(scope="session")
def layouts(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """An X-ray run (three classes) and a CT run (two), each named by its folder (``chest-xray``, ``chest-ct``), in
    three layouts: ``plain`` (no guard), ``joint`` (the X-ray run's guard knows both modalities), ``split`` (each
    run's guard knows its own modality). Real guards, fitted on synthetic pictures (:func:`synthetic_features`).
    Built once per session even though several test modules import this fixture."""
    if not _LAYOUTS:
        _LAYOUTS.update(_build_layouts(tmp_path_factory.mktemp("multi")))
    return _LAYOUTS


def _build_layouts(base: Path) -> dict[str, tuple[Path, Path]]:
    import shutil

    from cxrdx.tasks import CLASSES_BINARY

    xray = make_run(base / "plain" / "chest-xray", export=False)
    ct = make_run(base / "plain" / "chest-ct", export=False, modality="ct", classes=list(CLASSES_BINARY), seed=1)
    feats = synthetic_features(xray)
    out = {"plain": (xray, ct)}
    for name in ("joint", "split"):
        out[name] = tuple(Path(shutil.copytree(run, base / name / run.name)) for run in (xray, ct))
    fit_guard_on(feats, xray, [out["joint"][0]])
    fit_guard_on({"xray": feats["xray"]}, xray, [out["split"][0]])
    fit_guard_on({"ct": feats["ct"]}, xray, [out["split"][1]])
    return out
