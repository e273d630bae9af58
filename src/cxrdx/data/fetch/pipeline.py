"""``fetch()``: every selected source's archive -> one cxr3-style folder (images + metadata.csv).

The steps, none of which names a source (sources live in :data:`SOURCES`):

1. resolve every archive first (a network failure costs no conversion time);
2. read each source's :class:`Catalogue`, a source after those it ``reads``;
3. keep items in registry order; an item whose ``key`` an earlier source holds is a duplicate;
4. convert in a thread pool; the same decoded pixels twice is a duplicate too (kept once, the
   first row, which takes a real patient from the copy if its own was a stand-in);
5. write ``metadata.csv`` and ``fetch_report.json`` atomically.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Mapping

from ...tasks import LABELS
from ..errors import DEFAULT_MAX_FILE_BYTES, ImageReadError
from .archive import Archive
from .base import COLUMNS, Catalogue, FetchError, FetchResult, Item, Skipped
from .convert import Converted, convert_image, ordered_map, safe_stem, write_atomic
from .download import DEFAULT_TIMEOUT, describe_error, file_sha256, resolve_archive
from .sources import SOURCES, check_source, read_order, select

logger = logging.getLogger(__name__)


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
    echo = echo or (lambda msg: logger.info(msg))
    names = select(only)
    urls = {n: SOURCES.get(n).url for n in names}
    for n, u in dict(source_urls or {}).items():
        key = check_source(n.strip().lower(), "--source-url", given=n)
        if key in urls:
            urls[key] = u
    hashes = {check_source(n.strip().lower(), "--sha256"): h for n, h in dict(sha256 or {}).items() if h}
    out_dir = Path(out_dir)
    manifest = out_dir / "metadata.csv"
    if manifest.exists() and not overwrite:
        raise FetchError(f"{manifest} already exists; pass --overwrite to rebuild {out_dir}")
    cache = Path(cache_dir) if cache_dir else out_dir / ".cache"
    workers = max(1, workers if workers is not None else min(8, os.cpu_count() or 1))

    result = FetchResult(out_dir=out_dir, counts={lab: 0 for lab in LABELS}, per_source={n: 0 for n in names})

    paths: dict[str, Path] = {}
    for n in names:
        paths[n] = resolve_archive(n, urls[n], cache, timeout=timeout, sha256=hashes.get(n, SOURCES.get(n).sha256),
                                   refresh=refresh, progress=progress, echo=echo)
        result.archives[n] = {"url": urls[n], "path": str(paths[n])}
        if paths[n].is_file():
            result.archives[n]["sha256"] = file_sha256(paths[n])

    archives = {n: Archive(paths[n], n) for n in names}
    try:
        items = _collect(names, archives, result)
        _convert_all(items, archives, out_dir, result, workers, progress)
    finally:
        for a in archives.values():
            a.close()
    return result


def _collect(names: list[str], archives: Mapping[str, Archive], result: FetchResult) -> list[Item]:
    """Every source's catalogue (in read order, into ``result``), then its items in registry order, de-duplicated by key."""
    catalogues: dict[str, Catalogue] = {}
    for n in read_order(names):
        source = SOURCES.get(n)
        found = source.catalogue(archives[n], {r: catalogues[r] for r in source.reads if r in catalogues})
        catalogues[n] = found
        for reason, count in found.excluded.items():
            result.excluded[reason] = result.excluded.get(reason, 0) + count
        result.skipped.extend(found.skipped)
        result.warnings.extend(found.warnings)
    items: list[Item] = []
    claimed: set[str] = set()
    for n in names:
        kept = []
        for it in catalogues[n].items:
            if it.key and it.key in claimed:
                result.duplicates += 1
            else:
                kept.append(it)
        items += kept
        claimed |= {it.key for it in kept if it.key}
    return items


def _convert_all(items: list[Item], archives: Mapping[str, Archive], out_dir: Path, result: FetchResult,
                 workers: int, progress: bool) -> None:
    from ...progress import progress_bar

    for lab in LABELS:
        (out_dir / "images" / lab).mkdir(parents=True, exist_ok=True)

    def work(item: Item) -> tuple[Item, Converted | Skipped]:
        archive = archives[item.source]
        name = PurePosixPath(item.member).name
        if archive.size(item.member) > DEFAULT_MAX_FILE_BYTES:
            return item, Skipped(item.source, name, f"file of {archive.size(item.member)} bytes is too large")
        try:
            return item, convert_image(archive.read(item.member), name)
        except ImageReadError as exc:
            return item, Skipped(item.source, name, f"{exc.code}: {exc.message}")
        except (OSError, zipfile.BadZipFile, RuntimeError, ValueError) as exc:  # a damaged zip member
            return item, Skipped(item.source, name, f"cannot extract ({describe_error(exc)})")

    rows: list[dict] = []
    by_digest: dict[str, tuple[dict, Item]] = {}
    used: set[str] = set()
    with progress_bar(len(items), "convert", enabled=progress) as bar:
        for item, outcome in ordered_map(work, items, workers):
            bar.advance()
            if isinstance(outcome, Skipped):
                result.skipped.append(outcome)
                logger.info("skipped %s (%s): %s", outcome.file, outcome.source, outcome.reason)
                continue
            if outcome.digest in by_digest:
                first, first_item = by_digest[outcome.digest]
                by_digest[outcome.digest] = (first, _merge_duplicate(first, first_item, item, result))
                continue
            row = _new_row(item, outcome, out_dir, used)
            by_digest[outcome.digest] = (row, item)
            rows.append(row)

    rows.sort(key=lambda r: r["image"])
    for row in rows:
        result.counts[row["label"]] += 1
        result.per_source[row["source"]] = result.per_source.get(row["source"], 0) + 1
    if not rows:
        raise FetchError(f"no image could be converted ({len(result.skipped)} skipped); nothing written to {out_dir}")
    _write_outputs(rows, out_dir, result)


def _merge_duplicate(first: dict, first_item: Item, item: Item, result: FetchResult) -> Item:
    """``item`` has the pixels of the kept row ``first`` (whose patient ``first_item`` gave): count it, and
    let it name the patient if ``first_item`` could not. Returns the item that now gives the row's patient."""
    result.duplicates += 1
    if item.source != first_item.source and item.patient_known and not first_item.patient_known:
        first.update({k: v for k, v in item.meta.items() if v or k == "patient_id"})
        first["finding"] = first["finding"] or item.meta.get("finding", "")
        first_item = item
    if item.label != first["label"]:
        result.warnings.append(
            f"{PurePosixPath(item.member).name} ({item.source}, {item.label}) is the same image as "
            f"{first['original_name']} ({first['source']}, {first['label']}): kept the latter")
    return first_item


def _new_row(item: Item, outcome: Converted, out_dir: Path, used: set[str]) -> dict:
    """Write the PNG under a unique ``images/<label>/<stem>.png`` and return its manifest row."""
    original = PurePosixPath(item.member).name
    stem = safe_stem(PurePosixPath(item.member).stem)
    rel = f"images/{item.label}/{stem}.png"
    n = 2
    while rel.lower() in used:
        rel = f"images/{item.label}/{stem}-{n}.png"
        n += 1
    used.add(rel.lower())
    write_atomic(out_dir / rel, outcome.png)
    row = {c: "" for c in COLUMNS}
    row.update(item.meta)
    row.update(
        image=rel, label=item.label, source=item.source, benchmark=SOURCES.get(item.source).benchmark,
        original_name=original, original_width=str(outcome.width),
        original_height=str(outcome.height), original_mode=outcome.mode,
    )
    return row


def _write_outputs(rows: list[dict], out_dir: Path, result: FetchResult) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: row.get(c, "") for c in COLUMNS})
    write_atomic(out_dir / "metadata.csv", buf.getvalue().encode("utf-8"))
    report = {
        "counts": result.counts,
        "per_source": result.per_source,
        "duplicates": result.duplicates,
        "excluded": result.excluded,
        "skipped": [vars(s) for s in result.skipped],
        "warnings": result.warnings,
        "archives": result.archives,
    }
    write_atomic(out_dir / "fetch_report.json", json.dumps(report, indent=2).encode("utf-8"))
