"""Vector fields on manifolds: a network on the embedding whose output the flow projects to the
tangent space (``ODEFlow(manifold=...)`` does the projection, so any Euclidean field works)."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from geoflow.continuous.fields import TimeMLP
from geoflow.nn import Frozen
from geoflow.serialization import register_migration

from .base import Manifold
from .euclidean import Torus


def features(manifold: Manifold, x):
    """Network input for a point: the flattened embedding, or ``(cos, sin)`` of torus angles
    (continuous across the identification 0 ≡ 2π)."""
    if isinstance(manifold, Torus):
        return jnp.concatenate([jnp.cos(x), jnp.sin(x)])
    return x.reshape(-1)


def log_uniform_frequencies(key, count: int, dim: int, top: float):
    """``(count, dim)`` frequencies: directions uniform on the sphere, lengths log-uniform on ``[1, top]``."""
    k_dir, k_len = jax.random.split(key)
    directions = jax.random.normal(k_dir, (count, dim))
    directions = directions / jnp.linalg.norm(directions, axis=1, keepdims=True)
    return directions * jnp.exp(jax.random.uniform(k_len, (count, 1), maxval=math.log(top)))


class ManifoldMLP(eqx.Module):
    """``v(t, x) = MLP([features(x), fourier(x), time])`` reshaped to the ambient shape.

    **Arguments:** `manifold`; `key`; `width`, `depth`, `activation`, `time_embedding`,
    `cond_dim` as for :class:`geoflow.continuous.TimeMLP`.
    - `fourier_features`: ``0`` (default) feeds the features alone; an even ``n`` adds ``n``
      random Fourier features ``(cos Bx, sin Bx)`` of them (Tancik et al. 2020): ``n / 2``
      frequencies with uniformly random directions and lengths log-uniform on
      ``[1, fourier_scale]``, drawn once and not trained. They let an MLP resolve densities far
      sharper than its smooth inputs allow, down to about ``1 / fourier_scale`` in the
      embedding, while the short frequencies keep broad structure easy to fit (Gaussian
      frequencies of one scale fit the earth sets' broad densities badly,
      ``benchmarks/RESULTS.md``).
    """

    mlp: TimeMLP
    manifold: Manifold
    frequencies: Frozen | None  # an input encoding: fit never moves it (nor decays it)
    shape: tuple[int, ...] = eqx.field(static=True)
    cond_shape: tuple[int, ...] | None = eqx.field(static=True)

    def __init__(self, manifold: Manifold, *, key, width: int = 256, depth: int = 3, activation: str = "silu",
                 time_embedding: int = 0, cond_dim: int | None = None, fourier_features: int = 0,
                 fourier_scale: float = 100.0):
        if fourier_features < 0 or fourier_features % 2:
            raise ValueError(f"fourier_features must be 0 or a positive even number, got {fourier_features}")
        if not 1.0 <= fourier_scale < float("inf"):
            raise ValueError(f"fourier_scale must be at least 1 (the lowest frequency's length), got {fourier_scale}")
        n_feat = 2 * manifold.shape[0] if isinstance(manifold, Torus) else math.prod(manifold.shape)
        n_out = math.prod(manifold.shape)
        self.frequencies = (Frozen(log_uniform_frequencies(jax.random.fold_in(key, 1), fourier_features // 2, n_feat,
                                                           fourier_scale)) if fourier_features else None)
        self.mlp = TimeMLP(n_feat + fourier_features, key=key, width=width, depth=depth, activation=activation,
                           time_embedding=time_embedding, cond_dim=cond_dim, out_size=n_out)
        self.manifold = manifold
        self.shape = tuple(manifold.shape)
        self.cond_shape = None if cond_dim is None else (cond_dim,)

    def __call__(self, t, x, condition=None, *, keep=None):
        h = features(self.manifold, x)
        if self.frequencies is not None:
            angle = self.frequencies.value @ h
            h = jnp.concatenate([h, jnp.cos(angle), jnp.sin(angle)])
        return self.mlp(t, h, condition, keep=keep).reshape(self.shape)


# files written before Fourier features existed hold fields without them
register_migration("manifolds.fields.ManifoldMLP", lambda fields: {"frequencies": None, **fields})
