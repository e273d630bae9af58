"""Duplicate images in a manifest: the same picture must never sit on both sides of a split.

Two checks run over every image of a manifest (:func:`resolve_duplicates`, called by
:func:`cxrdx.data.manifest.load_manifest`):

* **identical files** (sha256 of the bytes). One row per picture is kept: later rows
  are dropped and listed; the patients of the copies are merged into one split group.
  The same picture with two different labels is an error (:class:`~cxrdx.data.manifest.ManifestError`).
* **near-duplicates** (re-encoded, resized or re-windowed copies): a 256-bit difference
  hash of a 32 x 32 grey thumbnail within :data:`NEAR_HAMMING` bits **and** a thumbnail
  correlation of at least :data:`NEAR_CORRELATION`. Both rows are kept (they may differ),
  and their patients are merged into one split group.

Merging writes a ``group_id`` column (the smallest patient id of the merged set;
``patient_id`` itself is untouched); :mod:`cxrdx.data.splits` groups by it. Thumbnails
are cached by file digest under the feature cache, so a second pass over cxr3's 2,266
images takes about a second.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

logger = logging.getLogger(__name__)

THUMB = 32
NEAR_HAMMING = 20
"""Difference-hash bits (of 256) within which two images are compared further."""
NEAR_CORRELATION = 0.975
"""Pearson correlation of the 32 x 32 thumbnails at or above which two images are the same picture."""
CACHE_FILE = "image-signatures-v1.npz"
_BLOCK = 2048


class DuplicateLabelError(ValueError):
    """One picture carries two different labels (raised as a ManifestError by load_manifest)."""


@dataclass
class DuplicateReport:
    dropped: list[tuple[str, str]] = field(default_factory=list)
    """(dropped image, kept image): identical files, one row kept."""
    merged: list[tuple[str, str, str]] = field(default_factory=list)
    """(patient a, patient b, why): patients put into one split group."""
    near_label_conflicts: list[tuple[str, str]] = field(default_factory=list)
    """Near-duplicate images with different labels (kept: a near match is not proof)."""
    unreadable: int = 0

    def lines(self) -> list[str]:
        out = []
        if self.dropped:
            eg = "; ".join(f"{d} = {k}" for d, k in self.dropped[:3])
            out.append(f"dropped {len(self.dropped)} row(s) whose image file is identical to an earlier row's, e.g. {eg}")
        if self.merged:
            eg = "; ".join(f"{a} + {b} ({why})" for a, b, why in self.merged[:5])
            out.append(f"merged {len(self.merged)} pair(s) of patients into one split group (same picture), e.g. {eg}")
        if self.near_label_conflicts:
            eg = "; ".join(f"{a} ~ {b}" for a, b in self.near_label_conflicts[:3])
            out.append(f"{len(self.near_label_conflicts)} near-duplicate pair(s) carry different labels, e.g. {eg}")
        return out


# --------------------------------------------------------------------- signatures


def _stat_key(path: str) -> str:
    st = os.stat(path)
    return f"{path}\n{st.st_size}\n{st.st_mtime_ns}"


def file_digest(path: str | Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def thumbnail(path: str | Path) -> np.ndarray | None:
    """A 32 x 32 ``uint8`` grey thumbnail through the hardened reader, or None when unreadable."""
    from .io import ImageReadError, read_image

    try:
        grey = read_image(path)
    except ImageReadError:
        return None
    img = Image.fromarray(grey)
    return np.asarray(img.resize((THUMB, THUMB), Image.BILINEAR, reducing_gap=2.0), dtype=np.uint8)


def _load_cache(cache: Path | None) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """``{stat key: sha256}`` and ``{sha256: thumbnail}`` from the cache file (empty when absent or broken)."""
    if cache is None or not cache.is_file():
        return {}, {}
    try:
        with np.load(cache, allow_pickle=False) as z:
            by_stat = dict(zip(z["stat"].tolist(), z["sha"].tolist()))
            by_sha = dict(zip(z["thumb_sha"].tolist(), z["thumb"]))
    except Exception as exc:  # noqa: BLE001 - a broken cache is rebuilt, never fatal
        logger.debug("ignoring an unreadable signature cache (%s)", type(exc).__name__)
        return {}, {}
    return by_stat, by_sha


def _save_cache(cache: Path, by_stat: dict[str, str], by_sha: dict[str, np.ndarray]) -> None:
    shas = sorted(by_sha)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.stem}.{os.getpid()}.npz")
        np.savez(
            tmp, stat=np.array(list(by_stat), dtype=str), sha=np.array(list(by_stat.values()), dtype=str),
            thumb_sha=np.array(shas, dtype=str),
            thumb=np.stack([by_sha[k] for k in shas]) if shas else np.zeros((0, THUMB, THUMB), np.uint8),
        )
        os.replace(tmp, cache)  # atomic: a concurrent reader sees the old or the new file
    except OSError as exc:
        logger.debug("cannot write the signature cache (%s)", type(exc).__name__)


def image_signatures(paths: list[str], cache_dir: Path | None = None) -> tuple[list[str], list[np.ndarray | None]]:
    """sha256 and 32 x 32 thumbnail of each path (None for an unreadable image), cached by digest."""
    cache = cache_dir / CACHE_FILE if cache_dir is not None else None
    by_stat, by_sha = _load_cache(cache)
    dirty = False
    digests, thumbs = [], []
    for path in paths:
        try:
            key = _stat_key(path)
            sha = by_stat.get(key)
            if sha is None:
                sha, dirty = file_digest(path), True
                by_stat[key] = sha
        except OSError:  # unreadable: no signature (the image reader reports it when the row is used)
            digests.append(f"unreadable:{path}")
            thumbs.append(None)
            continue
        thumb = by_sha.get(sha)
        if thumb is None:
            thumb = thumbnail(path)
            if thumb is not None:
                by_sha[sha], dirty = thumb, True
        digests.append(sha)
        thumbs.append(thumb)
    if dirty and cache is not None:
        _save_cache(cache, by_stat, by_sha)
    return digests, thumbs


def _dhash_bits(thumbs: np.ndarray) -> np.ndarray:
    """256-bit difference hashes (as 0/1 float32 rows) of ``N x 32 x 32`` thumbnails."""
    small = np.stack([np.asarray(Image.fromarray(t).resize((17, 16), Image.BILINEAR), dtype=np.int16) for t in thumbs])
    return (small[:, :, 1:] > small[:, :, :-1]).reshape(len(thumbs), -1).astype(np.float32)


def near_duplicate_pairs(thumbs: list[np.ndarray]) -> list[tuple[int, int]]:
    """Index pairs ``i < j`` of near-identical thumbnails (hash distance and correlation both close)."""
    if len(thumbs) < 2:
        return []
    stack = np.stack(thumbs)
    bits = _dhash_bits(stack)
    flat = stack.reshape(len(stack), -1).astype(np.float32)
    flat -= flat.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(flat, axis=1, keepdims=True)
    flat /= np.where(norm > 0, norm, 1.0)
    pairs = []
    for start in range(0, len(stack), _BLOCK):  # blocks bound the memory: N x 2048 floats at a time
        b = bits[start:start + _BLOCK]
        hamming = b @ (1.0 - bits).T + (1.0 - b) @ bits.T
        corr = flat[start:start + _BLOCK] @ flat.T
        ii, jj = np.nonzero((hamming <= NEAR_HAMMING) & (corr >= NEAR_CORRELATION))
        pairs.extend((start + i, j) for i, j in zip(ii.tolist(), jj.tolist()) if start + i < j)
    return pairs


# --------------------------------------------------------------------- resolution


class _Groups:
    """Union-find over patient ids; a set is named by its smallest id."""

    def __init__(self, ids) -> None:
        self.parent = {p: p for p in ids}

    def find(self, p: str) -> str:
        while self.parent[p] != p:
            self.parent[p] = self.parent[self.parent[p]]
            p = self.parent[p]
        return p

    def union(self, a: str, b: str) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        lo, hi = sorted((ra, rb))
        self.parent[hi] = lo
        return True


def resolve_duplicates(
    df: pd.DataFrame, *, cache_dir: Path | None = None, near: bool = True
) -> tuple[pd.DataFrame, DuplicateReport]:
    """Drop identical-file rows, merge the patients of duplicate pictures into ``group_id``.

    Raises :class:`DuplicateLabelError` when one picture carries two labels.
    """
    report = DuplicateReport()
    paths = [str(p) for p in df["image"]]
    digests, thumbs = image_signatures(paths, cache_dir)
    labels, patients = df["label"].astype(str).tolist(), df["patient_id"].astype(str).tolist()
    groups = _Groups(patients)
    first: dict[str, int] = {}
    keep = np.ones(len(df), dtype=bool)
    for i, sha in enumerate(digests):
        j = first.setdefault(sha, i)
        if j == i:
            continue
        if labels[i] != labels[j]:
            raise DuplicateLabelError(
                f"{paths[i]} and {paths[j]} are the same image (identical files) with two labels: "
                f"{labels[j]!r} and {labels[i]!r}"
            )
        keep[i] = False
        report.dropped.append((paths[i], paths[j]))
        if groups.union(patients[i], patients[j]):
            report.merged.append((patients[j], patients[i], "identical file"))
    if near:
        rows = [i for i in range(len(df)) if keep[i] and thumbs[i] is not None]
        for a, b in near_duplicate_pairs([thumbs[i] for i in rows]):
            i, j = rows[a], rows[b]
            if labels[i] != labels[j]:
                report.near_label_conflicts.append((paths[i], paths[j]))
            if groups.union(patients[i], patients[j]):
                report.merged.append((patients[i], patients[j], "near-duplicate"))
    report.unreadable = sum(t is None for t in thumbs)
    out = df[keep].copy()
    out["group_id"] = [groups.find(p) for p in out["patient_id"].astype(str)]
    for line in report.lines():
        logger.warning(line)
    return out.reset_index(drop=True), report
