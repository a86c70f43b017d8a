"""Saving and loading any model (or any pytree, such as a training checkpoint) exactly.

The file holds the whole pytree — its classes, static hyper-parameters and array leaves as
NumPy arrays — pickled, so ``load`` needs no constructor arguments. As with any pickle, only
load files you trust.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

FORMAT = "geoflow-pytree-v1"


def _to_numpy(tree):
    return jax.tree.map(lambda a: np.asarray(a) if isinstance(a, jax.Array) else a, tree)


def _to_jax(tree):
    return jax.tree.map(lambda a: jnp.asarray(a) if isinstance(a, np.ndarray) else a, tree)


def save(path, tree) -> Path:
    """Write ``tree`` (a model, or a dict of models/optimizer state/...) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from . import __version__

    payload = {"format": FORMAT, "version": __version__, "tree": _to_numpy(tree)}
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)
    return path


def load(path):
    """Read what :func:`save` wrote; arrays come back as JAX arrays."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no saved model at {path}; expected a file written by geoflow.save")
    with open(path, "rb") as f:
        try:
            payload = pickle.load(f)
        except Exception as e:  # a truncated or foreign file
            raise ValueError(f"{path} is not a geoflow save file ({e})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a geoflow save file (expected format {FORMAT})")
    return _to_jax(payload["tree"])
