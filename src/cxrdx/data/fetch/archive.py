"""A source's archive, opened read-only: a zip file or a folder holding the extracted repository."""

from __future__ import annotations

import zipfile
from pathlib import Path

from .base import FetchError
from .download import describe_error


class Archive:
    """Read-only view of a zip file or an extracted folder, with ``/``-separated member names."""

    def __init__(self, path: Path, source: str):
        self.path = Path(path)
        self.source = source
        self._zip: zipfile.ZipFile | None = None
        self._sizes: dict[str, int] = {}
        if self.path.is_dir():
            for f in sorted(self.path.rglob("*")):
                if f.is_file():
                    self._sizes[f.relative_to(self.path).as_posix()] = f.stat().st_size
        else:
            try:
                self._zip = zipfile.ZipFile(self.path)
            except (zipfile.BadZipFile, OSError) as exc:
                raise FetchError(
                    f"{source}: {self.path} is not a readable zip archive ({describe_error(exc)}); delete it and "
                    f"download again, or pass --source-url {source}=PATH to a zip or an extracted folder"
                ) from None
            for info in self._zip.infolist():
                if not info.is_dir():
                    self._sizes[info.filename] = info.file_size

    def names(self) -> list[str]:
        return [n for n in self._sizes if not _hidden(n)]

    def size(self, name: str) -> int:
        return self._sizes[name]

    def __contains__(self, name: str) -> bool:
        return name in self._sizes

    def read(self, name: str) -> bytes:
        if self._zip is not None:
            return self._zip.read(name)
        return (self.path / name).read_bytes()

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def __enter__(self) -> "Archive":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _hidden(name: str) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in name.split("/"))
