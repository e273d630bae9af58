"""Torch dataset over a manifest (CSV-driven, as torchxrayvision's datasets are)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from .io import ReadLimits, read_image
from .transforms import preprocess


class CXRDataset(Dataset):
    """Rows of a manifest as ``(image_tensor, target)``.

    ``image_fn`` may alter the greyscale array before the transform (for example
    to black out the lungs in the shortcut control).
    """

    def __init__(
        self,
        manifest: pd.DataFrame,
        transform: Callable,
        limits: ReadLimits | None = None,
        image_fn: Callable[[np.ndarray, pd.Series], np.ndarray] | None = None,
    ):
        self.manifest = manifest.reset_index(drop=True)
        self.transform = transform
        self.limits = limits
        self.image_fn = image_fn

    def __len__(self) -> int:
        return len(self.manifest)

    def load_grey(self, index: int) -> np.ndarray:
        row = self.manifest.iloc[index]
        grey = read_image(row["image"], limits=self.limits)
        if self.image_fn is not None:
            grey = self.image_fn(grey, row)
        return grey

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        target = int(self.manifest.iloc[index].get("target", -1))
        return preprocess(self.load_grey(index), self.transform), target
