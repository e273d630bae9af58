"""Imaging modality of a dataset: chest X-ray (``xray``) or CT slice (``ct``).

A manifest may carry a ``modality`` column (a joint cxr3 + ct2 table does); one
without it is X-ray unless the setting ``data.modality`` says otherwise.
"""

from __future__ import annotations

import pandas as pd

from ..tasks import MODALITIES
from .manifest import ManifestError

COLUMN = "modality"
JOINT_SEPARATOR = "+"


def select_modality(df: pd.DataFrame, setting: str | None = None) -> tuple[pd.DataFrame, str]:
    """``(rows, modality)``: with ``setting`` and a ``modality`` column, only that modality's rows.

    The modality recorded for a model: ``setting``; else the column's one value, or
    ``xray+ct`` (sorted as in :data:`~cxrdx.tasks.MODALITIES`) when it holds several; else ``xray``.
    """
    if setting is not None and setting not in MODALITIES:
        raise ManifestError(f"unknown modality {setting!r}; choose one of: {', '.join(MODALITIES)}")
    if COLUMN not in df.columns:
        return df, setting or MODALITIES[0]
    values = df[COLUMN].astype(str).str.strip().str.lower()
    unknown = sorted(set(values) - set(MODALITIES))
    if unknown:
        raise ManifestError(f"manifest column {COLUMN!r} holds {unknown[:5]}; allowed: {list(MODALITIES)}")
    if setting is not None:
        kept = df[(values == setting).to_numpy()]
        if kept.empty:
            raise ManifestError(f"no rows with {COLUMN} == {setting!r}")
        attrs = dict(df.attrs)
        kept = kept.reset_index(drop=True)
        kept.attrs.update(attrs)
        return kept, setting
    present = [m for m in MODALITIES if m in set(values)]
    return df, JOINT_SEPARATOR.join(present)
