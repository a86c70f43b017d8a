"""Integer-valued image sets as ``(n, 1, height, width)`` arrays for the image flows.

Pixels stay integers (stored as float32): the training losses of :mod:`geoflow.dequantization`
add fresh noise at every step, and bits/dim are reported in this discrete pixel space.
"""

from __future__ import annotations

import numpy as np

IMAGE_DATASETS = ("mnist", "digits")


def load_images(name: str, path=None, *, download: bool = False):
    """The named image set as a :class:`~geoflow.datasets.Dataset` with ``levels`` set.

    - ``mnist``: 28×28, 256 levels; the first 50,000 training images train, the last 10,000
      validate (the split of the MAF paper), the 10,000 test images test. ``path``/``download``
      as in :func:`~geoflow.datasets.mnist.load_mnist`.
    - ``digits``: sklearn's 8×8 digits, 17 levels, the fixed 70/15/15 split of the vector set.
    """
    from . import Dataset

    if name == "mnist":
        from .mnist import load_mnist

        arrays = load_mnist(path, download=download)
        train = arrays["x_train"][:, None].astype(np.float32)
        test = arrays["x_test"][:, None].astype(np.float32)
        return Dataset("mnist", train[:50_000], train[50_000:], test, levels=256)
    if name == "digits":
        from sklearn.datasets import load_digits

        from .digits import LEVELS

        if path is not None:
            raise ValueError("digits ship with scikit-learn; --data-path does not apply")
        pixels = load_digits().data.astype(np.float32).reshape(-1, 1, 8, 8)
        pixels = pixels[np.random.default_rng(0).permutation(len(pixels))]  # the vector set's split
        n_train, n_val = int(0.7 * len(pixels)), int(0.15 * len(pixels))
        return Dataset("digits", pixels[:n_train], pixels[n_train : n_train + n_val], pixels[n_train + n_val :],
                       levels=LEVELS)
    raise ValueError(f"unknown image data set {name!r}; expected one of {', '.join(IMAGE_DATASETS)}")
