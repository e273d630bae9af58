"""Cached frozen-backbone features: :mod:`cxrdx.features.cache` (``extract_features``, ``FeatureSet``).

Import the submodule; this package imports nothing itself.
"""
