"""Probability paths for flow matching, written for one example.

:class:`AffinePath` is ``x_t = α_t x₁ + σ_t x₀ (+ s·ε)`` with a scheduler giving ``(α_t, σ_t)``;
its regression target is ``u_t = α̇_t x₁ + σ̇_t x₀``. :class:`BridgePath` is the Brownian bridge
of the Schrödinger-bridge CFM (Tong et al. 2024). Time runs from the source (``t = 0``) to the
data (``t = 1``). Derivatives of the schedules come from ``jax.jvp``, so a new scheduler is one
function.
"""

from __future__ import annotations

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp


class Scheduler(eqx.Module):
    """``(α_t, σ_t)`` with ``α_0 ≈ 0, σ_0 ≈ 1`` (source) and ``α_1 = 1, σ_1 = 0`` (data)."""

    @abc.abstractmethod
    def __call__(self, t):
        """``(α_t, σ_t)``."""

    def with_derivatives(self, t):
        """``(α, σ, α̇, σ̇)`` at ``t``."""
        (a, s), (da, ds) = jax.jvp(self.__call__, (t,), (jnp.ones_like(t),))
        return a, s, da, ds

    def remaining_rate(self, t):
        """``α̇_t / (1 − α_t)``: the velocity at ``x_t`` of the path from ``x₀`` to ``x₁`` is this
        rate times the way left (``x₁ − x_t``, or a geodesic's log map), so a model that predicts
        ``x₁`` is turned into a field by it (infinite at ``t = 1``)."""
        a, _, da, _ = self.with_derivatives(t)
        return da / (1 - a)


class CondOT(Scheduler):
    """The conditional-OT (linear) schedule ``α = t, σ = 1 − (1 − σ_min) t`` (Lipman et al.
    2023); ``sigma_min = 0`` (default) is the straight line of rectified flow."""

    sigma_min: float = eqx.field(static=True, default=0.0)

    def __call__(self, t):
        return t, 1 - (1 - self.sigma_min) * t


class Polynomial(Scheduler):
    """``α = tⁿ, σ = 1 − tⁿ``."""

    power: float = eqx.field(static=True, default=2.0)

    def __call__(self, t):
        a = t**self.power
        return a, 1 - a


class VariancePreserving(Scheduler):
    """The variance-preserving (DDPM / score-SDE) schedule in flow-matching time:
    ``α = exp(−½ T(1 − t))``, ``σ = √(1 − α²)``, ``T(s) = β_min s + ½ (β_max − β_min) s²``."""

    beta_min: float = eqx.field(static=True, default=0.1)
    beta_max: float = eqx.field(static=True, default=20.0)

    def __call__(self, t):
        s = 1 - t
        a = jnp.exp(-0.5 * (self.beta_min * s + 0.5 * (self.beta_max - self.beta_min) * s**2))
        return a, jnp.sqrt(jnp.maximum(1 - a**2, 0.0))


class Cosine(Scheduler):
    """``α = sin(πt/2), σ = cos(πt/2)`` (variance preserving, Nichol & Dhariwal's shape)."""

    def __call__(self, t):
        return jnp.sin(0.5 * jnp.pi * t), jnp.cos(0.5 * jnp.pi * t)


class Exponential(Scheduler):
    """``α = (1 − e^{−rt}) / (1 − e^{−r})``, ``σ = 1 − α``: most of the way early (rate ``r``),
    as FrameFlow moves rotations faster than translations."""

    rate: float = eqx.field(static=True, default=10.0)

    def __call__(self, t):
        a = -jnp.expm1(-self.rate * t) / -math.expm1(-self.rate)
        return a, 1 - a

    def remaining_rate(self, t):
        # closed form: 1 − α_t loses its digits in float32 near t = 1
        return -self.rate / jnp.expm1(-self.rate * (1 - t))


SCHEDULERS = {"cond-ot": CondOT, "linear": CondOT, "polynomial": Polynomial,
              "vp": VariancePreserving, "cosine": Cosine, "exponential": Exponential}


class AffinePath(eqx.Module):
    """``x_t = α_t x₁ + σ_t x₀ + sigma·ε`` with target ``u_t = α̇_t x₁ + σ̇_t x₀``.

    ``sigma > 0`` is the constant smoothing of Tong et al.'s I-CFM / OT-CFM (their σ); the
    target does not depend on ε because the noise does not move with ``t``.
    """

    scheduler: Scheduler = eqx.field(default_factory=CondOT)
    sigma: float = eqx.field(static=True, default=0.0)

    def sample(self, t, x0, x1, eps):
        """``(x_t, u_t)`` for one example at time ``t`` (a scalar)."""
        a, s, da, ds = self.scheduler.with_derivatives(t)
        return a * x1 + s * x0 + self.sigma * eps, da * x1 + ds * x0

    # conversions between the parameterisations of the same (noise-free) path
    def velocity_from_x1(self, t, xt, x1):
        """The velocity given a prediction of the data point ``x₁`` (needs ``σ_t > 0``)."""
        a, s, da, ds = self.scheduler.with_derivatives(t)
        return da * x1 + ds * (xt - a * x1) / s

    def velocity_from_noise(self, t, xt, x0):
        """The velocity given a prediction of the source point ``x₀`` (needs ``α_t > 0``)."""
        a, s, da, ds = self.scheduler.with_derivatives(t)
        return da * (xt - s * x0) / a + ds * x0

    def x1_from_velocity(self, t, xt, v):
        a, s, da, ds = self.scheduler.with_derivatives(t)
        return (ds * xt - s * v) / (ds * a - s * da)

    def noise_from_velocity(self, t, xt, v):
        a, s, da, ds = self.scheduler.with_derivatives(t)
        return (da * xt - a * v) / (da * s - a * ds)


class BridgePath(eqx.Module):
    """The Brownian bridge ``x_t = t x₁ + (1 − t) x₀ + σ √(t(1 − t)) ε`` of SB-CFM, with the
    target ``u_t = x₁ − x₀ + σ (1 − 2t) / (2√(t(1 − t))) ε`` (= d/dt of ``x_t`` for fixed ε).
    Times are kept ``1e-4`` away from the ends, where the noise's speed is infinite."""

    sigma: float = eqx.field(static=True, default=1.0)

    def sample(self, t, x0, x1, eps):
        t = jnp.clip(t, 1e-4, 1 - 1e-4)
        root = jnp.sqrt(t * (1 - t))
        xt = t * x1 + (1 - t) * x0 + self.sigma * root * eps
        return xt, x1 - x0 + self.sigma * (1 - 2 * t) / (2 * root) * eps


def make_path(scheduler: str = "cond-ot", sigma: float = 0.0, **kw) -> AffinePath:
    """An affine path by scheduler name (``cond-ot``, ``polynomial``, ``vp``, ``cosine``)."""
    try:
        cls = SCHEDULERS[scheduler]
    except KeyError:
        raise ValueError(f"unknown scheduler {scheduler!r}; expected one of {sorted(SCHEDULERS)}") from None
    return AffinePath(cls(**kw), sigma)
