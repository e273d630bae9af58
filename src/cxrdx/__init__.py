"""cxrdx: COVID-19 detection on chest X-rays with a hybrid CNN-RNN.

``import cxrdx`` stays light (no torch); explanations: ``from cxrdx.explain import Explainer``.
"""

__version__ = "0.1.0"
