"""cxrdx: COVID-19 detection on chest X-rays with a hybrid CNN-RNN."""

__version__ = "0.1.0"
