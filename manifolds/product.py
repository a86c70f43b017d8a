"""Products of manifolds: :class:`Product` (different factors, points concatenated into one
flat vector), :class:`Power` (``n`` copies stacked on a leading axis, e.g. SE(3)ᴺ for protein
frames), and :func:`SE3` = SO(3) × ℝ³ with a scale on translations.

The product metric is the sum of the factors' metrics, with factor ``i`` weighted by
``scales[i]²`` (a translation measured in Å against rotations measured in radians).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from .base import Manifold
from .euclidean import Euclidean
from .so3 import SO3


class Product(Manifold):
    """``M₁ × … × M_k``; a point is the concatenation of the factors' flattened points."""

    factors: tuple[Manifold, ...]
    scales: tuple[float, ...] = eqx.field(static=True)
    shape: tuple[int, ...] = eqx.field(static=True)
    dim: int = eqx.field(static=True)

    def __init__(self, factors, scales=None):
        self.factors = tuple(factors)
        self.scales = tuple(float(s) for s in (scales or [1.0] * len(self.factors)))
        if len(self.scales) != len(self.factors):
            raise ValueError(f"got {len(self.scales)} scales for {len(self.factors)} factors")
        self.shape = (sum(math.prod(f.shape) for f in self.factors),)
        self.dim = sum(f.dim for f in self.factors)

    def split(self, x):
        """The factors' points (each in its own shape) from a product point."""
        parts, start = [], 0
        for f in self.factors:
            size = math.prod(f.shape)
            parts.append(x[start : start + size].reshape(f.shape))
            start += size
        return parts

    def join(self, parts):
        return jnp.concatenate([p.reshape(-1) for p in parts])

    def _map(self, method, *args):
        split_args = [self.split(a) for a in args]
        return self.join([getattr(f, method)(*parts) for f, *parts in zip(self.factors, *split_args)])

    def exp(self, x, v):
        return self._map("exp", x, v)

    def log(self, x, y):
        return self._map("log", x, y)

    def proj(self, x):
        return self._map("proj", x)

    def canonical(self, x):
        return self._map("canonical", x)

    def to_tangent(self, x, v):
        return self._map("to_tangent", x, v)

    def belongs(self, x, atol=1e-5):
        return jnp.all(jnp.stack([f.belongs(p, atol) for f, p in zip(self.factors, self.split(x))]))

    def inner(self, x, u, v):
        return sum(s**2 * f.inner(p, a, b)
                   for f, s, p, a, b in zip(self.factors, self.scales, self.split(x), self.split(u), self.split(v)))

    def dist(self, x, y):
        return jnp.sqrt(sum(s**2 * f.dist(p, q) ** 2
                            for f, s, p, q in zip(self.factors, self.scales, self.split(x), self.split(y))) + 1e-30)

    def tangent_basis(self, x):
        """The factors' bases, each padded with zeros to the other factors' coordinates."""
        blocks, start = [], 0
        for f, p in zip(self.factors, self.split(x)):
            b = f.tangent_basis(p).reshape(f.dim, -1)
            blocks.append(jnp.pad(b, ((0, 0), (start, self.shape[0] - start - b.shape[1]))))
            start += b.shape[1]
        return jnp.concatenate(blocks, 0)

    def random_tangent_normal(self, key, x):
        # factor i's part is measured with weight sᵢ², so it gets standard deviation 1/sᵢ
        keys = jax.random.split(key, len(self.factors))
        return self.join([f.random_tangent_normal(k, p) / s
                          for f, s, k, p in zip(self.factors, self.scales, keys, self.split(x))])

    def wrapped_normal_log_prob(self, mean, x, sigma):
        """The factors are independent with scales ``σ/sᵢ``; a factor's volume is ``sᵢ^dimᵢ``
        times its own, so its density is divided by that."""
        return sum(f.wrapped_normal_log_prob(m, p, sigma / s) - f.dim * math.log(s)
                   for f, s, m, p in zip(self.factors, self.scales, self.split(mean), self.split(x)))

    @property
    def compact(self):
        return all(f.compact for f in self.factors)

    def random_uniform(self, key, shape=()):
        keys = jax.random.split(key, len(self.factors))
        parts = [f.random_uniform(k, shape).reshape(*shape, -1) for f, k in zip(self.factors, keys)]
        return jnp.concatenate(parts, axis=-1)

    def log_volume(self):
        # the volume of a factor scaled by s is s^dim times its own
        return sum(f.log_volume() + f.dim * math.log(s) for f, s in zip(self.factors, self.scales))


class Power(Manifold):
    """``Mⁿ``: ``n`` copies of one manifold, points of shape ``(n, *manifold.shape)``."""

    manifold: Manifold
    n: int = eqx.field(static=True)
    shape: tuple[int, ...] = eqx.field(static=True)
    dim: int = eqx.field(static=True)

    def __init__(self, manifold: Manifold, n: int):
        self.manifold, self.n = manifold, n
        self.shape = (n, *manifold.shape)
        self.dim = n * manifold.dim

    def exp(self, x, v):
        return jax.vmap(self.manifold.exp)(x, v)

    def log(self, x, y):
        return jax.vmap(self.manifold.log)(x, y)

    def proj(self, x):
        return jax.vmap(self.manifold.proj)(x)

    def canonical(self, x):
        return jax.vmap(self.manifold.canonical)(x)

    def to_tangent(self, x, v):
        return jax.vmap(self.manifold.to_tangent)(x, v)

    def belongs(self, x, atol=1e-5):
        return jnp.all(jax.vmap(lambda p: self.manifold.belongs(p, atol))(x))

    def inner(self, x, u, v):
        return jnp.sum(jax.vmap(self.manifold.inner)(x, u, v))

    def dist(self, x, y):
        return jnp.sqrt(jnp.sum(jax.vmap(self.manifold.dist)(x, y) ** 2) + 1e-30)

    def random_tangent_normal(self, key, x):
        return jax.vmap(self.manifold.random_tangent_normal)(jax.random.split(key, self.n), x)

    def tangent_basis(self, x):
        """Copy ``i``'s basis vectors, zero on the other copies: ``(n · dim, n, *shape)``."""
        per_copy = jax.vmap(self.manifold.tangent_basis)(x)  # (n, k, *shape)
        eye = jnp.eye(self.n, dtype=x.dtype).reshape(self.n, 1, self.n, *([1] * len(self.manifold.shape)))
        return (eye * per_copy[:, :, None]).reshape(self.dim, *self.shape)

    def wrapped_normal_log_prob(self, mean, x, sigma):
        return jnp.sum(jax.vmap(lambda m, p: self.manifold.wrapped_normal_log_prob(m, p, sigma))(mean, x))

    @property
    def compact(self):
        return self.manifold.compact

    def random_uniform(self, key, shape=()):
        return self.manifold.random_uniform(key, (*shape, self.n))

    def log_volume(self):
        return self.n * self.manifold.log_volume()


def SE3(translation_scale: float = 1.0) -> Product:
    """SE(3) as SO(3) × ℝ³ (rotation matrix flattened, then translation: 12 numbers) with the
    product metric; translations weighted by ``translation_scale``.

    The product metric is not the group's: ``exp``/``log``/geodesics move the rotation along its
    SO(3) geodesic and the translation along a straight line, separately, rather than by the
    Lie-group exponential of a twist (which couples them through the left Jacobian). Flow matching
    on frames (FrameFlow, :mod:`molecules.proteins`) uses this product metric too; the group's
    exponential and logarithm are :func:`manifolds.twist_exp` and :func:`manifolds.twist_log`."""
    return Product([SO3(), Euclidean(3)], scales=[1.0, translation_scale])
