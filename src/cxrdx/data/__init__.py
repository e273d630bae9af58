"""Data: hardened image reading, manifests, patient-grouped splits, transforms."""

from .dataset import CXRDataset
from .io import ImageReadError, ReadLimits, expand_paths, iter_images, read_image
from .manifest import ManifestError, load_manifest
from .splits import LeakageError, assert_no_patient_leakage, kfold_indices, train_val_split, train_val_test_split
from .transforms import build_transform, preprocess

__all__ = [
    "CXRDataset", "ImageReadError", "LeakageError", "ManifestError", "ReadLimits",
    "assert_no_patient_leakage", "build_transform", "expand_paths", "iter_images", "kfold_indices",
    "load_manifest", "preprocess", "read_image", "train_val_split", "train_val_test_split",
]
