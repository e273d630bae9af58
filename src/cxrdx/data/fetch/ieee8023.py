"""ieee8023: the COVID-19 image data collection (github.com/ieee8023/covid-chestxray-dataset).

``metadata.csv`` + ``images/``. X-ray modality and frontal views (PA, AP, AP
Supine) only; the label comes from ``finding`` (COVID-19 -> covid, No Finding ->
normal, any other pneumonia -> pneumonia; todo / Unknown / other diseases are
left out); the patient is ``ieee8023-<patientid>``.
"""

from __future__ import annotations

import csv
import io
from pathlib import PurePosixPath
from typing import Mapping

from ...tasks import COVID, LABELS, NORMAL, PNEUMONIA
from .archive import Archive
from .base import Catalogue, FetchError, Item, Skipped

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
_KEPT_FINDINGS = " / ".join(LABELS)


def label_from_finding(finding: str) -> str | None:
    """ieee8023 ``finding`` -> covid / normal / pneumonia, or ``None`` (todo, unknown, not a pneumonia)."""
    f = " ".join(str(finding or "").split()).lower()
    if not f or f in ("todo", "unknown"):
        return None
    if "covid" in f:
        return COVID
    if f in NORMAL_FINDINGS:
        return NORMAL
    if any(word in f for word in PNEUMONIA_WORDS):
        return PNEUMONIA
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


def _read_metadata(archive: Archive) -> tuple[str, list[dict]]:
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


def _row_meta(row: dict) -> dict:
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


class IEEE8023:
    name = "ieee8023"
    url = "https://github.com/ieee8023/covid-chestxray-dataset/archive/refs/heads/master.zip"
    homepage = "https://github.com/ieee8023/covid-chestxray-dataset"
    description = "COVID-19 image data collection (Cohen et al.), per-image metadata and licences"
    license = "per image (the license column of metadata.csv)"
    sha256: str | None = None
    benchmark = ""
    reads: tuple[str, ...] = ()

    def catalogue(self, archive: Archive, earlier: Mapping[str, Catalogue]) -> Catalogue:
        """Kept rows as items; the index holds ``(file name, metadata)`` of *every* row by lower-case
        file name and by stem (DarkCovidNet sometimes changed the extension)."""
        prefix, rows = _read_metadata(archive)
        found = Catalogue()
        excluded = found.excluded
        has_modality = any("modality" in r for r in rows[:1])
        for row in rows:
            filename = row.get("filename", "")
            if not filename:
                excluded["ieee8023: row without a file name"] += 1
                continue
            meta = _row_meta(row)
            found.index.setdefault(filename.lower(), (filename.lower(), meta))
            found.index.setdefault(PurePosixPath(filename).stem.lower(), (filename.lower(), meta))
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
                excluded[f"ieee8023: finding {row.get('finding') or '(blank)'} (not {_KEPT_FINDINGS})"] += 1
                continue
            folder = row.get("folder", "").strip().strip("/") or "images"
            member = next((m for m in (f"{prefix}{folder}/{filename}", f"{prefix}images/{filename}") if m in archive),
                          None)
            if member is None:
                found.skipped.append(Skipped(self.name, filename, "listed in metadata.csv but missing from the archive"))
                continue
            found.items.append(Item(self.name, member, label, meta, key=filename.lower()))
        return found
