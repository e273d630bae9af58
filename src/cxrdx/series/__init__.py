"""Longitudinal model: each patient's exams in time order -> GRU/LSTM, against last-exam and mean-pool baselines.

Names are imported lazily (``from cxrdx.series import SeriesRNN`` works) so that importing the package stays cheap.
"""

from __future__ import annotations

from ..lazy import lazy_exports

_EXPORTS = {
    "SeriesCVResult": "cv", "bootstrap_metrics": "cv", "cross_validate": "cv", "out_of_fold": "cv",
    "LastExamBaseline": "model", "MeanPoolBaseline": "model", "SERIES_MODELS": "model", "SeriesRNN": "model",
    "create_series_model": "model",
    "PatientSeries": "sequences", "build_series": "sequences", "cohort_summary": "sequences", "pad": "sequences",
    "time_features": "sequences",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
