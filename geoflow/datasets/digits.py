"""sklearn's 8×8 digits (1,797 images, 17 grey levels) as 64-D dequantised vectors."""

from __future__ import annotations

import numpy as np

LEVELS = 17  # pixel values are 0..16


def load_digits(seed: int = 0):
    """Fixed 70/15/15 split (permutation seed 0, independent of ``seed``); uniform
    dequantisation ``(x + u) / 17`` into ``[0, 1)`` with noise drawn from ``seed``."""
    from sklearn.datasets import load_digits as sklearn_digits

    from . import Dataset

    pixels = sklearn_digits().data.astype(np.float64)  # (1797, 64), ships with sklearn
    order = np.random.default_rng(0).permutation(len(pixels))
    n_train, n_val = int(0.7 * len(pixels)), int(0.15 * len(pixels))
    noise = np.random.default_rng(seed).uniform(size=pixels.shape)
    x = ((pixels + noise) / LEVELS).astype(np.float32)[order]
    return Dataset("digits", x[:n_train], x[n_train : n_train + n_val], x[n_train + n_val :], levels=LEVELS)
