"""Priors on manifolds, with the same face as every ``geoflow`` distribution."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp

from geoflow.distributions import Distribution

from .base import Manifold


class UniformOn(Distribution):
    """The uniform (normalised Riemannian volume) distribution on a compact manifold."""

    manifold: Manifold
    shape: tuple[int, ...] = eqx.field(static=True)
    cond_shape: tuple[int, ...] | None = eqx.field(static=True, default=None)

    def __init__(self, manifold: Manifold):
        if not manifold.compact:
            raise ValueError(f"{type(manifold).__name__} is not compact: it has no uniform distribution")
        self.manifold = manifold
        self.shape = tuple(manifold.shape)
        self.cond_shape = None

    def _log_prob(self, x, condition=None):
        return jnp.asarray(self.manifold.uniform_log_prob(), x.dtype)

    def _sample(self, key, condition=None):
        return self.manifold.random_uniform(key)
