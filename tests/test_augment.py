"""Fine-tuning augmentation (``train.augment``): each domain op changes pixels as documented, keeps shape and range,
and a seeded pipeline augments identically every time."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from cxrdx.data.transforms import (GLYPHS, AUGMENTATIONS, BurnedInMarker, RandomGamma, apply_gamma, augmentation_steps,
                                   build_transform, burn_marker, preprocess)

from conftest import make_xray


@pytest.fixture
def grey():
    return make_xray((180, 150), seed=3)


def _img(value: int = 100, shape=(1, 96, 120)) -> torch.Tensor:
    return torch.full(shape, value, dtype=torch.uint8)


def test_gamma_darkens_or_brightens_mid_greys_and_keeps_black_and_white():
    x = torch.tensor([[[0, 64, 128, 200, 255]]], dtype=torch.uint8)
    dark, bright = apply_gamma(x, 1.5), apply_gamma(x, 0.7)
    assert dark.dtype == torch.uint8 and dark.shape == x.shape
    assert dark[0, 0, 0] == 0 and dark[0, 0, -1] == 255 and bright[0, 0, 0] == 0 and bright[0, 0, -1] == 255
    assert (dark[0, 0, 1:4] < x[0, 0, 1:4]).all() and (bright[0, 0, 1:4] > x[0, 0, 1:4]).all()
    assert torch.equal(apply_gamma(x, 1.0), x)
    torch.manual_seed(0)
    out = RandomGamma((0.7, 1.5))(_img(128))
    assert out.shape == (1, 96, 120) and len(out.unique()) == 1 and out.unique().item() != 128  # gamma != 1 drawn


def test_a_burned_in_marker_changes_only_a_small_patch_near_the_border():
    img = _img(100)
    for seed in range(40):
        torch.manual_seed(seed)
        out = burn_marker(img)
        assert out.shape == img.shape and out.dtype == torch.uint8
        changed = (out != img)[0]
        assert changed.any() and changed.float().mean() < 0.05  # a marker, not a new image
        levels = out[0][changed].unique()
        assert len(levels) == 1 and (levels.item() >= 230 or levels.item() <= 25)  # near-white or near-black ink
        ys, xs = torch.nonzero(changed, as_tuple=True)
        h, w = changed.shape
        near_top_or_bottom = ys.max() < 0.4 * h or ys.min() > 0.6 * h
        near_left_or_right = xs.max() < 0.4 * w or xs.min() > 0.6 * w
        assert near_top_or_bottom or near_left_or_right, (seed, ys.min(), ys.max(), xs.min(), xs.max())
    torch.manual_seed(0)
    assert torch.equal(BurnedInMarker(p=0.0)(img), img)
    assert set(GLYPHS) == {"L", "R", "A", "P"} and all(g.shape == (7, 5) for g in GLYPHS.values())


def test_blur_smooths_contrast_and_crop_rotation_keep_shape(grey):
    checker = torch.from_numpy(((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8))[None]
    blurred = v2.GaussianBlur(kernel_size=5, sigma=1.5)(checker)
    assert blurred.float().std() < 0.5 * checker.float().std() and abs(blurred.float().mean() - checker.float().mean()) < 5
    steps = augmentation_steps("domain", 64)
    crop = next(s for s in steps if isinstance(s, v2.RandomResizedCrop))
    torch.manual_seed(0)
    img = torch.from_numpy(grey)[None]
    resized = v2.Resize((64, 64), antialias=True)(img)
    cropped = crop(resized)
    assert cropped.shape == (1, 64, 64) and not torch.equal(cropped, resized)


@pytest.mark.parametrize("mode", ["none", "basic", "domain", True, False])
def test_every_mode_keeps_shape_and_range_and_is_seeded(grey, mode):
    tf = build_transform(64, augment=mode)
    torch.manual_seed(7)
    a = preprocess(grey, tf)
    torch.manual_seed(7)
    b = preprocess(grey, tf)
    assert a.shape == (3, 64, 64) and a.dtype == torch.float32
    assert a.min() >= -1.0 - 1e-6 and a.max() <= 1.0 + 1e-6  # mean = std = 0.5 -> [-1, 1]
    assert torch.equal(a, b)
    plain = preprocess(grey, build_transform(64))
    if mode in ("none", False):
        assert torch.equal(a, plain)
    else:
        torch.manual_seed(8)
        assert not torch.equal(preprocess(grey, tf), a)  # another draw, another image
        assert not torch.equal(a, plain)


def test_domain_mode_has_every_documented_op():
    kinds = {type(s).__name__ for s in augmentation_steps("domain", 224)}
    assert {"BurnedInMarker", "RandomResizedCrop", "RandomAffine", "ColorJitter", "RandomGamma", "RandomApply"} <= kinds
    assert augmentation_steps("none", 224) == [] and AUGMENTATIONS.names() == ["none", "basic", "domain"]
