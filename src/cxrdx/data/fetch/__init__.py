"""Download the public sources and lay them out like the reference dataset cxr3.

``cxrdx data fetch --out DIR`` (or :func:`fetch`) downloads the archives of the
sources in :data:`~cxrdx.data.fetch.sources.SOURCES`, one module each:

* ``darkcovidnet`` (:mod:`.darkcovidnet`): the DarkCovidNet repository
  (github.com/muhammedtalo/COVID-19), folders ``X-Ray Image DataSet/{Covid-19,No_findings,Pneumonia}``;
* ``ieee8023`` (:mod:`.ieee8023`): the COVID-19 image data collection
  (github.com/ieee8023/covid-chestxray-dataset), ``metadata.csv`` + ``images/``,

and writes ``DIR/images/<label>/<name>.png`` (8-bit greyscale, shorter side 256 px)
plus ``DIR/metadata.csv`` with the columns of cxr3 (:data:`COLUMNS`), which
:func:`cxrdx.data.manifest.load_manifest` reads.

* An image in both sources (same file name, or the same decoded pixels) is kept
  once, as the DarkCovidNet row, with the ieee8023 patient.
* An unreadable image is reported and skipped, never fatal.

Downloads (:mod:`.download`) use ``urllib`` with a timeout, stream to
``<file>.part`` (resumed when the server allows ranges) and are renamed only when
complete and, if a SHA-256 is known, verified. ``source_urls`` replaces a source's
URL with another URL, a ``file://`` URL or a local path (a zip, or a folder
holding the extracted repository): that is how to fetch on a machine without
internet access.
"""

from __future__ import annotations

from .base import COLUMNS, Catalogue, FetchError, FetchResult, Item, Skipped, Source
from .convert import TARGET_SIDE, convert_image, resized_size
from .download import DEFAULT_TIMEOUT, download, resolve_archive
from .ieee8023 import label_from_finding
from .pipeline import fetch
from .sources import SOURCES, UnknownSourceError, parse_assignments

__all__ = [
    "COLUMNS", "DEFAULT_TIMEOUT", "SOURCES", "TARGET_SIDE", "Catalogue", "FetchError", "FetchResult", "Item",
    "Skipped", "Source", "UnknownSourceError", "convert_image", "download", "fetch", "label_from_finding",
    "parse_assignments", "resized_size", "resolve_archive",
]
