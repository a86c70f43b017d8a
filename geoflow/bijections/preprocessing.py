"""Preprocessing written as bijections, so their Jacobians enter the reported likelihood.

Like every bijection, ``forward`` is latent → data; put these last in a flow's chain
(nearest the data). Their parameters are fixed: gradients are stopped, so training leaves
them as fitted.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..nn import Frozen
from .base import Bijection


class Standardize(Bijection):
    """``data = mean + std · z``: the inverse standardises data. Fit with :meth:`fit`."""

    moments: Frozen  # (2, dim): mean and std, fixed once fitted (not trained, nor weight-decayed)
    shape: tuple[int, ...] = eqx.field(static=True)
    cond_shape: tuple[int, ...] | None = eqx.field(static=True, default=None)

    def __init__(self, mean, std):
        mean, std = jnp.asarray(mean, float), jnp.asarray(std, float)
        if mean.shape != std.shape or mean.ndim != 1:
            raise ValueError(f"mean and std must be vectors of one shape, got {mean.shape}, {std.shape}")
        if not bool(jnp.all(std > 0)):
            raise ValueError("Standardize needs std > 0 in every dimension")
        self.moments = Frozen(jnp.stack([mean, std]))
        self.shape = mean.shape
        self.cond_shape = None

    @property
    def mean(self) -> Float[Array, " dim"]:
        return jax.lax.stop_gradient(self.moments.value)[0]

    @property
    def std(self) -> Float[Array, " dim"]:
        return jax.lax.stop_gradient(self.moments.value)[1]

    @classmethod
    def fit(cls, data: Float[Array, "n dim"], eps: float = 1e-6) -> Standardize:
        """Mean and standard deviation of ``data`` (``eps`` guards constant dimensions)."""
        data = jnp.asarray(data)
        return cls(data.mean(0), data.std(0) + eps)

    def forward_and_log_det(self, x, condition=None):
        mean, std = self.mean, self.std
        return mean + std * x, jnp.sum(jnp.log(std))

    def inverse_and_log_det(self, y, condition=None):
        mean, std = self.mean, self.std
        return (y - mean) / std, -jnp.sum(jnp.log(std))


class Logit(Bijection):
    """Data in ``[0, levels)`` ↔ logit space: ``inverse(y) = logit(α + (1 − 2α)·y / levels)``
    (the RealNVP/MAF preprocessing; α keeps the boundaries finite).

    The log-determinant includes the division by ``levels``, so a flow ending in this layer
    has its density in the original data space. For dequantised 8-bit images pass
    ``levels=256`` and feed pixel values in ``[0, 256)``: ``log_prob`` is then in pixel space
    and bits/dim are ``−log_prob / (D · log 2)`` with nothing added (the convention of RealNVP,
    Glow and MAF's reported bits/dim).

    **Arguments:**
    - `shape`: event shape (an int for vectors).
    - `alpha`: the margin α in ``[0, 0.5)``; `levels`: the upper end of the data range.
    """

    alpha: float = eqx.field(static=True)
    levels: float = eqx.field(static=True)
    shape: tuple[int, ...] = eqx.field(static=True)
    cond_shape: tuple[int, ...] | None = eqx.field(static=True, default=None)

    def __init__(self, shape: int | tuple[int, ...], alpha: float = 1e-6, levels: float = 1.0):
        if not 0 <= alpha < 0.5:
            raise ValueError(f"alpha must be in [0, 0.5), got {alpha}")
        if levels <= 0:
            raise ValueError(f"levels must be positive, got {levels}")
        self.alpha, self.levels = alpha, float(levels)
        self.shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.cond_shape = None

    def _constant(self, y):
        # log of d p / d y per element: (1 − 2α) / levels
        return y.size * (math.log1p(-2 * self.alpha) - math.log(self.levels))

    def inverse_and_log_det(self, y, condition=None):
        p = self.alpha + (1 - 2 * self.alpha) * y / self.levels
        z = jnp.log(p) - jnp.log1p(-p)
        return z, self._constant(y) - jnp.sum(jnp.log(p) + jnp.log1p(-p))

    def forward_and_log_det(self, x, condition=None):
        p = jax.nn.sigmoid(x)
        y = self.levels * (p - self.alpha) / (1 - 2 * self.alpha)
        return y, jnp.sum(jax.nn.log_sigmoid(x) + jax.nn.log_sigmoid(-x)) - self._constant(x)


def uniform_dequantize(key, x: Array, num_levels: int) -> Array:
    """Integer data in ``0..num_levels-1`` → continuous data in ``[0, 1)``: ``(x + u) / num_levels``.

    A density ``p`` of the result gives the discrete log-likelihood lower bound
    ``log p(y) − D·log(num_levels)`` (see :func:`geoflow.metrics.dequantized_log_likelihood`).
    """
    x = jnp.asarray(x)
    return (x + jax.random.uniform(key, x.shape)) / num_levels
