"""Preprocessing written as bijections, so their Jacobians enter the reported likelihood.

Like every bijection, ``forward`` is latent → data; put these last in a flow's chain
(nearest the data). Their parameters are fixed: gradients are stopped, so training leaves
them as fitted.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .base import Bijection


class Standardize(Bijection):
    """``data = mean + std · z``: the inverse standardises data. Fit with :meth:`fit`."""

    mean: Float[Array, " dim"]
    std: Float[Array, " dim"]
    shape: tuple[int, ...] = eqx.field(static=True)
    cond_shape: tuple[int, ...] | None = eqx.field(static=True, default=None)

    def __init__(self, mean, std):
        mean, std = jnp.asarray(mean, float), jnp.asarray(std, float)
        if mean.shape != std.shape or mean.ndim != 1:
            raise ValueError(f"mean and std must be vectors of one shape, got {mean.shape}, {std.shape}")
        if not bool(jnp.all(std > 0)):
            raise ValueError("Standardize needs std > 0 in every dimension")
        self.mean, self.std = mean, std
        self.shape = mean.shape
        self.cond_shape = None

    @classmethod
    def fit(cls, data: Float[Array, "n dim"], eps: float = 1e-6) -> Standardize:
        """Mean and standard deviation of ``data`` (``eps`` guards constant dimensions)."""
        data = jnp.asarray(data)
        return cls(data.mean(0), data.std(0) + eps)

    def forward_and_log_det(self, x, condition=None):
        mean, std = jax.lax.stop_gradient((self.mean, self.std))
        return mean + std * x, jnp.sum(jnp.log(std))

    def inverse_and_log_det(self, y, condition=None):
        mean, std = jax.lax.stop_gradient((self.mean, self.std))
        return (y - mean) / std, -jnp.sum(jnp.log(std))


class Logit(Bijection):
    """Data in ``[0, 1]`` ↔ logit space: ``inverse(x) = logit(α + (1 − 2α)·x)``
    (RealNVP/MAF preprocessing; α keeps the boundaries finite)."""

    alpha: float = eqx.field(static=True)
    shape: tuple[int, ...] = eqx.field(static=True)
    cond_shape: tuple[int, ...] | None = eqx.field(static=True, default=None)

    def __init__(self, dim: int, alpha: float = 1e-6):
        if not 0 <= alpha < 0.5:
            raise ValueError(f"alpha must be in [0, 0.5), got {alpha}")
        self.alpha = alpha
        self.shape = (dim,)
        self.cond_shape = None

    def inverse_and_log_det(self, y, condition=None):
        p = self.alpha + (1 - 2 * self.alpha) * y
        z = jnp.log(p) - jnp.log1p(-p)
        logdet = jnp.sum(jnp.log1p(-2 * self.alpha) - jnp.log(p) - jnp.log1p(-p))
        return z, logdet

    def forward_and_log_det(self, x, condition=None):
        p = jax.nn.sigmoid(x)
        y = (p - self.alpha) / (1 - 2 * self.alpha)
        logdet = jnp.sum(jax.nn.log_sigmoid(x) + jax.nn.log_sigmoid(-x) - jnp.log1p(-2 * self.alpha))
        return y, logdet


def uniform_dequantize(key, x: Array, num_levels: int) -> Array:
    """Integer data in ``0..num_levels-1`` → continuous data in ``[0, 1)``: ``(x + u) / num_levels``.

    A density ``p`` of the result gives the discrete log-likelihood lower bound
    ``log p(y) − D·log(num_levels)`` (see :func:`geoflow.metrics.dequantized_log_likelihood`).
    """
    x = jnp.asarray(x)
    return (x + jax.random.uniform(key, x.shape)) / num_levels
