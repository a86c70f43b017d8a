"""Vector fields on manifolds: a network on the embedding whose output the flow projects to the
tangent space (``ODEFlow(manifold=...)`` does the projection, so any Euclidean field works)."""

from __future__ import annotations

import math

import equinox as eqx
import jax.numpy as jnp

from geoflow.continuous.fields import TimeMLP

from .base import Manifold
from .euclidean import Torus


def features(manifold: Manifold, x):
    """Network input for a point: the flattened embedding, or ``(cos, sin)`` of torus angles
    (continuous across the identification 0 ≡ 2π)."""
    if isinstance(manifold, Torus):
        return jnp.concatenate([jnp.cos(x), jnp.sin(x)])
    return x.reshape(-1)


class ManifoldMLP(eqx.Module):
    """``v(t, x) = MLP([features(x), time])`` reshaped to the ambient shape.

    **Arguments:** `manifold`; `key`; `width`, `depth`, `activation`, `time_embedding`,
    `cond_dim` as for :class:`geoflow.continuous.TimeMLP`.
    """

    mlp: TimeMLP
    manifold: Manifold
    shape: tuple[int, ...] = eqx.field(static=True)
    cond_shape: tuple[int, ...] | None = eqx.field(static=True)

    def __init__(self, manifold: Manifold, *, key, width: int = 256, depth: int = 3, activation: str = "silu",
                 time_embedding: int = 0, cond_dim: int | None = None):
        n_in = 2 * manifold.shape[0] if isinstance(manifold, Torus) else math.prod(manifold.shape)
        n_out = math.prod(manifold.shape)
        self.mlp = TimeMLP(n_in, key=key, width=width, depth=depth, activation=activation,
                           time_embedding=time_embedding, cond_dim=cond_dim, out_size=n_out)
        self.manifold = manifold
        self.shape = tuple(manifold.shape)
        self.cond_shape = None if cond_dim is None else (cond_dim,)

    def __call__(self, t, x, condition=None, *, keep=None):
        return self.mlp(t, features(self.manifold, x), condition, keep=keep).reshape(self.shape)
