"""Heatmap over the X-ray, with a caption naming the prediction (PNG-ready PIL image)."""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pytorch_grad_cam.utils.image import show_cam_on_image


def _fit(arr: np.ndarray, max_side: int, resample: Image.Resampling) -> np.ndarray:
    h, w = arr.shape
    scale = min(1.0, max_side / max(h, w)) if max_side else 1.0
    if scale >= 1.0:
        return arr
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    mode = "L" if arr.dtype == np.uint8 else "F"
    return np.asarray(Image.fromarray(arr, mode=mode).resize(size, resample))


def make_overlay(
    grey: np.ndarray,
    heatmap: np.ndarray,
    caption: str,
    *,
    image_weight: float = 0.6,
    max_side: int = 1024,
    outlines: list[tuple[np.ndarray, tuple[int, int, int]]] | None = None,
) -> Image.Image:
    """RGB image: ``grey`` blended with the jet-coloured ``heatmap`` (same HxW), caption strip on top.

    ``outlines``: ``(bool mask HxW, RGB colour)`` pairs drawn as contours (e.g. lung and lesion masks).
    """
    if grey.shape != heatmap.shape:
        raise ValueError(f"image {grey.shape} and heatmap {heatmap.shape} differ in size")
    small = _fit(grey, max_side, Image.Resampling.BILINEAR)
    heat = np.clip(_fit(heatmap.astype(np.float32), max_side, Image.Resampling.BILINEAR), 0.0, 1.0)
    rgb = np.repeat((small.astype(np.float32) / 255.0)[..., None], 3, axis=2)
    blended_arr = np.ascontiguousarray(show_cam_on_image(rgb, heat, use_rgb=True, image_weight=image_weight))
    for mask, colour in outlines or []:
        small_mask = _fit(np.asarray(mask, dtype=np.uint8) * 255, max_side, Image.Resampling.NEAREST) > 127
        contours, _ = cv2.findContours(small_mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(blended_arr, contours, -1, colour, max(1, max(small.shape) // 300))
    blended = Image.fromarray(blended_arr)
    w, h = blended.size
    font_size = max(11, w // 40)
    font = ImageFont.load_default(size=font_size)
    pad = max(3, font_size // 3)
    lines = _wrap(caption, font, w - 2 * pad)
    line_h = font_size + pad
    strip = len(lines) * line_h + pad
    canvas = Image.new("RGB", (w, h + strip), (0, 0, 0))
    canvas.paste(blended, (0, strip))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((pad, pad + i * line_h), line, fill=(255, 255, 255), font=font)
    return canvas


def _wrap(caption: str, font: ImageFont.ImageFont, width: int) -> list[str]:
    """Greedy line packing of the caption's `` | ``-separated parts (a part too long stays whole)."""
    lines: list[str] = []
    for part in caption.split(" | "):
        trial = f"{lines[-1]} | {part}" if lines else part
        if lines and font.getlength(trial) <= width:
            lines[-1] = trial
        else:
            lines.append(part)
    return lines
