"""The unit sphere Sⁿ ⊂ ℝⁿ⁺¹ with the round metric."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from .base import Manifold


def _sin_over(theta):
    """``sin θ / θ``, smooth through 0 (Taylor series below 1e-3)."""
    small = jnp.abs(theta) < 1e-3
    safe = jnp.where(small, 1.0, theta)
    return jnp.where(small, 1 - theta**2 / 6, jnp.sin(safe) / safe)


class Sphere(Manifold):
    """Sⁿ = {x ∈ ℝⁿ⁺¹ : ‖x‖ = 1}; ``Sphere(2)`` is the 2-sphere in ℝ³."""

    shape: tuple[int, ...] = eqx.field(static=True)
    dim: int = eqx.field(static=True)

    def __init__(self, n: int = 2):
        if n < 1:
            raise ValueError(f"a sphere needs dimension n ≥ 1, got {n}")
        self.shape, self.dim = (n + 1,), n

    def exp(self, x, v):
        theta = jnp.sqrt(jnp.sum(v**2) + 1e-30)
        return self.proj(jnp.cos(theta) * x + _sin_over(theta) * v)

    def log(self, x, y):
        cos = jnp.clip(jnp.sum(x * y), -1.0, 1.0)
        u = y - cos * x
        # θ / sin θ from the chord of the normal part: stable near 0; antipodal points have
        # no unique logarithm and return a finite vector of the right length in some direction
        sin = jnp.sqrt(jnp.sum(u**2) + 1e-30)
        theta = jnp.arctan2(sin, cos)
        return u * theta / sin

    def proj(self, x):
        return x / jnp.sqrt(jnp.sum(x**2) + 1e-30)

    def to_tangent(self, x, v):
        return v - jnp.sum(x * v) * x

    def belongs(self, x, atol=1e-5):
        return jnp.abs(jnp.sum(x**2) - 1.0) < atol

    def dist(self, x, y):
        cos = jnp.clip(jnp.sum(x * y), -1.0, 1.0)
        return jnp.arctan2(jnp.sqrt(jnp.sum((y - cos * x) ** 2) + 1e-30), cos)

    def wrapped_normal_log_prob(self, mean, x, sigma, wraps: int = 2):
        """The preimages of ``x`` (at angle ``θ`` from ``mean``) have lengths ``θ + 2πk`` and
        ``2πk − θ``; ``exp`` scales volume by ``(sin r / r)ⁿ⁻¹`` at length ``r``. The density is
        singular (integrably) at ``mean`` and its antipode, where whole spheres of preimages meet."""
        n = self.dim
        theta = self.dist(mean, x)
        ks = jnp.arange(1, wraps + 1)
        lengths = jnp.concatenate([theta[None], theta + 2 * jnp.pi * ks, 2 * jnp.pi * ks - theta])
        log_sin = jnp.log(jnp.maximum(jnp.sin(theta), 1e-7))
        log_jac = jnp.concatenate([-jnp.log(_sin_over(theta))[None],
                                   jnp.log(lengths[1:]) - log_sin]) * (n - 1)
        terms = -0.5 * (lengths / sigma) ** 2 - 0.5 * n * jnp.log(2 * jnp.pi * sigma**2) + log_jac
        return jax.nn.logsumexp(terms)

    @property
    def compact(self):
        return True

    def random_uniform(self, key, shape=()):
        z = jax.random.normal(key, (*shape, *self.shape))
        return z / jnp.linalg.norm(z, axis=-1, keepdims=True)

    def log_volume(self):
        k = self.dim + 1  # |Sⁿ| = 2 π^{k/2} / Γ(k/2) with k = n + 1
        return math.log(2) + 0.5 * k * math.log(math.pi) - math.lgamma(0.5 * k)

    # latitude/longitude (degrees) ↔ points of S², for earth data
    @staticmethod
    def from_lat_lon(lat_lon):
        lat, lon = jnp.deg2rad(lat_lon[..., 0]), jnp.deg2rad(lat_lon[..., 1])
        return jnp.stack([jnp.cos(lat) * jnp.cos(lon), jnp.cos(lat) * jnp.sin(lon), jnp.sin(lat)], -1)

    @staticmethod
    def to_lat_lon(x):
        return jnp.rad2deg(jnp.stack([jnp.arcsin(jnp.clip(x[..., 2], -1, 1)), jnp.arctan2(x[..., 1], x[..., 0])], -1))
