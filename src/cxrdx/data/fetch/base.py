"""What every source of ``cxrdx data fetch`` shares: the output columns, the result, and the :class:`Source` protocol.

A source knows where its archive lives (``url``, optionally ``sha256``) and turns
the opened archive into a :class:`Catalogue`: the images to keep (:class:`Item`,
with label and metadata), what it left out on purpose and why, and an index of
its images by file name that a later source may use to find a patient.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .archive import Archive

COLUMNS = (
    "image", "label", "patient_id", "source", "benchmark", "view", "offset_days", "sex", "age",
    "survival", "finding", "location", "license", "doi", "original_name", "original_width",
    "original_height", "original_mode", "lung_mask", "lesion_mask",
)

class FetchError(RuntimeError):
    """A source that cannot be downloaded, opened or recognised (one line, for the CLI)."""


@dataclass
class Skipped:
    source: str
    file: str
    reason: str


@dataclass
class FetchResult:
    out_dir: Path
    counts: dict[str, int]
    """Images written per label."""
    per_source: dict[str, int]
    skipped: list[Skipped] = field(default_factory=list)
    """Files that were meant to be kept but could not be (unreadable, missing)."""
    excluded: dict[str, int] = field(default_factory=dict)
    """Rows left out on purpose, counted by reason (CT, lateral view, unknown finding ...)."""
    duplicates: int = 0
    archives: dict[str, dict] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def manifest(self) -> Path:
        return self.out_dir / "metadata.csv"


@dataclass
class Item:
    """One image of an archive that a source wants in the dataset."""

    source: str
    member: str
    label: str
    meta: dict
    """Manifest columns from the source (patient_id, view, finding, licence ...)."""
    key: str | None = None
    """Who this image is across sources (a lower-case ieee8023 file name): of items with one key,
    only those of the first source in registry order are kept."""
    patient_known: bool = True
    """False where ``patient_id`` is a stand-in (the image is its own patient) that a copy
    of the same image in another source may replace."""


@dataclass
class Catalogue:
    """What a source found in its archive."""

    items: list[Item] = field(default_factory=list)
    index: dict[str, tuple[str, dict]] = field(default_factory=dict)
    """Every listed image by lower-case file name and stem, for sources that read this one."""
    excluded: Counter = field(default_factory=Counter)
    skipped: list[Skipped] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@runtime_checkable
class Source(Protocol):
    """A public archive that :func:`cxrdx.data.fetch.fetch` can turn into cxr3-style rows."""

    name: str
    url: str
    homepage: str
    description: str
    license: str
    sha256: str | None
    """Expected SHA-256 of the archive; ``None`` for moving targets such as a branch zip."""
    benchmark: str
    """Value of the ``benchmark`` column for this source's rows ("" for none)."""
    reads: tuple[str, ...]
    """Sources whose catalogues this one uses (they are read first when selected)."""

    def catalogue(self, archive: Archive, earlier: Mapping[str, Catalogue]) -> Catalogue:
        """The images to keep from ``archive``; ``earlier`` holds the catalogues of ``reads`` that were fetched."""
        ...
