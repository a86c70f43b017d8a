"""Flat spaces: ``Euclidean`` ℝⁿ and the flat torus ``Torus`` Tⁿ = (ℝ / 2πℤ)ⁿ."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

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

    def wrapped_normal_log_prob(self, mean, x, sigma):
        return _normal_log_prob(x - mean, sigma)

    def tangent_basis(self, x):
        return jnp.eye(self.dim, dtype=x.dtype)


class CentredPoints(Manifold):
    """``n`` points in ℝᵈ with their mean at the origin: the linear subspace of ℝ^{n×d} of
    dimension ``(n − 1) d`` on which centred data (a protein fragment's residue positions, a
    molecule's atoms) live. Points have shape ``(n, d)``; projection removes the mean. A flow
    whose velocity is projected here has its divergence and its Gaussian prior on the subspace,
    so likelihoods of centred data are proper densities (against ``(n − 1) d``-dim volume)."""

    n: int = eqx.field(static=True)
    d: int = eqx.field(static=True)
    shape: tuple[int, ...] = eqx.field(static=True)
    dim: int = eqx.field(static=True)

    def __init__(self, n: int, d: int = 3):
        if n < 2:
            raise ValueError(f"CentredPoints needs at least 2 points, got {n}")
        self.n, self.d, self.shape, self.dim = n, d, (n, d), (n - 1) * d

    def exp(self, x, v):
        return x + v

    def log(self, x, y):
        return y - x

    def proj(self, x):
        return x - jnp.mean(x, axis=0)

    def to_tangent(self, x, v):
        return v - jnp.mean(v, axis=0)

    def belongs(self, x, atol=1e-5):
        return jnp.all(jnp.isfinite(x)) & jnp.all(jnp.abs(jnp.mean(x, axis=0)) < atol)

    def tangent_basis(self, x):
        """``(n − 1) d`` orthonormal zero-mean directions: Helmert's contrasts in each coordinate."""
        n, d = self.n, self.d
        helmert = np.zeros((n - 1, n))
        for k in range(1, n):  # (1, …, 1, −k, 0, …) / √(k(k+1))
            helmert[k - 1, :k], helmert[k - 1, k] = 1.0, -k
            helmert[k - 1] /= np.sqrt(k * (k + 1))
        basis = np.einsum("kn,de->kdne", helmert, np.eye(d)).reshape((n - 1) * d, n, d)
        return jnp.asarray(basis, x.dtype)

    def wrapped_normal_log_prob(self, mean, x, sigma):
        """The isotropic Gaussian of the subspace: ``‖x − mean‖²`` is already the squared norm
        in orthonormal coordinates of the subspace; the normaliser has ``(n − 1) d`` dimensions."""
        v = x - mean
        return -0.5 * jnp.sum(v**2) / sigma**2 - 0.5 * self.dim * jnp.log(2 * jnp.pi * sigma**2)


def _normal_log_prob(v, sigma):
    """``log N(v; 0, σ² I)`` summed over the last axis."""
    return jnp.sum(-0.5 * (v / sigma) ** 2 - 0.5 * jnp.log(2 * jnp.pi * sigma**2), axis=-1)


def wrap(angle):
    """Angles into ``[−π, π)``."""
    return jnp.mod(angle + jnp.pi, 2 * jnp.pi) - jnp.pi


class Torus(Manifold):
    """The flat torus Tⁿ; points are angles in ``[0, 2π)``, the metric is the flat one.

    Angles are periodic: any finite angle is accepted where a point comes in (data, ``log_prob``,
    the command) and wrapped into ``[0, 2π)``, so dihedral angles in the usual ``[−π, π)`` (φ/ψ
    from a Ramachandran file) need no conversion. ``belongs`` keeps the strict range."""

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

    def canonical(self, x):
        return self.proj(x)

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

    def wrapped_normal_log_prob(self, mean, x, sigma, wraps: int = 3):
        """Flat, so ``exp`` has Jacobian 1: per angle, the normal summed over ``d + 2πk``,
        ``|k| ≤ wraps`` (ample for σ ≲ 3)."""
        d = wrap(x - mean)[..., None] + 2 * jnp.pi * jnp.arange(-wraps, wraps + 1)
        per_angle = jax.nn.logsumexp(-0.5 * (d / sigma) ** 2, axis=-1) - 0.5 * jnp.log(2 * jnp.pi * sigma**2)
        return jnp.sum(per_angle)
