"""Lung masks for X-rays: moved to :mod:`cxrdx.features.lungs` (the ROI runs it inside feature extraction).

Re-exported here so that ``cxrdx lungs predict`` and existing imports keep working.
"""

from ..features.lungs import (  # noqa: F401
    LungPredictor,
    LungResult,
    NoLungsError,
    clean_mask,
    create_lung_predictor,
    lung_bbox,
    probabilities_to_mask,
    write_mask_png,
)
