"""Reproducibility: one call seeds Python, NumPy and torch and sets thread counts."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int, threads: int | None = None) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if threads is None:
        threads = int(os.environ.get("CXRDX_THREADS", "0")) or os.cpu_count() or 1
    torch.set_num_threads(max(1, threads))
