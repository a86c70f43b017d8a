"""Riemannian flow matching (Chen & Lipman, ICLR 2024) with geodesic conditional paths.

A model is ``Transformed(prior, ODEFlow(field, manifold=M))`` — the core's continuous flow with
a manifold — so sampling, exact ``log_prob`` (Riemannian divergence along the trajectory plus
the prior's log-density) and ``geoflow.fit`` are the Euclidean code, not a copy of it.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from geoflow.continuous import ODEFlow, ODESolver, ode_flow_of
from geoflow.continuous.paths import CondOT, Scheduler
from geoflow.distributions import Distribution, Transformed

from .base import Manifold
from .distributions import UniformOn
from .fields import ManifoldMLP


def draw_times(key, n: int, power: float = 1.0):
    """``n`` times ``t = 1 − (1 − u)^power``, ``u`` uniform on [0, 1): density
    ``(1 − t)^{1/power − 1} / power`` on [0, 1); ``power = 1`` is the uniform draw itself."""
    u = jax.random.uniform(key, (n,))
    return u if power == 1.0 else 1.0 - (1.0 - u) ** power


class GeodesicFlowMatching(eqx.Module):
    """``E ‖v(t, x_t) − ẋ_t‖²_g`` along ``x_t = exp_{x₀}(α_t log_{x₀} x₁)``, ``x₀`` from the
    model's prior, ``α_t`` from `scheduler` (the core's schedulers; linear by default). The
    target ``ẋ_t`` is ``jax.jvp`` of the geodesic in ``t``, so every manifold gets it for free.

    `time_power` ``p`` draws ``t = 1 − (1 − u)^p``, ``u`` uniform: ``p = 1`` (default) is uniform;
    ``p > 1`` puts more of the batch near the data end (a fraction ``ε^{1/p}`` within ``ε`` of
    ``t = 1``, against ``ε``), where a field must contract onto sharp modes. The minimiser is the
    same marginal field for any ``p``; only where the network spends its accuracy changes.
    """

    scheduler: Scheduler = eqx.field(default_factory=CondOT)
    time_power: float = eqx.field(static=True, default=1.0)

    def __check_init__(self):
        if not 0.0 < self.time_power < float("inf"):
            raise ValueError(f"time_power must be a positive number (t = 1 − (1 − u)^time_power); got {self.time_power}")

    def check_data(self, model, x):
        """Training points in the manifold's canonical coordinates (torus angles wrapped), or a
        clear error for points off the manifold (``fit`` calls this once, before training)."""
        manifold = ode_flow_of(model).manifold
        if manifold is None:
            raise ValueError("GeodesicFlowMatching needs an ODEFlow on a manifold; use FlowMatching on ℝⁿ")
        return np.asarray(manifold.check(jnp.asarray(x, jnp.float32), "training data"))

    def __call__(self, model, x1, condition, key):
        flow = ode_flow_of(model)
        manifold = flow.manifold
        if manifold is None:
            raise ValueError("GeodesicFlowMatching needs an ODEFlow on a manifold; use FlowMatching on ℝⁿ")
        k_src, k_t = jax.random.split(key)
        n = x1.shape[0]
        x0 = jax.lax.stop_gradient(model.base.sample(k_src, n))
        t = draw_times(k_t, n, self.time_power)

        def one(ti, a, b, c):
            log_ab = manifold.log(a, b)
            xt, ut = jax.jvp(lambda s: manifold.exp(a, self.scheduler(s)[0] * log_ab), (ti,), (jnp.ones_like(ti),))
            d = flow.velocity(ti, xt, c) - manifold.to_tangent(xt, ut)
            return manifold.inner(xt, d, d)

        cond = condition if condition is not None else jnp.zeros((n, 0))
        per_example = jax.vmap(lambda ti, a, b, c: one(ti, a, b, None if condition is None else c))(t, x0, x1, cond)
        return jnp.mean(per_example)


def rfm(key, manifold: Manifold, *, prior: Distribution | None = None, width: int = 256, depth: int = 3,
        activation: str = "silu", time_embedding: int = 0, cond_dim: int | None = None,
        fourier_features: int = 0, fourier_scale: float = 100.0,
        solver: ODESolver | None = None, trace: str = "exact") -> Transformed:
    """A Riemannian flow-matching model on `manifold` with `prior` (default: uniform).

    Train with ``geoflow.fit(model, data, loss=GeodesicFlowMatching(), ...)``; the field is a
    :class:`ManifoldMLP` (`width` … `fourier_scale`); `solver` and `trace` are those of
    :class:`geoflow.continuous.ODEFlow`.
    """
    prior = UniformOn(manifold) if prior is None else prior
    field = ManifoldMLP(manifold, key=key, width=width, depth=depth, activation=activation,
                        time_embedding=time_embedding, cond_dim=cond_dim, fourier_features=fourier_features,
                        fourier_scale=fourier_scale)
    return Transformed(prior, ODEFlow(field, ODESolver() if solver is None else solver, trace, manifold))



RIEMANNIAN_METHODS = ("euler", "midpoint", "rk4")


def riemannian_sample(model: Transformed, key, n: int, steps: int, *, method: str = "euler", t_end: float = 1.0):
    """``n`` samples ``(n, *shape)`` of an unconditional manifold flow ``model`` by ``steps``
    fixed steps from ``t = 0`` to ``t_end`` (the state at ``t_end``; 1: the samples) that keep
    every iterate, and every point the field is evaluated at, on the manifold.

    ``method``: ``"euler"``, the geodesic step ``x ← exp_x(h v(t, x))`` (first order; exact for
    a constant body velocity); ``"midpoint"`` and ``"rk4"``, the explicit Runge–Kutta methods
    with each stage point and each step's end projected onto the manifold (projection methods
    keep the order of the underlying method, 2 and 4: Hairer, Lubich & Wanner, *Geometric
    Numerical Integration*, IV.4). The model's own ODE solver takes ambient steps projected
    only at the end, which leave the manifold by ``O(h²|v|²)`` a step and feed the field points
    off it (``benchmarks/riemannian_solvers.py`` measures both)."""
    if int(steps) < 1:
        raise ValueError(f"steps must be a positive number of steps, got {steps}")
    if not 0.0 < t_end <= 1.0:
        raise ValueError(f"t_end must lie in (0, 1], got {t_end}")
    if method not in RIEMANNIAN_METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {RIEMANNIAN_METHODS}")
    flow = ode_flow_of(model)
    if flow.manifold is None:
        raise ValueError("riemannian_sample needs a flow on a manifold (ODEFlow(..., manifold=M))")
    return _riemannian_steps(flow, model.base.sample(key, n), int(steps), float(t_end), method)


def riemannian_step(flow: ODEFlow, x, t, h, method: str):
    """One step of ``method`` (:func:`riemannian_sample`) from ``x`` at time ``t`` of size ``h``."""
    m, v = flow.manifold, flow.velocity
    k1 = v(t, x)
    if method == "euler":
        return m.proj(m.exp(x, h * k1))
    if method == "midpoint":
        return m.proj(x + h * v(t + 0.5 * h, m.proj(x + 0.5 * h * k1)))
    k2 = v(t + 0.5 * h, m.proj(x + 0.5 * h * k1))
    k3 = v(t + 0.5 * h, m.proj(x + 0.5 * h * k2))
    k4 = v(t + h, m.proj(x + h * k3))
    return m.proj(x + h * (k1 + 2 * k2 + 2 * k3 + k4) / 6)


@eqx.filter_jit
def _riemannian_steps(flow: ODEFlow, x, steps: int, t_end: float, method: str):
    h = t_end / steps

    def one(x):
        def step(x, k):
            return riemannian_step(flow, x, k * h, h, method), None

        return jax.lax.scan(step, x, jnp.arange(steps, dtype=x.dtype))[0]

    return jax.vmap(one)(x)
