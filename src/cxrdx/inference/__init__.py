"""Inference: batched, failure-tolerant prediction from trained models."""

from .predictor import Prediction, Predictor, predict_manifest

__all__ = ["Prediction", "Predictor", "predict_manifest"]
