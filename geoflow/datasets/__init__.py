"""Data sets with fixed, seedable train/validation/test splits.

:func:`load_dataset` returns a :class:`Dataset` for any name in ``DATASETS``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from .images import IMAGE_DATASETS, load_images
from .toy2d import ENTROPIES, GENERATORS, LOG_PROBS, sample_toy

DATASETS = tuple(GENERATORS) + ("digits",)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Splits of a data set plus what is known about its truth; the one container of every
    package's data (``manifolds.datasets.ManifoldDataset`` and ``discrete.datasets.TokenDataset``
    add their own fields to it).

    **Fields:** ``train``, ``val``, ``test`` (``(n, *shape)``: float32 vectors, ``(n, c, h, w)``
    images, points of a manifold's embedding, integer tokens); the ground truth where known:
    ``true_nll``, its expected negative log-likelihood per example in nats (the differential
    entropy of continuous data, the entropy of a discrete distribution), and ``true_log_prob``,
    its log-density, examples ``(n, *shape)`` → ``(n,)``; ``levels``: for dequantized integer
    data the number of levels per dimension (bits/dim are then reported in that discrete space).
    """

    name: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    true_nll: float | None = None
    true_log_prob: Callable | None = None
    levels: int | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one example."""
        return tuple(self.train.shape[1:])

    @property
    def dim(self) -> int:
        """The number of dimensions of one example (pixels for images)."""
        return int(np.prod(self.train.shape[1:]))


def random_split(x: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(train, val, test)``: 80/10/10 of the rows of ``x`` (``(n, …)``, ``n ≥ 10``) in the random
    order drawn from ``seed`` (validation and test get ``⌊0.1·n⌋`` rows or one more for the test)."""
    x = np.asarray(x)
    if len(x) < 10:
        raise ValueError(f"an 80/10/10 split needs at least 10 examples; got {len(x)}")
    x = x[np.random.default_rng(seed).permutation(len(x))]
    n_train, n_val = int(0.8 * len(x)), int(0.1 * len(x))
    return x[:n_train], x[n_train : n_train + n_val], x[n_train + n_val :]


def load_dataset(name: str, *, seed: int = 0, n_train: int = 20_000, n_val: int = 2_000,
                 n_test: int = 100_000) -> Dataset:
    """The named data set. Toy 2-D sets draw fresh, independent splits from ``seed``;
    ``digits`` has a fixed split whose dequantisation noise is drawn from ``seed``."""
    if name == "digits":
        from .digits import load_digits

        return load_digits(seed=seed)
    if name not in GENERATORS:
        raise ValueError(f"unknown data set {name!r}; expected one of {', '.join(DATASETS)}")
    # three disjoint streams so the test set never overlaps training data
    train, val, test = (sample_toy(name, n, seed=seed * 3 + i) for i, n in enumerate((n_train, n_val, n_test)))
    entropy = ENTROPIES[name]() if name in ENTROPIES else None
    return Dataset(name, train, val, test, true_nll=entropy, true_log_prob=LOG_PROBS.get(name))


__all__ = ["DATASETS", "Dataset", "IMAGE_DATASETS", "load_images", "LOG_PROBS", "load_dataset", "random_split", "sample_toy"]
