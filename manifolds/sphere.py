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
        """The tangent vector at ``x`` of length ``d(x, y)`` pointing to ``y``.

        The angle is ``2 atan2(‖y − x‖, ‖y + x‖)``, accurate at both ends of ``[0, π]``; the
        direction is the normal part ``y − ⟨x, y⟩x`` normalised by its exact length. At the
        antipode (normal part exactly zero) every direction is a geodesic; the one returned is
        the first coordinate axis, among those least aligned with ``x``, projected to the
        tangent space: a fixed, documented choice, so ``exp(x, log(x, −x)) = −x``."""
        theta = self._angle(x, y)
        # the normal part from the short chord (y − x near x, y + x near −x): no cancellation
        chord = jnp.where(jnp.sum(x * y) >= 0, y - x, y + x)
        u = self.to_tangent(x, chord)
        norm_sq = jnp.sum(u**2)
        found = norm_sq > 0
        length = jnp.sqrt(jnp.where(found, norm_sq, 1.0))
        axis = jax.nn.one_hot(jnp.argmin(jnp.abs(x)), x.shape[-1], dtype=x.dtype)
        fallback = self.to_tangent(x, axis)
        fallback = fallback / jnp.sqrt(jnp.sum(fallback**2))
        return theta * jnp.where(found, u / length, fallback)

    @staticmethod
    def _angle(x, y):
        """``d(x, y) = 2 atan2(‖y − x‖, ‖y + x‖)``: no cancellation near 0 or π."""
        safe_norm = lambda v: jnp.sqrt(jnp.maximum(jnp.sum(v**2), jnp.finfo(v.dtype).tiny))
        return 2 * jnp.arctan2(safe_norm(y - x), safe_norm(y + x))

    def proj(self, x):
        return x / jnp.sqrt(jnp.sum(x**2) + 1e-30)

    def to_tangent(self, x, v):
        return v - jnp.sum(x * v) * x

    def belongs(self, x, atol=1e-5):
        return jnp.abs(jnp.sum(x**2) - 1.0) < atol

    def dist(self, x, y):
        return self._angle(x, y)

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
