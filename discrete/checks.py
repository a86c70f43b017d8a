"""Token input checks at the public boundary: a clear error naming what was wrong."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


def check_tokens(x, vocab_size: int, length: int, name: str = "tokens"):
    """``x`` ``(..., length)`` as int32 tokens in ``[0, vocab_size)``; a ``ValueError`` for a
    wrong length, non-integer values or an empty set (``eqx.error_if`` for the range inside jit)."""
    if isinstance(x, jax.core.Tracer):
        if x.ndim < 1 or x.shape[-1] != length:
            raise ValueError(f"{name} has shape {tuple(x.shape)}; expected (..., {length}) — sequences of length {length}")
        x = x.astype(jnp.int32)
        bad = jnp.any((x < 0) | (x >= vocab_size))
        return eqx.error_if(x, bad, f"{name} holds tokens outside the vocabulary; expected integers in [0, {vocab_size})")
    arr = np.asarray(x)
    if arr.ndim < 1 or arr.shape[-1] != length:
        raise ValueError(f"{name} has shape {arr.shape}; expected (..., {length}) — sequences of length {length}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty; expected at least one sequence of length {length}")
    if not np.issubdtype(arr.dtype, np.integer):
        if not (np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr))):
            raise ValueError(f"{name} has non-integer values (dtype {arr.dtype}); expected integer tokens")
    if arr.min() < 0 or arr.max() >= vocab_size:
        bad = arr[(arr < 0) | (arr >= vocab_size)]
        raise ValueError(f"{name} holds tokens outside the vocabulary (e.g. {int(bad.flat[0])}); "
                         f"expected integers in [0, {vocab_size})")
    return jnp.asarray(arr, jnp.int32)
