"""Where images come from: file suffixes, folder expansion, and bounded reading of one file's bytes."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Iterable

from .errors import (
    EmptyFileError,
    FileAccessError,
    ImageReadError,
    ImageTooLargeError,
    MissingFileError,
    NotAnImageError,
    ReadLimits,
)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".bmp", ".tif", ".tiff"}
DICOM_SUFFIXES = (".dcm", ".dicom")


def load_bytes(source: str | Path | bytes, name: str | None, limits: ReadLimits) -> tuple[bytes, str]:
    """The bytes of a path (at most ``limits.max_file_bytes``) or of raw bytes, and the name errors use."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        name = name or "upload"
    else:
        path = Path(source)
        name = name or path.name or str(path)
        try:
            if not path.exists():
                raise _why_missing(path, name)
            if path.is_dir():
                raise NotAnImageError("is a folder, not an image", source=name)
            if not path.is_file():
                raise FileAccessError("is not a regular file", source=name)
            size = path.stat().st_size
            if size > limits.max_file_bytes:
                raise ImageTooLargeError(f"file of {size} bytes exceeds {limits.max_file_bytes}", source=name)
            with path.open("rb") as fh:
                data = fh.read(limits.max_file_bytes + 1)
        except ImageReadError:
            raise
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise FileAccessError(f"file cannot be read ({reason})", source=name) from None
    if len(data) == 0:
        raise EmptyFileError("file is empty (0 bytes)", source=name)
    if len(data) > limits.max_file_bytes:
        raise ImageTooLargeError(f"file of {len(data)} bytes exceeds {limits.max_file_bytes}", source=name)
    return data, name


def _why_missing(path: Path, name: str) -> ImageReadError:
    """A path that does not resolve: say whether it is a symlink loop, a dangling link, or simply absent."""
    if path.is_symlink():
        try:
            os.stat(path)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return FileAccessError("is a symbolic link loop", source=name)
        return MissingFileError("is a broken symbolic link (its target does not exist)", source=name)
    return MissingFileError("file does not exist", source=name)


def _listed(entry: Path) -> bool:
    """An image-named entry of a folder: regular files, and also links and special files, so that a
    dangling link, a link loop or a FIFO is reported by the reader instead of silently skipped."""
    if entry.suffix.lower() not in IMAGE_SUFFIXES:
        return False
    try:
        return not entry.is_dir() or entry.is_symlink() and not entry.exists()
    except OSError:  # cannot even stat it: list it, the reader reports why
        return True


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Paths as given, folders expanded (recursively) to their image-named entries, sorted.

    Only folders are expanded; a named path that does not exist stays in the list
    (the reader reports it). Inside a folder, symbolic links that do not resolve and
    non-regular files with an image suffix are kept too, for the same reason.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if is_folder(p):
            out.extend(sorted(f for f in p.rglob("*") if _listed(f)))
        else:
            out.append(p)  # also what cannot even be stat-ed: the reader says why
    return out


def is_folder(path: Path) -> bool:
    """``path.is_dir()``, False where it cannot even be stat-ed."""
    try:
        return path.is_dir()
    except OSError:  # EACCES on a parent folder ...: not a folder we can expand
        return False
