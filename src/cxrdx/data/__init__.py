"""Data: hardened image reading, manifests, patient-grouped splits, transforms.

Importing the package loads nothing else: the names below come from their
submodules on first use (the torch-dependent ``dataset`` and ``transforms`` only
when asked for).
"""

from __future__ import annotations

from ..lazy import lazy_exports

_EXPORTS = {
    "CXRDataset": "dataset",
    "ImageReadError": "errors",
    "ReadLimits": "errors",
    "expand_paths": "paths",
    "iter_images": "io",
    "read_image": "io",
    "ManifestError": "manifest",
    "load_manifest": "manifest",
    "LeakageError": "splits",
    "assert_no_patient_leakage": "splits",
    "kfold_indices": "splits",
    "train_val_split": "splits",
    "train_val_test_split": "splits",
    "build_transform": "transforms",
    "preprocess": "transforms",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
