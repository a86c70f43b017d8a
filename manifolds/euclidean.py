"""Flat spaces: ``Euclidean`` ℝⁿ and the flat torus ``Torus`` Tⁿ = (ℝ / 2πℤ)ⁿ."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from .base import Manifold


class Euclidean(Manifold):
    """ℝⁿ: the flat special case every manifold-aware code path reduces to."""

    shape: tuple[int, ...] = eqx.field(static=True)
    dim: int = eqx.field(static=True)

    def __init__(self, n: int):
        self.shape, self.dim = (n,), n

    def exp(self, x, v):
        return x + v

    def log(self, x, y):
        return y - x

    def proj(self, x):
        return x

    def to_tangent(self, x, v):
        return v

    def belongs(self, x, atol=1e-5):
        return jnp.all(jnp.isfinite(x))


def wrap(angle):
    """Angles into ``[−π, π)``."""
    return jnp.mod(angle + jnp.pi, 2 * jnp.pi) - jnp.pi


class Torus(Manifold):
    """The flat torus Tⁿ; points are angles in ``[0, 2π)``, the metric is the flat one."""

    shape: tuple[int, ...] = eqx.field(static=True)
    dim: int = eqx.field(static=True)

    def __init__(self, n: int):
        self.shape, self.dim = (n,), n

    def exp(self, x, v):
        return jnp.mod(x + v, 2 * jnp.pi)

    def log(self, x, y):
        return wrap(y - x)

    def proj(self, x):
        return jnp.mod(x, 2 * jnp.pi)

    def to_tangent(self, x, v):
        return v

    def belongs(self, x, atol=1e-5):
        return jnp.all((x >= -atol) & (x < 2 * jnp.pi + atol))

    @property
    def compact(self):
        return True

    def random_uniform(self, key, shape=()):
        return jax.random.uniform(key, (*shape, *self.shape), minval=0.0, maxval=2 * jnp.pi)

    def log_volume(self):
        return self.dim * math.log(2 * math.pi)
