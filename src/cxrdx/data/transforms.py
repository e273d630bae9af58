"""Greyscale X-ray -> normalised 3-channel tensor, with optional training augmentation.

No horizontal flip by default: the heart sits on the patient's left and a
flipped film is a different (situs inversus) anatomy.

``augment`` (:data:`AUGMENTATIONS`, ``train.augment``), applied to the ``S x S`` uint8 image before it is
normalised (fine-tuning only; features and predictions never augment):

* ``none``: resize only.
* ``basic``: a small affine (rotation <= 7 deg, shift <= 5%, scale 0.9-1.1) and brightness / contrast x [0.8, 1.2].
* ``domain``: what differs between hospitals, for models that must work on archives they never saw (issue 12):
  a burned-in marker (:class:`BurnedInMarker`, p = 0.5), a random crop of 75-100% of the area
  (:class:`~torchvision.transforms.v2.RandomResizedCrop`), rotation <= 10 deg / shift <= 5% / scale 0.9-1.1,
  brightness / contrast x [0.7, 1.3], gamma in [0.7, 1.5] (:class:`RandomGamma`) and a Gaussian blur
  (sigma 0.1-1.5 px, p = 0.3).

Every random draw comes from torch's generator, so a seeded run (``train.seed``; DataLoader workers are
seeded from it) augments identically every time. ``true`` / ``false`` of older configs mean ``basic`` / ``none``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..config.sections import augment_mode
from ..registry import Registry

AUGMENTATIONS: Registry[str] = Registry("augmentations", describe=lambda text: text)
AUGMENTATIONS.register("none", "no augmentation (resize only)")
AUGMENTATIONS.register("basic", "small affine (rotation <= 7 deg, shift 5%, scale 0.9-1.1), brightness / contrast +-20%")
AUGMENTATIONS.register("domain", "basic + random crop, gamma, Gaussian blur and burned-in L / R markers or labels "
                                 "(hospital differences, for unseen sources)")

# 5 x 7 bitmaps of the letters hospitals burn into films (side and projection markers)
_GLYPHS = {
    "L": ["10000", "10000", "10000", "10000", "10000", "10000", "11111"],
    "R": ["11110", "10001", "10001", "11110", "10100", "10010", "10001"],
    "A": ["01110", "10001", "10001", "11111", "10001", "10001", "10001"],
    "P": ["11110", "10001", "10001", "11110", "10000", "10000", "10000"],
}
GLYPHS = {k: np.array([[c == "1" for c in row] for row in v], dtype=bool) for k, v in _GLYPHS.items()}


def _uniform(lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(()))


def _randint(lo: int, hi: int) -> int:
    """Uniform integer in ``[lo, hi]``."""
    return int(torch.randint(lo, hi + 1, ()))


class RandomGamma(torch.nn.Module):
    """``x -> 255 * (x / 255) ** gamma`` on a uint8 image, ``gamma`` log-uniform in ``gamma_range``
    (> 1 darkens the mid-greys, < 1 brightens them; 0 and 255 stay)."""

    def __init__(self, gamma_range: tuple[float, float] = (0.7, 1.5)):
        super().__init__()
        self.gamma_range = gamma_range

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        gamma = math.exp(_uniform(math.log(self.gamma_range[0]), math.log(self.gamma_range[1])))
        return apply_gamma(img, gamma)


def apply_gamma(img: torch.Tensor, gamma: float) -> torch.Tensor:
    lut = torch.round(255.0 * (torch.arange(256, dtype=torch.float64) / 255.0) ** gamma).clamp(0, 255).to(torch.uint8)
    out = lut[img.to(torch.long)]
    return tv_tensors.wrap(out, like=img) if isinstance(img, tv_tensors.Image) else out


class BurnedInMarker(torch.nn.Module):
    """With probability ``p``, burn a marker into a uint8 image near a random corner or edge midpoint:
    a letter (L, R, A or P; 5-12% of the short side tall) or a filled label rectangle (8-20% x 4-10% of the
    sides), in a near-white (230-255) or near-black (0-25) grey, like the side markers and labels of
    hospital films. Only the marker's pixels change, all inside the outer 40% band next to the chosen border."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = p

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if float(torch.rand(())) >= self.p:
            return img
        return burn_marker(img)


def burn_marker(img: torch.Tensor) -> torch.Tensor:
    """One marker, always (see :class:`BurnedInMarker`); ``img`` is ``(C, H, W)`` uint8."""
    h, w = img.shape[-2:]
    short = min(h, w)
    if _randint(0, 2) < 2:  # a letter two times in three
        glyph = GLYPHS["LRAP"[_randint(0, 3)]]
        cell = max(1, round(_uniform(0.05, 0.12) * short / glyph.shape[0]))
        stamp = np.kron(glyph, np.ones((cell, cell), dtype=bool))
    else:
        stamp = np.ones((max(1, round(_uniform(0.04, 0.10) * h)), max(1, round(_uniform(0.08, 0.20) * w))), dtype=bool)
    sh, sw = min(stamp.shape[0], h), min(stamp.shape[1], w)
    stamp = stamp[:sh, :sw]
    margin_y, margin_x = round(_uniform(0.01, 0.06) * h), round(_uniform(0.01, 0.06) * w)
    place = _randint(0, 7)  # 4 corners, then 4 edge midpoints (top, bottom, left, right)
    spots = [(margin_y, margin_x), (margin_y, w - sw - margin_x), (h - sh - margin_y, margin_x),
             (h - sh - margin_y, w - sw - margin_x), (margin_y, (w - sw) // 2), (h - sh - margin_y, (w - sw) // 2),
             ((h - sh) // 2, margin_x), ((h - sh) // 2, w - sw - margin_x)]
    y0, x0 = (max(0, min(v, lim)) for v, lim in zip(spots[place], (h - sh, w - sw)))
    level = _randint(230, 255) if float(torch.rand(())) < 0.7 else _randint(0, 25)
    out = img.clone()
    region = out[..., y0:y0 + sh, x0:x0 + sw]
    region[..., torch.from_numpy(stamp)] = level
    return out


def augmentation_steps(mode: str, image_size: int) -> list:
    """The random steps of ``mode`` (after the resize to ``image_size``), on a uint8 ``(1, S, S)`` image."""
    AUGMENTATIONS.check(mode)
    if mode == "none":
        return []
    if mode == "basic":
        return [v2.RandomAffine(degrees=7, translate=(0.05, 0.05), scale=(0.9, 1.1)), v2.ColorJitter(brightness=0.2, contrast=0.2)]
    return [
        BurnedInMarker(p=0.5),
        v2.RandomResizedCrop((image_size, image_size), scale=(0.75, 1.0), ratio=(0.9, 1.1), antialias=True),
        v2.RandomAffine(degrees=10, translate=(0.05, 0.05), scale=(0.9, 1.1)),
        v2.ColorJitter(brightness=0.3, contrast=0.3),
        RandomGamma((0.7, 1.5)),
        v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=(0.1, 1.5))], p=0.3),
    ]


def build_transform(
    image_size: int = 224,
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
    std: tuple[float, float, float] = (0.5, 0.5, 0.5),
    augment: bool | str = False,
    hflip: bool = False,
) -> v2.Compose:
    """``augment``: a mode of :data:`AUGMENTATIONS` (or a bool: ``True`` = ``basic``)."""
    mode = augment_mode(augment)
    steps: list = [v2.ToImage(), v2.Resize((image_size, image_size), antialias=True)]
    steps += augmentation_steps(mode, image_size)
    if hflip and mode != "none":
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
