"""Per-patient exam sequences: each exam an image embedding plus its timing, ordered by ``offset_days``.

An exam is embedded as its cached backbone map averaged over the 7x7 grid (a C-vector).
Time enters as three per-exam inputs: ``log1p`` of the days since the previous exam,
``log1p`` of ``offset_days`` itself, and a flag for an unknown offset (those exams keep
the manifest order, after the dated ones, with zero time inputs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

TIME_FEATURES = ("log1p_gap_days", "log1p_offset_days", "offset_unknown")


@dataclass
class PatientSeries:
    """``P`` patients, padded to the longest sequence ``T``."""

    patient_ids: list[str]
    embeddings: list[np.ndarray]
    """One ``[T_p, C]`` float32 array per patient, in exam order."""
    times: list[np.ndarray]
    """One ``[T_p, 3]`` array per patient (:data:`TIME_FEATURES`)."""
    labels: np.ndarray
    """``[P]`` int; -1 where the patient has no label for the task."""
    exams: pd.DataFrame
    """One row per exam: patient_id, order, offset_days, label, survival, image."""

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(e) for e in self.embeddings], dtype=int)

    def subset(self, index: np.ndarray) -> "PatientSeries":
        idx = np.flatnonzero(index) if np.asarray(index).dtype == bool else np.asarray(index, dtype=int)
        keep = {self.patient_ids[i] for i in idx}
        return PatientSeries(
            [self.patient_ids[i] for i in idx], [self.embeddings[i] for i in idx], [self.times[i] for i in idx],
            self.labels[idx], self.exams[self.exams["patient_id"].isin(keep)].reset_index(drop=True),
        )


def order_exams(exams: pd.DataFrame) -> pd.DataFrame:
    """Exams of one or many patients sorted by patient, then ``offset_days`` (unknown last, stable)."""
    out = exams.assign(_pos=np.arange(len(exams)), _unknown=exams["offset_days"].isna())
    out = out.sort_values(["patient_id", "_unknown", "offset_days", "_pos"], kind="stable")
    return out.drop(columns=["_pos", "_unknown"]).reset_index(drop=True)


def time_features(offsets: np.ndarray) -> np.ndarray:
    """``[T] offset_days`` (NaN = unknown, already in exam order) -> ``[T, 3]`` time inputs."""
    offsets = np.asarray(offsets, dtype=np.float64)
    known = ~np.isnan(offsets)
    out = np.zeros((len(offsets), 3), dtype=np.float32)
    prev = None
    for t, (value, ok) in enumerate(zip(offsets, known)):
        if not ok:
            out[t, 2] = 1.0
            continue
        gap = 0.0 if prev is None else max(value - prev, 0.0)
        out[t, 0] = np.log1p(gap)
        out[t, 1] = np.log1p(max(value, 0.0))
        prev = value
    return out


def patient_labels(exams: pd.DataFrame, target: str) -> pd.Series:
    """Per patient: ``diagnosis`` = 1 if the last exam is covid else 0; ``survival`` = 1 died / 0 survived / -1 unknown."""
    grouped = exams.groupby("patient_id", sort=False)
    if target == "diagnosis":
        return grouped["label"].last().eq("covid").astype(int)
    if target == "survival":
        def outcome(values: pd.Series) -> int:
            known = values.dropna().astype(str).str.upper()
            return -1 if known.empty else int(known.iloc[-1] == "N")
        return grouped["survival"].agg(outcome)
    raise ValueError(f"unknown series target {target!r}; use diagnosis or survival")


def build_series(manifest: pd.DataFrame, embeddings: np.ndarray, target: str) -> PatientSeries:
    """Group exams (rows of ``manifest``, aligned with ``embeddings [N, C]``) into per-patient sequences."""
    if "offset_days" not in manifest.columns:
        raise ValueError("the manifest has no offset_days column: exams cannot be put in time order")
    exams = manifest.assign(_row=np.arange(len(manifest)))
    for col in ("survival",):
        if col not in exams.columns:
            exams[col] = np.nan
    exams = order_exams(exams)
    exams["order"] = exams.groupby("patient_id").cumcount()
    labels = patient_labels(exams, target)
    ids, embs, times = [], [], []
    for pid, rows in exams.groupby("patient_id", sort=True):
        ids.append(str(pid))
        embs.append(np.asarray(embeddings[rows["_row"].to_numpy()], dtype=np.float32))
        times.append(time_features(rows["offset_days"].to_numpy()))
    table = exams[["patient_id", "order", "offset_days", "label", "survival", "image"]].reset_index(drop=True)
    return PatientSeries(ids, embs, times, labels.loc[ids].to_numpy(dtype=int), table)


def pad(sequences: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """List of ``[T_p, D]`` -> zero-padded ``[P, T, D]`` float tensor and ``[P]`` lengths."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    padded = torch.nn.utils.rnn.pad_sequence([torch.as_tensor(s, dtype=torch.float32) for s in sequences], batch_first=True)
    return padded, lengths


def cohort_summary(series: PatientSeries, target: str) -> dict:
    """How much data there really is: patients, exams per patient, labels, missing dates."""
    lengths = series.lengths
    labelled = series.labels >= 0
    names = {"diagnosis": ("other", "covid"), "survival": ("survived", "died")}[target]
    multi = labelled & (lengths >= 2)
    return {
        "patients": int(len(lengths)),
        "exams": int(lengths.sum()),
        "exams_per_patient": {int(k): int(v) for k, v in zip(*np.unique(lengths, return_counts=True))},
        "patients_2plus_exams": int((lengths >= 2).sum()),
        "labelled_patients": int(labelled.sum()),
        "labelled_patients_2plus_exams": int(multi.sum()),
        "label_counts": {names[k]: int((series.labels == k).sum()) for k in (0, 1)},
        "label_counts_2plus_exams": {names[k]: int((series.labels[multi] == k).sum()) for k in (0, 1)},
        "exams_without_offset_days": int(series.exams["offset_days"].isna().sum()),
    }
