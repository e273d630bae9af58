"""Pure numpy / scikit-learn statistics: classification metrics and the one patient bootstrap.

The lowest layer beside :mod:`cxrdx.config`: nothing here imports torch or any other cxrdx package.
"""

from .bootstrap import metrics_with_ci, patient_bootstrap, patient_mean_ci, patient_resamples, percentile_ci
from .metrics import MetricsError, binary_view, check_evaluable, compute_metrics

__all__ = ["MetricsError", "binary_view", "check_evaluable", "compute_metrics", "metrics_with_ci", "patient_bootstrap",
           "patient_mean_ci", "patient_resamples", "percentile_ci"]
