"""Datasets as manifests: a table with one row per image.

A manifest is a ``pandas.DataFrame`` with at least ``image`` (absolute path),
``label`` and ``patient_id``. It is read from a CSV such as cxr3's
``metadata.csv`` (paths relative to the CSV's folder) or from a
folder-per-class layout (``root/<label>/*.png``; each image its own patient
unless a ``patient_id`` can be taken from a ``<patient>__<name>`` file name).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .io import IMAGE_SUFFIXES

REQUIRED_COLUMNS = ("image", "label", "patient_id")
LABEL_ALIASES = {
    "covid-19": "covid", "covid19": "covid", "covid": "covid", "positive": "covid",
    "pneumonia": "pneumonia", "viral pneumonia": "pneumonia", "bacterial pneumonia": "pneumonia",
    "normal": "normal", "no finding": "normal", "no_finding": "normal", "no-finding": "normal", "negative": "normal",
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
    classes: tuple[str, ...] = ("covid", "pneumonia", "normal"),
    benchmark: str | None = None,
    check_files: bool = True,
) -> pd.DataFrame:
    """Read a dataset and keep the rows of the task's classes.

    For a binary task (``classes == ("covid", "non-covid")``) every non-covid label
    becomes ``non-covid``. ``target`` holds the class index.
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
    if tuple(classes) == ("covid", "non-covid"):
        df = df.assign(label=["covid" if lab == "covid" else "non-covid" for lab in df["label"]])
    unknown = sorted(set(df["label"]) - set(classes))
    if unknown and tuple(classes) != ("covid", "non-covid"):
        df = df[df["label"].isin(classes)]
    if df.empty:
        raise ManifestError(f"no rows with labels {list(classes)}")
    if check_files:
        missing = [p for p in df["image"] if not Path(p).is_file()]
        if missing:
            raise ManifestError(f"{len(missing)} image file(s) listed in the manifest are missing, e.g. {missing[:3]}")
    df = df.reset_index(drop=True)
    df["target"] = [classes.index(lab) for lab in df["label"]]
    return df
