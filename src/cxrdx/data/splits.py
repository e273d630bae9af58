"""Patient-grouped, class-stratified splits. A patient never sits on both sides."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from .manifest import ManifestError


class LeakageError(AssertionError):
    """The same patient appears in two parts of a split."""


def assert_no_patient_leakage(*parts: pd.DataFrame, column: str = "patient_id") -> None:
    seen: dict[str, int] = {}
    for i, part in enumerate(parts):
        for pid in set(part[column]):
            if pid in seen and seen[pid] != i:
                shared = sorted(set(part[column]) & {p for p, j in seen.items() if j != i})
                raise LeakageError(
                    f"patient leakage: {len(shared)} patient(s) in split parts {seen[pid]} and {i}, e.g. {shared[:5]}"
                )
            seen[pid] = i


GROUP_COLUMN = "group_id"
"""Set by :func:`cxrdx.data.manifest.load_manifest`: patients that share a picture share a group."""


def _group_column(df: pd.DataFrame, group_by: str) -> str:
    """``patient_id`` splits use the merged ``group_id`` when the manifest has one."""
    return GROUP_COLUMN if group_by == "patient_id" and GROUP_COLUMN in df.columns else group_by


def _groups(df: pd.DataFrame, group_by: str) -> np.ndarray:
    if group_by == "image":
        return np.arange(len(df))
    return df[_group_column(df, group_by)].to_numpy()


def _check_splittable(df: pd.DataFrame, n_splits: int, group_by: str) -> None:
    """A one-line ManifestError instead of scikit-learn's traceback when there are too few patients."""
    n_groups = len(df) if group_by == "image" else df[_group_column(df, group_by)].nunique()
    if n_groups < n_splits:
        unit = "image(s)" if group_by == "image" else "patient group(s)"
        raise ManifestError(
            f"cannot split {len(df)} image(s) of {n_groups} {unit} into {n_splits} parts: a split needs at least "
            f"{n_splits} {unit} (a usable one needs dozens per class)"
        )


def kfold_indices(
    df: pd.DataFrame, n_splits: int = 5, seed: int = 42, group_by: str = "patient_id"
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(train_idx, test_idx)`` for stratified k-fold grouped by ``group_by``.

    ``group_by="image"`` gives the image-level (leaky) protocol of the literature;
    use it only to measure the leakage effect, never for a headline number.
    """
    _check_splittable(df, n_splits, group_by)
    y = df["target"].to_numpy()
    if group_by == "image":
        splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        yield from splitter.split(np.zeros(len(df)), y)
        return
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for train_idx, test_idx in splitter.split(np.zeros(len(df)), y, groups=_groups(df, group_by)):
        assert_no_patient_leakage(df.iloc[train_idx], df.iloc[test_idx], column=group_by)
        assert_no_patient_leakage(df.iloc[train_idx], df.iloc[test_idx], column=_group_column(df, group_by))
        yield train_idx, test_idx


def _holdout(df: pd.DataFrame, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    n_splits = max(2, int(round(1.0 / fraction)))
    train_idx, test_idx = next(kfold_indices(df, n_splits=n_splits, seed=seed))
    return train_idx, test_idx


def train_val_test_split(
    df: pd.DataFrame, test_fraction: float = 0.2, val_fraction: float = 0.15, seed: int = 42
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Patient-grouped, label-stratified train / validation / test parts."""
    rest_idx, test_idx = _holdout(df, test_fraction, seed)
    rest = df.iloc[rest_idx].reset_index(drop=True)
    test = df.iloc[test_idx].reset_index(drop=True)
    tr_idx, va_idx = _holdout(rest, val_fraction / (1.0 - test_fraction), seed + 1)
    train = rest.iloc[tr_idx].reset_index(drop=True)
    val = rest.iloc[va_idx].reset_index(drop=True)
    assert_no_patient_leakage(train, val, test)
    assert_no_patient_leakage(train, val, test, column=_group_column(df, "patient_id"))
    return train, val, test


def train_val_split(df: pd.DataFrame, val_fraction: float = 0.15, seed: int = 42) -> tuple[pd.DataFrame, pd.DataFrame]:
    tr_idx, va_idx = _holdout(df, val_fraction, seed)
    train, val = df.iloc[tr_idx].reset_index(drop=True), df.iloc[va_idx].reset_index(drop=True)
    assert_no_patient_leakage(train, val)
    assert_no_patient_leakage(train, val, column=_group_column(df, "patient_id"))
    return train, val
