"""Greyscale X-ray -> normalised 3-channel tensor, with optional training augmentation.

No horizontal flip by default: the heart sits on the patient's left and a
flipped film is a different (situs inversus) anatomy.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms import v2


def build_transform(
    image_size: int = 224,
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
    std: tuple[float, float, float] = (0.5, 0.5, 0.5),
    augment: bool = False,
    hflip: bool = False,
) -> v2.Compose:
    steps: list = [v2.ToImage(), v2.Resize((image_size, image_size), antialias=True)]
    if augment:
        steps += [
            v2.RandomAffine(degrees=7, translate=(0.05, 0.05), scale=(0.9, 1.1)),
            v2.ColorJitter(brightness=0.2, contrast=0.2),
        ]
        if hflip:
            steps.append(v2.RandomHorizontalFlip())
    steps += [
        v2.RGB(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ]
    return v2.Compose(steps)


def preprocess(grey: np.ndarray, transform: v2.Compose) -> torch.Tensor:
    """``HxW`` uint8 -> ``3xSxS`` float tensor."""
    return transform(torch.from_numpy(np.require(grey, requirements=["C", "W"]))[None])
