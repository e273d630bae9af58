"""Cached frozen-backbone features."""

from .cache import FeatureCache, FeatureSet, cache_key, extract_features, file_digest

__all__ = ["FeatureCache", "FeatureSet", "cache_key", "extract_features", "file_digest"]
