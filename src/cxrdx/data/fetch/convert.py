"""One archived image to a cxr3-style PNG: decoded by :func:`cxrdx.data.io.read_image`, 8-bit grey, shorter side 256."""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from PIL import Image

from ..io import read_image

TARGET_SIDE = 256


@dataclass
class Converted:
    png: bytes
    digest: str
    """SHA-256 of the decoded pixels: the same image in two archives (any format) has one digest."""
    width: int
    height: int
    mode: str


def _probe(data: bytes) -> tuple[int, int, str] | None:
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size[0], img.size[1], img.mode
    except Exception:  # noqa: BLE001 - DICOM or exotic: fall back to the decoded array
        return None


def resized_size(width: int, height: int, side: int = TARGET_SIDE) -> tuple[int, int]:
    """(w, h) with the shorter side exactly ``side`` and the aspect ratio kept."""
    if width <= height:
        return side, max(1, round(height * side / width))
    return max(1, round(width * side / height)), side


def convert_image(data: bytes, name: str, side: int = TARGET_SIDE) -> Converted:
    """Decode with :func:`read_image`, resize (LANCZOS) to shorter side ``side``, encode as 8-bit PNG."""
    arr = read_image(data, name=name)
    h, w = arr.shape
    digest = hashlib.sha256(f"{h}x{w}:".encode() + arr.tobytes()).hexdigest()
    probe = _probe(data)
    width, height, mode = probe if probe else (w, h, "DICOM")
    img = Image.fromarray(arr, mode="L")
    size = resized_size(w, h, side)
    if size != (w, h):
        img = img.resize(size, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return Converted(buf.getvalue(), digest, width, height, mode)


def safe_stem(stem: str) -> str:
    stem = re.sub(r"[^\w.\-]+", "_", stem).strip("._") or "image"
    return stem[:150]


def ordered_map(fn: Callable, items: list, workers: int) -> Iterator:
    """``map`` over a thread pool with bounded look-ahead, results in order."""
    if workers <= 1:
        for item in items:
            yield fn(item)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cxrdx-fetch") as pool:
        pending: deque[Future] = deque()
        it = iter(items)
        for item in it:
            pending.append(pool.submit(fn, item))
            if len(pending) >= workers * 3:
                break
        while pending:
            yield pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(fn, nxt))


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
