"""Datasets as manifests: a table with one row per image.

A manifest is a ``pandas.DataFrame`` with at least ``image`` (absolute path),
``label`` and ``patient_id``. It is read from a CSV such as cxr3's
``metadata.csv`` (paths relative to the CSV's folder) or from a
folder-per-class layout (``root/<label>/*.png``; each image its own patient
unless a ``patient_id`` can be taken from a ``<patient>__<name>`` file name).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from ..tasks import CLASSES_3, COVID, LABEL_ALIASES as TASK_LABEL_ALIASES, LABELS, NORMAL, PNEUMONIA, Task
from .duplicates import DuplicateLabelError, resolve_duplicates
from .paths import IMAGE_SUFFIXES

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("image", "label", "patient_id")
LABEL_ALIASES = {
    "covid-19": COVID, "covid19": COVID, "covid": COVID, "positive": COVID,
    "pneumonia": PNEUMONIA, "viral pneumonia": PNEUMONIA, "bacterial pneumonia": PNEUMONIA,
    "normal": NORMAL, "no finding": NORMAL, "no_finding": NORMAL, "no-finding": NORMAL, "negative": NORMAL,
    **TASK_LABEL_ALIASES,
}


class ManifestError(ValueError):
    """A CSV or folder that cannot be read as a dataset."""


def normalise_label(label: str) -> str:
    key = str(label).strip().lower()
    return LABEL_ALIASES.get(key, key)


def read_csv_manifest(csv_path: str | Path, image_root: str | Path | None = None) -> pd.DataFrame:
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise ManifestError(f"manifest {csv_path} does not exist")
    try:
        df = pd.read_csv(csv_path, dtype={"patient_id": str})
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise ManifestError(f"{csv_path} is not a readable CSV: {exc}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(
            f"{csv_path} lacks required column(s) {missing}; a manifest needs {list(REQUIRED_COLUMNS)} "
            f"(found {list(df.columns)[:12]})"
        )
    if df.empty:
        raise ManifestError(f"{csv_path} has no rows")
    blank = df[list(REQUIRED_COLUMNS)].isna().any(axis=1)
    if blank.any():
        rows = (blank[blank].index[:5] + 2).tolist()
        raise ManifestError(f"{csv_path}: empty image/label/patient_id on line(s) {rows}")
    root = Path(image_root) if image_root else csv_path.parent
    df = df.copy()
    df["relpath"] = df["image"].astype(str)
    df["image"] = [str(p if Path(p).is_absolute() else (root / p)) for p in df["relpath"]]
    df["label"] = df["label"].map(normalise_label)
    df["patient_id"] = df["patient_id"].astype(str)
    return df.reset_index(drop=True)


def read_folder_manifest(root: str | Path) -> pd.DataFrame:
    root = Path(root)
    rows = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(class_dir.rglob("*")):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                patient = f.stem.split("__", 1)[0] if "__" in f.stem else f"{class_dir.name}/{f.stem}"
                rows.append({
                    "image": str(f), "relpath": str(f.relative_to(root)),
                    "label": normalise_label(class_dir.name), "patient_id": patient,
                })
    if not rows:
        raise ManifestError(f"{root} holds no class folders with images ({sorted(IMAGE_SUFFIXES)})")
    return pd.DataFrame(rows)


def load_manifest(
    root: str | Path,
    manifest: str | Path | None = None,
    *,
    classes: tuple[str, ...] = CLASSES_3,
    benchmark: str | None = None,
    check_files: bool = True,
    duplicates: bool = True,
    cache_dir: str | Path | None = None,
) -> pd.DataFrame:
    """Read a dataset and keep the rows of the task's classes.

    Labels are mapped with :meth:`cxrdx.tasks.Task.relabel`: for a binary task
    (``classes == CLASSES_BINARY``) every non-covid label becomes ``non-covid``;
    otherwise rows of other labels are dropped. ``target`` holds the class index.

    Rows whose label is not a known label at all are dropped and reported. With
    ``check_files`` and ``duplicates``, identical and near-identical pictures are
    found (:mod:`cxrdx.data.duplicates`): identical rows are dropped, the patients of
    duplicate pictures share a ``group_id`` that the splits group by, and one picture
    with two labels is a :class:`ManifestError`. What was dropped or merged is logged
    as a warning and listed in ``df.attrs["warnings"]``.
    """
    root = Path(root)
    if manifest is not None:
        df = read_csv_manifest(manifest)
    elif (root / "metadata.csv").is_file():
        df = read_csv_manifest(root / "metadata.csv")
    elif root.is_dir():
        df = read_folder_manifest(root)
    else:
        raise ManifestError(f"dataset folder {root} does not exist (set CXRDX_DATA or pass --data)")
    if benchmark:
        if "benchmark" not in df.columns:
            raise ManifestError(f"manifest has no 'benchmark' column to select {benchmark!r}")
        df = df[df["benchmark"] == benchmark]
        if df.empty:
            raise ManifestError(f"no rows with benchmark == {benchmark!r}")
    notes: list[str] = []
    unknown = ~df["label"].isin(set(LABELS) | set(classes))
    if unknown.any():
        counts = df.loc[unknown, "label"].astype(str).value_counts()
        examples = ", ".join(f"{lab!r} ({n})" for lab, n in counts.head(5).items())
        notes.append(f"dropped {int(unknown.sum())} row(s) with unknown labels: {examples}; known labels: {list(LABELS)}")
        logger.warning(notes[-1])
        df = df[~unknown]
    relabel = Task("manifest", tuple(classes), "").relabel
    df = df.assign(label=[relabel(lab) for lab in df["label"]])
    df = df[df["label"].notna()]
    if df.empty:
        raise ManifestError(f"no rows with labels {list(classes)}" + (f" ({notes[0]})" if notes else ""))
    if check_files:
        missing = [p for p in df["image"] if not Path(p).is_file()]
        if missing:
            raise ManifestError(f"{len(missing)} image file(s) listed in the manifest are missing, e.g. {missing[:3]}")
        if duplicates:
            try:
                df, report = resolve_duplicates(df, cache_dir=_cache_dir(cache_dir))
            except DuplicateLabelError as exc:
                raise ManifestError(str(exc)) from None
            notes.extend(report.lines())
    df = df.reset_index(drop=True)
    df["target"] = [classes.index(lab) for lab in df["label"]]
    df.attrs["warnings"] = notes
    return df


def _cache_dir(cache_dir: str | Path | None) -> Path:
    from ..config import default_cache_dir

    return Path(cache_dir) if cache_dir is not None else default_cache_dir()
