"""Download the public sources and lay them out like the reference dataset cxr3.

``cxrdx data fetch --out DIR`` (or :func:`fetch`) downloads two public archives,

* ``darkcovidnet``: the DarkCovidNet repository (github.com/muhammedtalo/COVID-19),
  folders ``X-Ray Image DataSet/{Covid-19,No_findings,Pneumonia}``;
* ``ieee8023``: the COVID-19 image data collection
  (github.com/ieee8023/covid-chestxray-dataset), ``metadata.csv`` + ``images/``,

and writes ``DIR/images/<label>/<name>.png`` (8-bit greyscale, shorter side 256 px)
plus ``DIR/metadata.csv`` with the columns of cxr3 (:data:`COLUMNS`), which
:func:`cxrdx.data.manifest.load_manifest` reads.

Rules:

* ieee8023: X-ray modality and frontal views (PA, AP, AP Supine) only; the label
  comes from ``finding`` (COVID-19 -> covid, No Finding -> normal, any other
  pneumonia -> pneumonia; todo / Unknown / other diseases are left out); the
  patient is ``ieee8023-<patientid>``.
* darkcovidnet: Covid-19 -> covid, No_findings -> normal, Pneumonia -> pneumonia;
  ``benchmark=darkcovidnet``. NIH files (``00000013_005.png``) belong to patient
  ``nih-00000013``; a file whose name is in the ieee8023 metadata takes that
  patient and metadata; any other file is its own patient (``darkcovidnet-<name>``).
* An image in both sources (same file name, or the same decoded pixels) is kept
  once, as the DarkCovidNet row, with the ieee8023 patient.
* An unreadable image is reported and skipped, never fatal.

Downloads use ``urllib`` with a timeout, stream to ``<file>.part`` (resumed when
the server allows ranges) and are renamed only when complete and, if a SHA-256 is
known, verified. ``source_urls`` replaces a source's URL with another URL, a
``file://`` URL or a local path (a zip, or a folder holding the extracted
repository): that is how to fetch on a machine without internet access.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Iterator, Mapping

from PIL import Image

from .io import DEFAULT_MAX_FILE_BYTES, IMAGE_SUFFIXES, ImageReadError, read_image

logger = logging.getLogger(__name__)

TARGET_SIDE = 256
DEFAULT_TIMEOUT = 30.0
CHUNK = 1 << 20

COLUMNS = (
    "image", "label", "patient_id", "source", "benchmark", "view", "offset_days", "sex", "age",
    "survival", "finding", "location", "license", "doi", "original_name", "original_width",
    "original_height", "original_mode", "lung_mask", "lesion_mask",
)
LABELS = ("covid", "pneumonia", "normal")


@dataclass(frozen=True)
class Source:
    name: str
    url: str
    homepage: str
    description: str
    sha256: str | None = None
    """Expected SHA-256 of the archive; ``None`` for moving targets such as a branch zip."""


SOURCES: dict[str, Source] = {
    "darkcovidnet": Source(
        name="darkcovidnet",
        url="https://github.com/muhammedtalo/COVID-19/archive/refs/heads/master.zip",
        homepage="https://github.com/muhammedtalo/COVID-19",
        description="DarkCovidNet benchmark (Ozturk et al. 2020): 125 covid, 500 No_findings, 500 Pneumonia (NIH ChestX-ray8)",
    ),
    "ieee8023": Source(
        name="ieee8023",
        url="https://github.com/ieee8023/covid-chestxray-dataset/archive/refs/heads/master.zip",
        homepage="https://github.com/ieee8023/covid-chestxray-dataset",
        description="COVID-19 image data collection (Cohen et al.), per-image metadata and licences",
    ),
}
# darkcovidnet first: its images win the de-duplication (benchmark=darkcovidnet).
SOURCE_ORDER = ("darkcovidnet", "ieee8023")

DARKCOVIDNET_FOLDERS = {"covid-19": "covid", "no_findings": "normal", "pneumonia": "pneumonia"}
DARKCOVIDNET_FINDING = {"covid": "COVID-19", "normal": "No Finding", "pneumonia": "Pneumonia"}
NIH_NAME = re.compile(r"^(\d{8})_\d{3}$")
NIH_LICENSE = "NIH ChestX-ray8 (public)"

FRONTAL_VIEWS = {"pa": "PA", "ap": "AP", "ap supine": "AP Supine"}
XRAY_MODALITIES = {"x-ray", "xray", "x ray", "cr", "dx"}
# leaf findings of older ieee8023 metadata ("SARS", "Streptococcus", ...) that are pneumonias;
# newer metadata spells the path out ("Pneumonia/Bacterial/Streptococcus").
PNEUMONIA_WORDS = (
    "pneumonia", "sars", "mers", "streptococcus", "staphylococcus", "pneumocystis", "klebsiella",
    "legionella", "e.coli", "varicella", "lipoid", "chlamydophila", "influenza", "bacterial", "viral",
    "fungal", "mycoplasma", "aspergillosis", "nocardia", "herpes", "aspiration", "h1n1",
)
NORMAL_FINDINGS = {"no finding", "no findings", "normal"}


class FetchError(RuntimeError):
    """A source that cannot be downloaded, opened or recognised (one line, for the CLI)."""


# ------------------------------------------------------------------ results


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


# ------------------------------------------------------------------ options


def parse_assignments(items: Iterable[str] | None, what: str = "--source-url") -> dict[str, str]:
    """``["NAME=VALUE", ...]`` -> ``{name: value}``, names checked against :data:`SOURCES`."""
    out: dict[str, str] = {}
    for item in items or ():
        name, sep, value = str(item).partition("=")
        name, value = name.strip().lower(), value.strip()
        if not sep or not value:
            raise FetchError(f"{what} expects NAME=VALUE (e.g. darkcovidnet=/tmp/COVID-19-master.zip), got {item!r}")
        if name not in SOURCES:
            raise FetchError(f"{what}: unknown source {name!r}; known sources: {', '.join(SOURCES)}")
        out[name] = value
    return out


def _select(only: str | Iterable[str] | None) -> list[str]:
    if only is None or only == "" or only == ():
        return list(SOURCE_ORDER)
    names = [only] if isinstance(only, str) else list(only)
    names = [n.strip().lower() for part in names for n in str(part).split(",") if n.strip()]
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        raise FetchError(f"unknown source {unknown[0]!r} for --only; choose from {', '.join(SOURCES)}")
    return [n for n in SOURCE_ORDER if n in names]


# ------------------------------------------------------------------ download


def _local_path(url: str) -> Path | None:
    """The local file a source URL points to, or ``None`` for a remote URL."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if not parsed.scheme or len(parsed.scheme) == 1:  # a plain path (C:\... on Windows)
        return Path(url).expanduser()
    return None


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _archive_filename(name: str | None, url: str) -> str:
    """What a browser would call the download: ``COVID-19-master.zip`` for a GitHub branch zip."""
    path = urllib.parse.urlparse(url).path
    m = re.match(r"^/[^/]+/([^/]+)/archive/(?:refs/heads/)?([^/]+)\.zip$", path)
    if m:
        return f"{m.group(1)}-{m.group(2)}.zip"
    return PurePosixPath(path).name or f"{name or 'archive'}.zip"


def _offline_hint(name: str | None, url: str) -> str:
    if not name:
        return "check the URL and your connection"
    return (f"offline? download {url} on another machine and pass "
            f"--source-url {name}=/path/to/{_archive_filename(name, url)} (a local zip, file:// URL or extracted folder)")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
        if not isinstance(exc, BaseException):
            return str(exc)
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:160]


def download(
    url: str,
    dest: str | Path,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    sha256: str | None = None,
    progress: bool = True,
    name: str | None = None,
) -> Path:
    """Stream ``url`` to ``dest`` via ``dest.part``; resume a partial file where the server allows.

    The file appears under ``dest`` only when complete (and matching ``sha256`` if given).
    Raises :class:`FetchError` with a one-line message naming the URL.
    """
    from ..progress import progress_bar

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    hint = _offline_hint(name, url)
    label = name or dest.name

    def fail(reason: str) -> FetchError:
        return FetchError(f"cannot download {label} from {url}: {reason}; {hint}")

    for attempt in (0, 1):
        start = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": "cxrdx-fetch (+https://github.com)"}
        if start:
            headers["Range"] = f"bytes={start}-"
        request = urllib.request.Request(url, headers=headers)
        try:
            response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - http(s) URLs by design
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and start and attempt == 0:  # stale / complete .part: start over
                part.unlink(missing_ok=True)
                continue
            raise fail(_reason(exc)) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise fail(_reason(exc)) from None
        with response:
            status = getattr(response, "status", None) or response.getcode() or 200
            resumed = bool(start) and status == 206
            if not resumed:
                start = 0
            length = response.headers.get("Content-Length")
            total = start + int(length) if length and length.isdigit() else None
            try:
                with open(part, "ab" if resumed else "wb") as f, progress_bar(
                    total, f"download {label}", enabled=progress  # type: ignore[arg-type] - None: unknown size
                ) as bar:
                    done = start
                    bar.advance(start)
                    while True:
                        chunk = response.read(CHUNK)
                        if not chunk:
                            break
                        f.write(chunk)
                        done += len(chunk)
                        bar.advance(len(chunk))
                        bar.set(f"{done / 1e6:.1f} MB")
            except (urllib.error.URLError, OSError, ValueError) as exc:
                raise FetchError(
                    f"download of {label} from {url} was interrupted ({_reason(exc)}); "
                    f"run the same command again to resume, or {hint}"
                ) from None
        size = part.stat().st_size
        if total is not None and size != total:
            raise FetchError(f"download of {label} from {url} is incomplete ({size} of {total} bytes); "
                             f"run the same command again to resume, or {hint}")
        break
    if sha256:
        got = _file_sha256(part)
        if got.lower() != sha256.strip().lower():
            part.unlink(missing_ok=True)
            raise FetchError(f"{label} from {url} has SHA-256 {got}, expected {sha256.strip().lower()}; "
                             "the file was deleted (pass the right --sha256 or none)")
    os.replace(part, dest)
    return dest


def resolve_archive(
    name: str,
    url: str,
    cache_dir: Path,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    sha256: str | None = None,
    refresh: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> Path:
    """A local zip / folder for a source: the path itself, a cached download, or a fresh download."""
    echo = echo or (lambda msg: logger.info(msg))
    local = _local_path(url)
    if local is not None:
        if not local.exists():
            raise FetchError(f"{name}: local archive {local} does not exist (from --source-url {name}={url})")
        if sha256 and local.is_file():
            got = _file_sha256(local)
            if got.lower() != sha256.strip().lower():
                raise FetchError(f"{name}: {local} has SHA-256 {got}, expected {sha256.strip().lower()}")
        echo(f"{name}: using {local}")
        return local
    dest = Path(cache_dir) / f"{name}.zip"
    if dest.is_file() and not refresh:
        if not sha256 or _file_sha256(dest).lower() == sha256.strip().lower():
            echo(f"{name}: using the cached download {dest} (--refresh downloads it again)")
            return dest
    if refresh:
        dest.unlink(missing_ok=True)
        dest.with_name(dest.name + ".part").unlink(missing_ok=True)
    echo(f"{name}: downloading {url}")
    return download(url, dest, timeout=timeout, sha256=sha256, progress=progress, name=name)


# ------------------------------------------------------------------ archives


class _Archive:
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
                    f"{source}: {self.path} is not a readable zip archive ({_reason(exc)}); delete it and "
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

    def __enter__(self) -> "_Archive":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _hidden(name: str) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in name.split("/"))


# ------------------------------------------------------------------ items


@dataclass
class _Item:
    source: str
    member: str
    label: str
    meta: dict
    ieee_name: str | None = None
    """Lower-case ieee8023 file name this image is known to be (by name)."""


def label_from_finding(finding: str) -> str | None:
    """ieee8023 ``finding`` -> covid / normal / pneumonia, or ``None`` (todo, unknown, not a pneumonia)."""
    f = " ".join(str(finding or "").split()).lower()
    if not f or f in ("todo", "unknown"):
        return None
    if "covid" in f:
        return "covid"
    if f in NORMAL_FINDINGS:
        return "normal"
    if any(word in f for word in PNEUMONIA_WORDS):
        return "pneumonia"
    return None


def _clean_number(value: str) -> str:
    value = str(value or "").strip()
    try:
        number = float(value)
    except ValueError:
        return value
    if number != number:  # NaN
        return ""
    return str(int(number)) if number.is_integer() else value


def _read_ieee_metadata(archive: _Archive) -> tuple[str, list[dict]]:
    candidates = [n for n in archive.names() if PurePosixPath(n).name.lower() == "metadata.csv"]
    if not candidates:
        raise FetchError(f"ieee8023: {archive.path} holds no metadata.csv; is it the covid-chestxray-dataset archive?")
    best = min(candidates, key=lambda n: (n.count("/"), n))
    prefix = best[: -len("metadata.csv")]
    text = archive.read(best).decode("utf-8-sig", errors="replace")
    reader = csv.DictReader(io.StringIO(text))
    rows = [{str(k or "").strip().lower(): (v or "").strip() if isinstance(v, str) else "" for k, v in row.items()}
            for row in reader]
    needed = {"patientid", "finding", "view", "filename"}
    missing = needed - set(rows[0] if rows else ())
    if missing:
        raise FetchError(f"ieee8023: {best} lacks column(s) {sorted(missing)}; found {list(rows[0])[:12] if rows else []}")
    return prefix, rows


def _ieee_meta(row: dict) -> dict:
    patient = row.get("patientid", "").strip()
    stem = PurePosixPath(row.get("filename", "")).stem
    return {
        "patient_id": f"ieee8023-{patient}" if patient else f"ieee8023-file-{stem}",
        "view": FRONTAL_VIEWS.get(" ".join(row.get("view", "").split()).lower(), row.get("view", "").strip()),
        "offset_days": _clean_number(row.get("offset", "")),
        "sex": row.get("sex", ""),
        "age": _clean_number(row.get("age", "")),
        "survival": row.get("survival", ""),
        "finding": row.get("finding", ""),
        "location": row.get("location", ""),
        "license": row.get("license", ""),
        "doi": row.get("doi", ""),
    }


def _ieee_items(archive: _Archive, result: FetchResult) -> tuple[list[_Item], dict[str, tuple[str, dict]]]:
    """Kept ieee8023 rows as items, and ``(file name, metadata)`` of every row by lower-case file name
    and by stem (DarkCovidNet sometimes changed the extension)."""
    prefix, rows = _read_ieee_metadata(archive)
    by_name: dict[str, tuple[str, dict]] = {}
    items: list[_Item] = []
    excluded: Counter = Counter()
    has_modality = any("modality" in r for r in rows[:1])
    for row in rows:
        filename = row.get("filename", "")
        if not filename:
            excluded["ieee8023: row without a file name"] += 1
            continue
        meta = _ieee_meta(row)
        by_name.setdefault(filename.lower(), (filename.lower(), meta))
        by_name.setdefault(PurePosixPath(filename).stem.lower(), (filename.lower(), meta))
        modality = " ".join(row.get("modality", "").split()).lower()
        view = " ".join(row.get("view", "").split()).lower()
        if has_modality and modality not in XRAY_MODALITIES:
            excluded[f"ieee8023: modality {row.get('modality') or '(blank)'} (not X-ray)"] += 1
            continue
        if view not in FRONTAL_VIEWS:
            excluded[f"ieee8023: view {row.get('view') or '(blank)'} (not frontal)"] += 1
            continue
        label = label_from_finding(row.get("finding", ""))
        if label is None:
            excluded[f"ieee8023: finding {row.get('finding') or '(blank)'} (not covid / pneumonia / normal)"] += 1
            continue
        folder = row.get("folder", "").strip().strip("/") or "images"
        member = next((m for m in (f"{prefix}{folder}/{filename}", f"{prefix}images/{filename}") if m in archive), None)
        if member is None:
            result.skipped.append(Skipped("ieee8023", filename, "listed in metadata.csv but missing from the archive"))
            continue
        items.append(_Item("ieee8023", member, label, meta, ieee_name=filename.lower()))
    for reason, n in excluded.items():
        result.excluded[reason] = result.excluded.get(reason, 0) + n
    return items, by_name


def _darkcovidnet_items(archive: _Archive, ieee_by_name: Mapping[str, tuple[str, dict]]) -> list[_Item]:
    items: list[_Item] = []
    for member in sorted(archive.names()):
        path = PurePosixPath(member)
        label = DARKCOVIDNET_FOLDERS.get(path.parent.name.lower()) if len(path.parts) >= 2 else None
        if label is None or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        meta = {c: "" for c in ("view", "offset_days", "sex", "age", "survival", "location", "license", "doi")}
        meta["finding"] = DARKCOVIDNET_FINDING[label]
        nih = NIH_NAME.match(path.stem)
        ieee = ieee_by_name.get(path.name.lower()) or ieee_by_name.get(path.stem.lower())
        ieee_name = None
        if nih:
            meta.update(patient_id=f"nih-{nih.group(1)}", license=NIH_LICENSE)
        elif ieee is not None:
            ieee_name, ieee_meta = ieee
            meta.update(ieee_meta)
        else:
            meta["patient_id"] = f"darkcovidnet-{path.stem}"
        items.append(_Item("darkcovidnet", member, label, meta, ieee_name=ieee_name))
    if not items:
        raise FetchError(f"darkcovidnet: {archive.path} holds no Covid-19 / No_findings / Pneumonia image folders; "
                         "is it the muhammedtalo/COVID-19 archive?")
    return items


# ------------------------------------------------------------------ conversion


@dataclass
class _Converted:
    png: bytes
    digest: str
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


def convert_image(data: bytes, name: str, side: int = TARGET_SIDE) -> _Converted:
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
    return _Converted(buf.getvalue(), digest, width, height, mode)


def _safe_stem(stem: str) -> str:
    stem = re.sub(r"[^\w.\-]+", "_", stem).strip("._") or "image"
    return stem[:150]


def _ordered_map(fn: Callable, items: list, workers: int) -> Iterator:
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


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ------------------------------------------------------------------ main entry


def fetch(
    out_dir: str | Path,
    *,
    only: str | Iterable[str] | None = None,
    source_urls: Mapping[str, str] | None = None,
    sha256: Mapping[str, str] | None = None,
    cache_dir: str | Path | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    workers: int | None = None,
    overwrite: bool = False,
    refresh: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> FetchResult:
    """Download (or open) the sources and write ``out_dir/images`` + ``out_dir/metadata.csv``.

    ``source_urls`` / ``sha256`` map a source name to a URL or local path / an expected
    SHA-256. Downloads are kept in ``cache_dir`` (default ``out_dir/.cache``) for the next
    run. Raises :class:`FetchError` for anything the user has to fix.
    """
    from ..progress import progress_bar

    echo = echo or (lambda msg: logger.info(msg))
    names = _select(only)
    urls = {n: SOURCES[n].url for n in names}
    for n, u in dict(source_urls or {}).items():
        key = n.strip().lower()
        if key not in SOURCES:
            raise FetchError(f"--source-url: unknown source {n!r}; known sources: {', '.join(SOURCES)}")
        if key in urls:
            urls[key] = u
    hashes = {n.strip().lower(): h for n, h in dict(sha256 or {}).items() if h}
    for n in hashes:
        if n not in SOURCES:
            raise FetchError(f"--sha256: unknown source {n!r}; known sources: {', '.join(SOURCES)}")
    out_dir = Path(out_dir)
    manifest = out_dir / "metadata.csv"
    if manifest.exists() and not overwrite:
        raise FetchError(f"{manifest} already exists; pass --overwrite to rebuild {out_dir}")
    cache = Path(cache_dir) if cache_dir else out_dir / ".cache"
    workers = max(1, workers if workers is not None else min(8, os.cpu_count() or 1))

    result = FetchResult(out_dir=out_dir, counts={lab: 0 for lab in LABELS}, per_source={n: 0 for n in names})

    # 1. every archive first, so that a network failure costs no conversion time
    paths: dict[str, Path] = {}
    for n in names:
        paths[n] = resolve_archive(n, urls[n], cache, timeout=timeout, sha256=hashes.get(n, SOURCES[n].sha256),
                                   refresh=refresh, progress=progress, echo=echo)
        result.archives[n] = {"url": urls[n], "path": str(paths[n])}
        if paths[n].is_file():
            result.archives[n]["sha256"] = _file_sha256(paths[n])

    archives = {n: _Archive(paths[n], n) for n in names}
    try:
        ieee_items: list[_Item] = []
        ieee_by_name: dict[str, tuple[str, dict]] = {}
        if "ieee8023" in archives:
            ieee_items, ieee_by_name = _ieee_items(archives["ieee8023"], result)
        items: list[_Item] = []
        if "darkcovidnet" in archives:
            items += _darkcovidnet_items(archives["darkcovidnet"], ieee_by_name)
            if "ieee8023" not in archives:
                result.warnings.append(
                    "without ieee8023 the DarkCovidNet covid images cannot be matched to their ieee8023 "
                    "patients: each is its own patient (darkcovidnet-<name>), so follow-up images of one "
                    "patient may fall on both sides of a split")
        # an ieee8023 file that DarkCovidNet already holds (by name) is kept once, as the DarkCovidNet row
        claimed = {it.ieee_name for it in items if it.ieee_name}
        for it in ieee_items:
            if it.ieee_name in claimed:
                result.duplicates += 1
            else:
                items.append(it)
        _convert_all(items, archives, out_dir, result, workers, progress, progress_bar)
    finally:
        for a in archives.values():
            a.close()
    return result


def _convert_all(items, archives, out_dir, result, workers, progress, progress_bar) -> None:
    for lab in LABELS:
        (out_dir / "images" / lab).mkdir(parents=True, exist_ok=True)

    def work(item: _Item):
        archive = archives[item.source]
        name = PurePosixPath(item.member).name
        if archive.size(item.member) > DEFAULT_MAX_FILE_BYTES:
            return item, Skipped(item.source, name, f"file of {archive.size(item.member)} bytes is too large")
        try:
            return item, convert_image(archive.read(item.member), name)
        except ImageReadError as exc:
            return item, Skipped(item.source, name, f"{exc.code}: {exc.message}")
        except (OSError, zipfile.BadZipFile, RuntimeError, ValueError) as exc:  # a damaged zip member
            return item, Skipped(item.source, name, f"cannot extract ({_reason(exc)})")

    rows: list[dict] = []
    by_digest: dict[str, dict] = {}
    used: set[str] = set()
    with progress_bar(len(items), "convert", enabled=progress) as bar:
        for item, outcome in _ordered_map(work, items, workers):
            bar.advance()
            if isinstance(outcome, Skipped):
                result.skipped.append(outcome)
                logger.info("skipped %s (%s): %s", outcome.file, outcome.source, outcome.reason)
                continue
            first = by_digest.get(outcome.digest)
            if first is not None:
                result.duplicates += 1
                if item.source == "ieee8023" and first["patient_id"].startswith("darkcovidnet-"):
                    first.update({k: v for k, v in item.meta.items() if v or k == "patient_id"})
                    first["finding"] = first["finding"] or item.meta.get("finding", "")
                if item.label != first["label"]:
                    result.warnings.append(
                        f"{PurePosixPath(item.member).name} ({item.source}, {item.label}) is the same image as "
                        f"{first['original_name']} ({first['source']}, {first['label']}): kept the latter")
                continue
            original = PurePosixPath(item.member).name
            stem = _safe_stem(PurePosixPath(item.member).stem)
            rel = f"images/{item.label}/{stem}.png"
            n = 2
            while rel.lower() in used:
                rel = f"images/{item.label}/{stem}-{n}.png"
                n += 1
            used.add(rel.lower())
            _write_atomic(out_dir / rel, outcome.png)
            row = {c: "" for c in COLUMNS}
            row.update(item.meta)
            row.update(
                image=rel, label=item.label, source=item.source,
                benchmark="darkcovidnet" if item.source == "darkcovidnet" else "",
                original_name=original, original_width=str(outcome.width),
                original_height=str(outcome.height), original_mode=outcome.mode,
            )
            by_digest[outcome.digest] = row
            rows.append(row)

    rows.sort(key=lambda r: r["image"])
    for row in rows:
        result.counts[row["label"]] += 1
        result.per_source[row["source"]] = result.per_source.get(row["source"], 0) + 1
    if not rows:
        raise FetchError(f"no image could be converted ({len(result.skipped)} skipped); nothing written to {out_dir}")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: row.get(c, "") for c in COLUMNS})
    _write_atomic(out_dir / "metadata.csv", buf.getvalue().encode("utf-8"))
    report = {
        "counts": result.counts,
        "per_source": result.per_source,
        "duplicates": result.duplicates,
        "excluded": result.excluded,
        "skipped": [vars(s) for s in result.skipped],
        "warnings": result.warnings,
        "archives": result.archives,
    }
    _write_atomic(out_dir / "fetch_report.json", json.dumps(report, indent=2).encode("utf-8"))
