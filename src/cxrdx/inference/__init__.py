"""Inference: batched, failure-tolerant prediction from trained models, on torch or ONNX Runtime.

- :mod:`~cxrdx.inference.predictor`: ``Predictor``, ``Prediction``, ``predict_manifest``
- :mod:`~cxrdx.inference.runtimes`: ``RUNTIMES``, ``create_predictor(run_dir, runtime)``
- :mod:`~cxrdx.inference.output`: ``write_predictions`` (CSV / JSON)
- :mod:`~cxrdx.inference.onnx_export`, :mod:`~cxrdx.inference.onnx_runtime`

Import the submodule you need; this package imports nothing itself.
"""
