"""MeanFlow (Geng et al. 2025): one-step generation trained from scratch by regressing the
*average* velocity ``u(x_t, t, s) = (1/(s − t)) ∫ₜˢ v(x_τ, τ) dτ`` of the straight
flow-matching path, so that ``x_s = x_t + (s − t) u(x_t, t, s)`` jumps along the flow.

Differentiating ``(s − t) u = ∫ₜˢ v`` in ``t`` gives the identity the loss uses,

    ``u(x_t, t, s) = v(x_t, t) + (s − t) d/dt u(x_t, t, s)``,  ``d/dt = v·∇ₓ + ∂ₜ``,

with the total derivative from one forward-mode product (``jax.jvp`` with tangent ``(v, 1)``)
and the right-hand side held fixed (stop-gradient). At ``s = t`` it is flow matching. Time runs
from the source (``t = 0``) to the data (``t = 1``); no density is defined, only samples.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ..distributions import Distribution, StandardNormal
from ..nn import MLP


class MeanFlow(eqx.Module):
    """An average-velocity network ``u(x, t, s) = MLP([x, t, s − t])`` on ``source`` (default a
    standard normal over ``(dim,)``); ``sample(key, n, steps=1)`` takes ``steps`` equal jumps."""

    mlp: MLP
    base: Distribution
    shape: tuple[int, ...] = eqx.field(static=True)
    cond_shape: None = eqx.field(static=True, default=None)

    def __init__(self, dim: int, *, key, width: int = 128, depth: int = 3, activation: str = "silu",
                 source: Distribution | None = None):
        self.base = StandardNormal(dim) if source is None else source
        if self.base.shape != (dim,):
            raise ValueError(f"the source's event shape {self.base.shape} is not ({dim},)")
        self.mlp = MLP(dim + 2, dim, width, depth, key=key, activation=activation)
        self.shape = (dim,)

    def average_velocity(self, x, t, s):
        """``u(x, t, s)`` ``(dim,)`` for one point ``x`` and times ``t ≤ s``."""
        return self.mlp(jnp.concatenate([x, jnp.stack([t, s - t]).astype(x.dtype)]))

    def sample(self, key, n: int, *, steps: int = 1):
        """``n`` samples ``(n, dim)`` by ``steps`` jumps ``x ← x + h u(x, kh, (k + 1)h)``."""
        if int(steps) < 1:
            raise ValueError(f"steps must be positive, got {steps}")
        return _jump(self, self.base.sample(key, n), int(steps))


@eqx.filter_jit
def _jump(model: MeanFlow, x, steps: int):
    h = 1.0 / steps

    def one(x):
        def step(x, k):
            t = k * h
            return x + h * model.average_velocity(x, t, t + h), None

        return jax.lax.scan(step, x, jnp.arange(steps, dtype=x.dtype))[0]

    return jax.vmap(one)(x)


class MeanFlowLoss(eqx.Module):
    """The MeanFlow regression ``w ‖u(x_t, t, s) − sg(v + (s − t)(v·∇ₓu + ∂ₜu))‖²`` on the
    straight path ``x_t = (1 − t) x₀ + t x₁`` (``v = x₁ − x₀``, independent coupling).

    ``(t, s)`` are two uniform times in increasing order; in a fraction ``1 − jump_fraction`` of
    the examples ``s = t`` (plain flow matching; the paper's best mix keeps 25% jumps). The
    adaptive weight ``w = 1/(sg(‖error‖²) + 10⁻³)^power`` (``power = 1``: the paper's) turns the
    squared error into roughly its square root, robust to the jumps' large early errors."""

    jump_fraction: float = eqx.field(static=True, default=0.25)
    power: float = eqx.field(static=True, default=1.0)

    def __check_init__(self):
        if not 0.0 <= self.jump_fraction <= 1.0:
            raise ValueError(f"jump_fraction must be in [0, 1], got {self.jump_fraction}")
        if not self.power >= 0.0:
            raise ValueError(f"power must be non-negative, got {self.power}")

    def __call__(self, model: MeanFlow, x1, condition, key):
        k_src, k_t, k_s, k_jump = jax.random.split(key, 4)
        n = x1.shape[0]
        x0 = jax.lax.stop_gradient(model.base.sample(k_src, n))
        a, b = jax.random.uniform(k_t, (n,)), jax.random.uniform(k_s, (n,))
        t, s = jnp.minimum(a, b), jnp.maximum(a, b)
        s = jnp.where(jax.random.bernoulli(k_jump, self.jump_fraction, (n,)), s, t)
        xt = (1 - t)[:, None] * x0 + t[:, None] * x1
        v = x1 - x0

        def one(x, ti, si, vi):
            u, du_dt = jax.jvp(lambda xx, tt: model.average_velocity(xx, tt, si), (x, ti), (vi, jnp.ones_like(ti)))
            return u, vi + (si - ti) * du_dt

        u, target = jax.vmap(one)(xt, t, s, v)
        squared = jnp.sum((u - jax.lax.stop_gradient(target)) ** 2, -1)
        weight = 1.0 / (jax.lax.stop_gradient(squared) + 1e-3) ** self.power
        return jnp.mean(weight * squared)
