"""Sampling a flow-matching model on a schedule it was not trained on, exactly.

A field trained on the affine path ``x_t = α_t x₁ + σ_t x₀`` (Gaussian source) knows every
path of the same family: the path of another scheduler ``(ᾱ, σ̄)`` at time ``r`` is the trained
one at the time ``t_r`` of equal signal-to-noise ratio, scaled, ``x̄_r = s_r x_{t_r}`` with
``ᾱ_r/σ̄_r = α_t/σ_t`` and ``s_r = σ̄_r/σ_t = ᾱ_r/α_t``. Its marginal velocity is therefore

    ``ū(r, x) = (ṡ_r/s_r) x + s_r ṫ_r u(t_r, x/s_r)``

(Pokle et al. 2023; flow_matching's schedule-transformed model). Samples keep their
distribution; what changes is the path, hence how well a fixed-step solver follows it.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .paths import Scheduler


def _signal_fraction(scheduler: Scheduler, t):
    """``κ = α/(α + σ)``, increasing from 0 (source) to 1 (data) with the signal-to-noise ratio
    ``α/σ`` and finite at both ends, where the ratio is not."""
    a, s = scheduler(t)
    return a / (a + s)


def _time_of_fraction(scheduler: Scheduler, kappa, iterations: int = 40):
    """The ``t`` in ``[0, 1]`` with ``κ(t) = kappa``: bisection for the value (40 halvings,
    below float32's resolution), and the implicit derivative ``dt = dκ / κ′(t)`` through one
    Newton step that moves nothing."""
    def halve(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        below = _signal_fraction(scheduler, mid) < kappa
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    zero = jnp.zeros_like(kappa)
    lo, hi = jax.lax.fori_loop(0, iterations, halve, (zero, zero + 1.0))
    t = jax.lax.stop_gradient(0.5 * (lo + hi))
    fraction, slope = jax.jvp(lambda u: _signal_fraction(scheduler, u), (t,), (jnp.ones_like(t),))
    residual = jax.lax.stop_gradient(fraction) - kappa
    return t - (residual - jax.lax.stop_gradient(residual)) / jax.lax.stop_gradient(slope)


class ScheduleChanged(eqx.Module):
    """The velocity field ``field``, trained on the affine path of ``trained``, as the field of
    the path of ``target`` (module docstring). Drop-in for the field of an
    :class:`~geoflow.continuous.ODEFlow`; :func:`with_schedule` does that for a model."""

    field: eqx.Module
    trained: Scheduler
    target: Scheduler
    shape: tuple[int, ...] = eqx.field(static=True)
    cond_shape: tuple[int, ...] | None = eqx.field(static=True)

    def __init__(self, field, trained: Scheduler, target: Scheduler):
        self.field, self.trained, self.target = field, trained, target
        self.shape, self.cond_shape = tuple(field.shape), field.cond_shape

    def time_and_scale(self, r):
        """``(t_r, s_r)``: the trained path's time and the scale that carry it to the target's at ``r``."""
        t = _time_of_fraction(self.trained, _signal_fraction(self.target, r))
        a_new, s_new = self.target(r)
        a_old, s_old = self.trained(t)
        # σ̄/σ and ᾱ/α are equal; each is well conditioned where its denominator is large
        return t, jnp.where(a_new > s_new, a_new / a_old, s_new / s_old)

    def __call__(self, r, x, condition=None, **kw):
        r = jnp.asarray(r, x.dtype)
        (t, s), (dt, ds) = jax.jvp(self.time_and_scale, (r,), (jnp.ones_like(r),))
        return (ds / s) * x + s * dt * self.field(t, x / s, condition, **kw)


def with_schedule(model, trained: Scheduler, target: Scheduler):
    """``model`` (a flow-matching model, trained on the path of ``trained``) sampling along the
    path of ``target``: the same distribution, another path (e.g. a model trained on the
    straight ``CondOT`` path sampled along ``Cosine``'s)."""
    from .matching import ode_flow_of

    field = ode_flow_of(model).field
    return eqx.tree_at(lambda m: m.bijection.field, model, ScheduleChanged(field, trained, target))
