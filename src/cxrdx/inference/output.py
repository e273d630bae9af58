"""Writing predictions: CSV (the default, also to a stream) or JSON, chosen by the output file's suffix."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Iterable, TextIO

from .predictor import Prediction


def prediction_rows(results: Iterable[Prediction], classes: list[str]) -> list[dict[str, str]]:
    """One CSV row per result: file, predicted class, ``p_<class>`` (6 decimals), and the error of a skipped file;
    for a model with a region of interest also ``roi`` (what was applied) and ``roi_fallback`` (no lungs found)."""
    return [
        {"file": r.source, "predicted": r.predicted or "",
         **{f"p_{c}": (f"{r.probabilities[c]:.6f}" if r.ok else "") for c in classes},
         "error": "" if r.ok else f"{r.error.code}: {r.error}",
         **({"roi": r.roi.applied, "roi_fallback": str(r.roi.fallback).lower()} if r.roi is not None else {})}
        for r in results
    ]


def write_predictions(results: list[Prediction], classes: list[str], out: Path | None = None,
                      stream: TextIO | None = None) -> None:
    """``out`` ending in ``.json``: a JSON list of :meth:`Prediction.to_dict`; any other ``out``: CSV there;
    no ``out``: CSV to ``stream`` (default ``sys.stdout``)."""
    if out is not None and Path(out).suffix.lower() == ".json":
        Path(out).write_text(json.dumps([r.to_dict() for r in results], indent=2))
        return
    results = list(results)
    roi_columns = ["roi", "roi_fallback"] if any(r.roi is not None for r in results) else []
    fieldnames = ["file", "predicted", *[f"p_{c}" for c in classes], "error", *roi_columns]
    if out is not None:
        with open(out, "w", newline="") as fh:
            _write_csv(fh, fieldnames, prediction_rows(results, classes))
    else:
        _write_csv(stream if stream is not None else sys.stdout, fieldnames, prediction_rows(results, classes))


def _write_csv(fh: TextIO, fieldnames: list[str], rows: list[dict[str, str]]) -> None:
    writer = csv.DictWriter(fh, fieldnames=fieldnames)
    writer.writeheader()
    writer.writerows(rows)
