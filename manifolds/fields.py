"""Vector fields on manifolds: a network on the embedding whose output the flow projects to the
tangent space (``ODEFlow(manifold=...)`` does the projection, so any Euclidean field works)."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from geoflow.continuous.fields import TimeMLP
from geoflow.serialization import register_migration

from .base import Manifold
from .euclidean import Torus


def features(manifold: Manifold, x):
    """Network input for a point: the flattened embedding, or ``(cos, sin)`` of torus angles
    (continuous across the identification 0 ≡ 2π)."""
    if isinstance(manifold, Torus):
        return jnp.concatenate([jnp.cos(x), jnp.sin(x)])
    return x.reshape(-1)


class ManifoldMLP(eqx.Module):
    """``v(t, x) = MLP([features(x), fourier(x), time])`` reshaped to the ambient shape.

    **Arguments:** `manifold`; `key`; `width`, `depth`, `activation`, `time_embedding`,
    `cond_dim` as for :class:`geoflow.continuous.TimeMLP`.
    - `fourier_features`: ``0`` (default) feeds the features alone; an even ``n`` adds ``n``
      random Fourier features ``(cos Bx, sin Bx)`` of them (Tancik et al. 2020), ``B`` of shape
      ``(n / 2, features)`` drawn once from ``N(0, fourier_scale²)`` and not trained. They let
      an MLP resolve densities far sharper than its smooth inputs allow (a scale ``s`` resolves
      features about ``1 / s`` wide in the embedding).
    """

    mlp: TimeMLP
    manifold: Manifold
    frequencies: jax.Array | None
    shape: tuple[int, ...] = eqx.field(static=True)
    cond_shape: tuple[int, ...] | None = eqx.field(static=True)

    def __init__(self, manifold: Manifold, *, key, width: int = 256, depth: int = 3, activation: str = "silu",
                 time_embedding: int = 0, cond_dim: int | None = None, fourier_features: int = 0,
                 fourier_scale: float = 10.0):
        if fourier_features < 0 or fourier_features % 2:
            raise ValueError(f"fourier_features must be 0 or a positive even number, got {fourier_features}")
        if not fourier_scale > 0:
            raise ValueError(f"fourier_scale must be positive, got {fourier_scale}")
        n_feat = 2 * manifold.shape[0] if isinstance(manifold, Torus) else math.prod(manifold.shape)
        n_out = math.prod(manifold.shape)
        self.frequencies = (fourier_scale * jax.random.normal(jax.random.fold_in(key, 1), (fourier_features // 2, n_feat))
                            if fourier_features else None)
        self.mlp = TimeMLP(n_feat + fourier_features, key=key, width=width, depth=depth, activation=activation,
                           time_embedding=time_embedding, cond_dim=cond_dim, out_size=n_out)
        self.manifold = manifold
        self.shape = tuple(manifold.shape)
        self.cond_shape = None if cond_dim is None else (cond_dim,)

    def __call__(self, t, x, condition=None, *, keep=None):
        h = features(self.manifold, x)
        if self.frequencies is not None:
            angle = jax.lax.stop_gradient(self.frequencies) @ h
            h = jnp.concatenate([h, jnp.cos(angle), jnp.sin(angle)])
        return self.mlp(t, h, condition, keep=keep).reshape(self.shape)


# files written before Fourier features existed hold fields without them
register_migration("manifolds.fields.ManifoldMLP", lambda fields: {"frequencies": None, **fields})
