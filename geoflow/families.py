"""Parametric families beyond the normal, as base distributions of a flow or as targets:
Student-t, Laplace, Cauchy and logistic (independent location-scale coordinates), von Mises
(independent angles) and a Gaussian mixture with diagonal components.

Every parameter is learnable by ``fit`` except the shape parameters that select a family member
(Student-t's degrees of freedom): a location ``loc`` and a log-scale ``log_scale`` per
coordinate, a von Mises concentration through its logarithm, a mixture's logits, means and
log-scales. Each is checked against ``scipy.stats`` in ``tests/test_families.py``.
"""

from __future__ import annotations

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln, i0e, logsumexp
from jaxtyping import Array, Float

from .distributions import Distribution


def _loc_and_log_scale(loc, scale, name: str):
    loc = jnp.atleast_1d(jnp.asarray(loc, float))
    scale = jnp.broadcast_to(jnp.asarray(scale, float), loc.shape)
    if not bool(jnp.all(scale > 0)) or not bool(jnp.all(jnp.isfinite(loc))):
        raise ValueError(f"{name} needs a finite loc and scale > 0; got loc={loc}, scale={scale}")
    return loc, jnp.log(scale)


class _LocationScale(Distribution):
    """Independent coordinates ``x = loc + scale · z``, ``z`` from a standard member; a subclass
    gives ``z``'s log-density :meth:`_standard_log_prob` (elementwise) and sampler."""

    loc: Float[Array, " dim"]
    log_scale: Float[Array, " dim"]
    shape: tuple[int, ...] = eqx.field(static=True)
    cond_shape: tuple[int, ...] | None = eqx.field(static=True, default=None)

    def __init__(self, loc=0.0, scale=1.0):
        self.loc, self.log_scale = _loc_and_log_scale(loc, scale, type(self).__name__)
        self.shape, self.cond_shape = self.loc.shape, None

    @abc.abstractmethod
    def _standard_log_prob(self, z):
        """``log p(z)`` of the standard member, elementwise."""

    @abc.abstractmethod
    def _standard_sample(self, key, shape):
        """Standard draws of ``shape``."""

    def _log_prob(self, x, condition=None):
        z = (x - self.loc) * jnp.exp(-self.log_scale)
        return jnp.sum(self._standard_log_prob(z)) - jnp.sum(self.log_scale)

    def _sample(self, key, condition=None):
        return self.loc + jnp.exp(self.log_scale) * self._standard_sample(key, self.shape)


class StudentT(_LocationScale):
    """Student's t with ``df`` degrees of freedom (fixed, > 0) per coordinate:
    ``log p(z) = log Γ((ν+1)/2) − log Γ(ν/2) − ½ log(νπ) − (ν+1)/2 · log(1 + z²/ν)``."""

    df: float = eqx.field(static=True, default=1.0)

    def __init__(self, df: float, loc=0.0, scale=1.0):
        if not (0 < float(df) < float("inf")):
            raise ValueError(f"StudentT needs degrees of freedom df > 0; got {df}")
        super().__init__(loc, scale)
        self.df = float(df)

    def _standard_log_prob(self, z):
        nu = self.df
        const = gammaln((nu + 1) / 2) - gammaln(nu / 2) - 0.5 * math.log(nu * math.pi)
        return const - 0.5 * (nu + 1) * jnp.log1p(z**2 / nu)

    def _standard_sample(self, key, shape):
        return jax.random.t(key, self.df, shape)


class Laplace(_LocationScale):
    """Laplace: ``log p(z) = −|z| − log 2``."""

    def _standard_log_prob(self, z):
        return -jnp.abs(z) - math.log(2.0)

    def _standard_sample(self, key, shape):
        return jax.random.laplace(key, shape)


class Cauchy(_LocationScale):
    """Cauchy (Student-t with one degree of freedom): ``log p(z) = −log π − log(1 + z²)``."""

    def _standard_log_prob(self, z):
        return -math.log(math.pi) - jnp.log1p(z**2)

    def _standard_sample(self, key, shape):
        return jax.random.cauchy(key, shape)


class Logistic(_LocationScale):
    """Logistic: ``log p(z) = −z − 2 log(1 + e⁻ᶻ)``."""

    def _standard_log_prob(self, z):
        return -z - 2.0 * jax.nn.softplus(-z)

    def _standard_sample(self, key, shape):
        return jax.random.logistic(key, shape)


def _von_mises_standard(key, kappa, shape):
    """Best & Fisher's (1979) rejection sampler for von Mises angles about 0, each coordinate
    with its concentration ``kappa`` (broadcast to ``shape``); acceptance is above 65% for
    every κ, so the loop ends after a few rounds."""
    kappa = jnp.broadcast_to(kappa, shape)
    tau = 1.0 + jnp.sqrt(1.0 + 4.0 * kappa**2)
    rho = (tau - jnp.sqrt(2.0 * tau)) / (2.0 * kappa)
    r = (1.0 + rho**2) / (2.0 * rho)

    def proposal(key):
        k1, k2, k3 = jax.random.split(key, 3)
        u1, u2 = jax.random.uniform(k1, shape), jax.random.uniform(k2, shape)
        z = jnp.cos(math.pi * u1)
        f = (1.0 + r * z) / (r + z)
        c = kappa * (r - f)
        accept = (c * (2.0 - c) - u2 > 0) | (jnp.log(c / u2) + 1.0 - c >= 0)
        sign = jnp.where(jax.random.uniform(k3, shape) < 0.5, -1.0, 1.0)
        return sign * jnp.arccos(jnp.clip(f, -1.0, 1.0)), accept

    def body(state):
        key, theta, done = state
        key, k = jax.random.split(key)
        new, accept = proposal(k)
        return key, jnp.where(done, theta, new), done | accept

    _, theta, _ = jax.lax.while_loop(lambda s: ~jnp.all(s[2]), body,
                                     (key, jnp.zeros(shape), jnp.zeros(shape, bool)))
    return theta


class VonMises(Distribution):
    """Independent von Mises angles on ``[−π, π]`` with means ``loc`` and concentrations
    ``concentration`` (> 0): ``log p(θ) = κ cos(θ − μ) − log(2π I₀(κ))``; ``−inf`` outside
    ``[−π, π]`` (a base for flows on the torus)."""

    loc: Float[Array, " dim"]
    log_concentration: Float[Array, " dim"]
    shape: tuple[int, ...] = eqx.field(static=True)
    cond_shape: tuple[int, ...] | None = eqx.field(static=True, default=None)

    def __init__(self, loc=0.0, concentration=1.0):
        self.loc, self.log_concentration = _loc_and_log_scale(loc, concentration, "VonMises")
        self.shape, self.cond_shape = self.loc.shape, None

    def _log_prob(self, x, condition=None):
        kappa = jnp.exp(self.log_concentration)
        # log I₀(κ) = log(i0e(κ)) + κ: the scaled Bessel function keeps large κ finite
        per_angle = kappa * (jnp.cos(x - self.loc) - 1.0) - jnp.log(2 * math.pi * i0e(kappa))
        inside = jnp.all(jnp.abs(x) <= math.pi)
        return jnp.where(inside, jnp.sum(per_angle), -jnp.inf)

    def _sample(self, key, condition=None):
        theta = _von_mises_standard(key, jnp.exp(self.log_concentration), self.shape) + self.loc
        return jnp.mod(theta + math.pi, 2 * math.pi) - math.pi


class GaussianMixture(Distribution):
    """``Σₖ wₖ N(μₖ, diag σₖ²)`` over vectors: `means` ``(K, dim)``, `scales` ``(K, dim)`` (or
    anything broadcasting to it), `weights` ``(K,)`` (default equal; normalised)."""

    logits: Float[Array, " K"]
    means: Float[Array, "K dim"]
    log_scales: Float[Array, "K dim"]
    shape: tuple[int, ...] = eqx.field(static=True)
    cond_shape: tuple[int, ...] | None = eqx.field(static=True, default=None)

    def __init__(self, means, scales=1.0, weights=None):
        means = jnp.asarray(means, float)
        if means.ndim != 2 or means.shape[0] == 0:
            raise ValueError(f"GaussianMixture needs means of shape (K ≥ 1, dim); got {means.shape}")
        scales = jnp.broadcast_to(jnp.asarray(scales, float), means.shape)
        weights = jnp.full(means.shape[0], 1.0 / means.shape[0]) if weights is None else jnp.asarray(weights, float)
        if weights.shape != means.shape[:1] or not bool(jnp.all(weights > 0)):
            raise ValueError(f"weights must be {means.shape[0]} positive numbers; got {weights}")
        if not bool(jnp.all(scales > 0)):
            raise ValueError("GaussianMixture needs scales > 0")
        self.logits, self.means, self.log_scales = jnp.log(weights / jnp.sum(weights)), means, jnp.log(scales)
        self.shape, self.cond_shape = means.shape[1:], None

    def _component_log_probs(self, x):
        z = (x - self.means) * jnp.exp(-self.log_scales)
        return (-0.5 * jnp.sum(z**2, -1) - jnp.sum(self.log_scales, -1)
                - 0.5 * self.shape[0] * math.log(2 * math.pi))

    def _log_prob(self, x, condition=None):
        return logsumexp(jax.nn.log_softmax(self.logits) + self._component_log_probs(x))

    def _sample(self, key, condition=None):
        k_component, k_noise = jax.random.split(key)
        c = jax.random.categorical(k_component, self.logits)
        return self.means[c] + jnp.exp(self.log_scales[c]) * jax.random.normal(k_noise, self.shape)
