"""Rectified flow (Liu et al. 2023): reflow straightens a trained flow by retraining it on the
pairs ``(x₀, flow(x₀))`` it generates; distillation then fits a one-step sampler to those pairs.
Both train with :func:`geoflow.fit` on paired data of shape ``(n, 2, *event)``.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ..distributions import Transformed
from ..train import fit
from .cnf import ODEFlow
from .matching import velocity_regression, ode_flow_of
from .ode import fixed


@eqx.filter_jit
def _transport(model, x0):
    flow = ode_flow_of(model)
    return jax.vmap(flow.forward)(x0)


def reflow_pairs(model, key, n: int, batch_size: int = 8192):
    """``(n, 2, *event)`` pairs ``(x₀, x₁ = flow(x₀))`` with ``x₀`` drawn from the model's source."""
    x0 = model.base.sample(key, n)
    x1 = jnp.concatenate([_transport(model, x0[i : i + batch_size]) for i in range(0, n, batch_size)])
    return jnp.stack([x0, x1], axis=1)


class PairedFlowMatching(eqx.Module):
    """Flow matching on given pairs along straight lines: data ``(n, 2, *event)`` of
    ``(x₀, x₁)``; the target is ``x₁ − x₀`` at ``x_t = t x₁ + (1 − t) x₀``."""

    def data_shape(self, model):
        return (2, *model.shape)

    def __call__(self, model, pairs, condition, key):
        flow = ode_flow_of(model)
        x0, x1 = pairs[:, 0], pairs[:, 1]
        t = jax.random.uniform(key, (x0.shape[0],))
        tb = t.reshape(-1, *([1] * (x0.ndim - 1)))
        return velocity_regression(flow, t, tb * x1 + (1 - tb) * x0, x1 - x0, condition, None)


class OneStepDistillation(eqx.Module):
    """Fits ``x₀ + v(0, x₀) ≈ x₁`` on pairs, so that one Euler step samples (Liu et al. §3.3)."""

    def data_shape(self, model):
        return (2, *model.shape)

    def __call__(self, model, pairs, condition, key):
        flow = ode_flow_of(model)
        x0, x1 = pairs[:, 0], pairs[:, 1]
        return velocity_regression(flow, jnp.zeros(x0.shape[0]), x0, x1 - x0, condition, None)


def reflow(model, key, *, pairs: int = 20_000, rounds: int = 1, **fit_kwargs):
    """``rounds`` of reflow: each draws ``pairs`` pairs from the current model and retrains it on
    them (starting from its weights). Returns the model and the list of ``History``s."""
    histories = []
    for k in jax.random.split(key, rounds):
        k_pairs, k_fit = jax.random.split(k)
        data = reflow_pairs(model, k_pairs, pairs)
        model, history = fit(model, data, key=k_fit, loss=PairedFlowMatching(), **fit_kwargs)
        histories.append(history)
    return model, histories


class OneStepFlow(ODEFlow):
    """A distilled sampler ``x ↦ x + v(0, x)``: one Euler step of a field trained forward only.

    It samples; it has no inverse and no density. Nothing makes ``x + v(0, x)`` injective, and
    the reverse Euler step ``y − v(1, y)`` uses a velocity the distillation never trained, so
    ``inverse``, ``log_prob`` and ``sample_and_log_prob`` raise instead of returning numbers
    that mean nothing. The teacher (the model passed to :func:`distill`) keeps its exact density.
    """

    def __init__(self, field, manifold=None):
        super().__init__(field, fixed(1, "euler"), "exact", manifold)

    def integrate(self, x, condition=None, *, key=None, reverse: bool = False, log_det: bool = True,
                  penalties: bool = False):
        if reverse or log_det or penalties:
            raise ValueError("a distilled one-step model (OneStepFlow) only samples: its single Euler step was "
                             "trained forward and is not invertible in general, so it has no inverse, log_prob "
                             "or sample_and_log_prob; evaluate densities with the teacher model instead")
        return super().integrate(x, condition, key=key, log_det=False)

    def with_trace(self, trace: str) -> OneStepFlow:
        return self


def distill(model, key, *, pairs: int = 20_000, **fit_kwargs):
    """A one-step sampler distilled from ``model``: same field, trained on the model's pairs,
    integrating with a single Euler step (:class:`OneStepFlow`: it samples, and refuses
    ``inverse`` and ``log_prob``). Returns ``(one_step_model, history)``."""
    k_pairs, k_fit = jax.random.split(key)
    data = reflow_pairs(model, k_pairs, pairs)
    teacher = ode_flow_of(model)
    student = Transformed(model.base, OneStepFlow(teacher.field, teacher.manifold))
    return fit(student, data, key=k_fit, loss=OneStepDistillation(), **fit_kwargs)


def straightness(model, x0, steps: int = 100):
    """Liu et al.'s straightness ``E ∫₀¹ ‖(x₁ − x₀) − v(t, x_t)‖² dt`` along the model's own
    trajectories from ``x0`` (``(n, *event)``), with ``steps`` Euler steps. Zero for straight paths."""
    flow = ode_flow_of(model)
    ts = jnp.linspace(0.0, 1.0, steps + 1)

    def one(x):
        def step(xc, t):
            v = flow.field(t, xc)
            return xc + v / steps, (v, xc)

        x1, (vs, _) = jax.lax.scan(step, x, ts[:-1])
        return jnp.mean(jnp.sum(((x1 - x) - vs) ** 2, axis=-1))

    return jnp.mean(jax.vmap(one)(x0))
