"""Longitudinal model: each patient's exams in time order -> GRU/LSTM, against last-exam and mean-pool baselines."""

from .cv import SeriesCVResult, bootstrap_metrics, cross_validate, out_of_fold
from .model import LastExamBaseline, MeanPoolBaseline, SeriesRNN, create_series_model
from .sequences import PatientSeries, build_series, cohort_summary, pad, time_features

__all__ = [
    "LastExamBaseline", "MeanPoolBaseline", "PatientSeries", "SeriesCVResult", "SeriesRNN", "bootstrap_metrics",
    "build_series", "cohort_summary", "create_series_model", "cross_validate", "out_of_fold", "pad", "time_features",
]
