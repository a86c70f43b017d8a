"""Input checks at the public boundary: shapes fail at trace time with a ``ValueError``,
non-finite values fail at run time inside jit through ``eqx.error_if``."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp


def check_event(x, event_shape: tuple[int, ...], name: str = "x"):
    """``x`` as an array whose trailing axes equal ``event_shape``, else a clear ``ValueError``."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(float)
    k = len(event_shape)
    if x.ndim < k or tuple(x.shape[x.ndim - k :]) != tuple(event_shape):
        raise ValueError(
            f"{name} has shape {tuple(x.shape)}; expected (..., {', '.join(map(str, event_shape))}) "
            f"— any leading batch axes followed by the event shape {tuple(event_shape)}"
        )
    return x


def check_finite(x, name: str = "x"):
    """Raise (inside jit too) if ``x`` holds NaN or inf."""
    return eqx.error_if(x, ~jnp.all(jnp.isfinite(x)), f"{name} contains NaN or inf; expected finite values")


def check_condition(condition, cond_shape: tuple[int, ...] | None):
    """Validate a context argument against what the model was built with."""
    if cond_shape is None:
        if condition is not None:
            raise ValueError("this model is unconditional; got a condition, expected condition=None")
        return None
    if condition is None:
        raise ValueError(f"this model is conditional; expected a condition of shape (..., {cond_shape[0]})")
    return check_finite(check_event(condition, cond_shape, "condition"), "condition")
