"""Continuous normalizing flows: :class:`ODEFlow`, a bijection defined by a vector field, with
its log-determinant from the augmented ODE (Chen et al. 2018; FFJORD, Grathwohl et al. 2019),
and RNODE's regularised likelihood (Finlay et al. 2020).

Direction: ``forward`` integrates ``dx/dt = v(t, x, c)`` from ``t = 0`` (latent) to ``t = 1``
(data), the flow-matching convention, so a flow-matching model *is* an ``ODEFlow`` on a source
distribution and gets ``log_prob`` from the same code.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from ..bijections import Bijection, Chain
from ..bijections.base import call_with_key
from ..distributions import StandardNormal, Transformed
from .divergence import exact_divergence, hutchinson_divergence, probe, probe_kind
from .fields import ConcatSquashMLP, TimeMLP
from .ode import ODESolver


class ODEResult(NamedTuple):
    """One solve: the end point, ``log|det|`` of the map applied, RNODE's integrals
    ``∫‖v‖² dt`` and ``∫‖∂v/∂x‖²_F dt`` (zero unless asked for), and the cost."""

    y: Array
    log_det: Array
    kinetic: Array
    jacobian: Array
    num_steps: Array
    nfe: Array


# The dynamics are module-level functions of ``args = (flow, condition[, probe])`` rather
# than closures: diffrax's back-solve adjoint differentiates only through ``args``.
def _velocity(t, z, args):
    flow, condition = args
    return flow.velocity(t, z, condition)


def _divergence(t, z, args):
    flow, condition, eps = args
    f = lambda v: flow.velocity(t, v, condition)
    if flow.manifold is None:
        return exact_divergence(f, z) if eps is None else hutchinson_divergence(f, z, eps)
    # on an embedded manifold div v = tr(P ∂v/∂x) with P the tangent projection at z: exactly,
    # over an orthonormal tangent basis; a Hutchinson probe projected to the tangent space has
    # E[εεᵀ] = P and estimates the same
    if eps is None:
        return exact_divergence(f, z, flow.manifold.tangent_basis(z))
    return hutchinson_divergence(f, z, flow.manifold.to_tangent(z, eps))


def _augmented(t, state, args):
    v, div, _ = _divergence(t, state[0], args)
    zero = jnp.zeros((), div.dtype)
    return v, div, zero, zero


def _augmented_with_penalties(t, state, args):
    v, div, frob = _divergence(t, state[0], args)
    return v, div, jnp.sum(v**2), frob


class ODEFlow(Bijection):
    """The time-1 map of ``dx/dt = field(t, x, condition)``.

    **Arguments:**
    - `field`: a vector field module (``field(t, x, condition) -> dx/dt`` for one example,
      with ``shape`` and ``cond_shape``), e.g. :class:`~geoflow.continuous.TimeMLP`.
    - `solver`: an :class:`~geoflow.continuous.ODESolver` (solver, steps or tolerances, step
      cap, adjoint).
    - `trace`: ``"exact"`` (Jacobian trace, for small dimension), ``"hutchinson"`` /
      ``"hutchinson-gaussian"`` or ``"hutchinson-rademacher"`` (one probe per solve, held
      fixed along it; the methods then need ``key=``).
    - `manifold`: ``None`` for ℝⁿ, or an embedded manifold (``to_tangent``, ``proj``,
      ``tangent_basis``; see the ``manifolds`` package): the velocity is projected to the
      tangent space, the divergence is the Riemannian one and the end point is projected back
      onto the manifold. ℝⁿ is the flat special case of the same code.
    """

    field: eqx.Module
    solver: ODESolver
    manifold: eqx.Module | None
    trace: str = eqx.field(static=True)
    shape: tuple[int, ...] = eqx.field(static=True)
    cond_shape: tuple[int, ...] | None = eqx.field(static=True)

    def __init__(self, field, solver: ODESolver | None = None, trace: str = "exact", manifold=None):
        probe_kind(trace)  # validates the name
        self.field = field
        self.solver = ODESolver() if solver is None else solver
        self.trace = trace
        self.manifold = manifold
        self.shape = tuple(field.shape)
        self.cond_shape = field.cond_shape

    def velocity(self, t, x, condition=None):
        """The field at ``(t, x)``, projected to the tangent space on a manifold."""
        v = self.field(t, x, condition)
        return v if self.manifold is None else self.manifold.to_tangent(x, v)

    def _on_manifold(self, y):
        return y if self.manifold is None else self.manifold.proj(y)

    @property
    def needs_key(self) -> bool:
        return self.trace != "exact"

    def with_trace(self, trace: str) -> ODEFlow:
        """The same flow with another divergence (e.g. exact for evaluation after Hutchinson training)."""
        return ODEFlow(self.field, self.solver, trace, self.manifold)

    def integrate(self, x, condition=None, *, key=None, reverse: bool = False, log_det: bool = True,
                  penalties: bool = False) -> ODEResult:
        """Solve from ``t = 0`` to ``1`` (``reverse``: from ``1`` to ``0``) for one example.

        ``log_det`` adds the divergence to the state (needs ``key`` for a Hutchinson trace);
        ``penalties`` adds RNODE's kinetic-energy and Jacobian-norm integrals.
        """
        t0, t1 = (1.0, 0.0) if reverse else (0.0, 1.0)
        zero = jnp.zeros((), x.dtype)
        if self.manifold is not None:
            x = self.manifold.check(x, "x")
        if not (log_det or penalties):
            y, steps = self.solver.solve(_velocity, x, t0, t1, (self, condition))
            return ODEResult(self._on_manifold(y), zero, zero, zero, steps, self.solver.nfe(steps))
        kind = probe_kind(self.trace)
        if kind is not None and key is None:
            raise ValueError("this ODEFlow uses a Hutchinson trace; pass key=")
        eps = None if kind is None else probe(key, x.shape, kind)
        dynamics = _augmented_with_penalties if penalties else _augmented
        (y, logdet, kinetic, frob), steps = self.solver.solve(
            dynamics, (x, zero, zero, zero), t0, t1, (self, condition, eps))
        # integrating backwards accumulates -∫; the penalties are integrals over [0, 1] either way
        return ODEResult(self._on_manifold(y), logdet, jnp.abs(kinetic), jnp.abs(frob), steps,
                         self.solver.nfe(steps))

    def trajectory(self, x, ts, condition=None) -> Array:
        """States at times ``ts`` (1-D, increasing or decreasing) for one example: ``(len(ts), *shape)``."""
        ys, _ = self.solver.solve(_velocity, x, ts[0], ts[-1], (self, condition), save_ts=ts)
        return ys if self.manifold is None else jax.vmap(self.manifold.proj)(ys)

    def forward_and_log_det(self, x, condition=None, *, key=None):
        r = self.integrate(x, condition, key=key)
        return r.y, r.log_det

    def inverse_and_log_det(self, y, condition=None, *, key=None):
        r = self.integrate(y, condition, key=key, reverse=True)
        return r.y, r.log_det

    def forward(self, x, condition=None, *, key=None):
        return self.integrate(x, condition, log_det=False).y

    def inverse(self, y, condition=None, *, key=None):
        return self.integrate(y, condition, reverse=True, log_det=False).y


FIELDS = {"concatsquash": ConcatSquashMLP, "mlp": TimeMLP}


def make_field(kind: str, dim: int, *, key, cond_dim=None, **kw):
    """A vector field by name: ``"concatsquash"`` or ``"mlp"``."""
    try:
        cls = FIELDS[kind]
    except KeyError:
        raise ValueError(f"unknown vector field {kind!r}; expected one of {sorted(FIELDS)}") from None
    return cls(dim, key=key, cond_dim=cond_dim, **kw)


def cnf(key, dim: int, *, blocks: int = 1, field: str = "concatsquash", width: int = 64, depth: int = 3,
        trace: str = "exact", solver: ODESolver | None = None, cond_dim: int | None = None,
        **field_kw) -> Transformed:
    """An FFJORD-style CNF on a standard normal: ``blocks`` ODE blocks in sequence.

    **Arguments:** `field` (``"concatsquash"`` or ``"mlp"``), `width`, `depth` and further
    field arguments; `trace` and `solver` as in :class:`ODEFlow`; `cond_dim` for a context.
    """
    solver = ODESolver() if solver is None else solver
    keys = jax.random.split(key, blocks)
    flows = [ODEFlow(make_field(field, dim, key=k, cond_dim=cond_dim, width=width, depth=depth, **field_kw),
                     solver, trace) for k in keys]
    return Transformed(StandardNormal(dim), flows[0] if blocks == 1 else Chain(flows))


def _inverse_with_penalties(bijection, y, condition, key):
    """Data → latent through ``bijection`` with RNODE's penalties summed over its ODE blocks."""
    zero = jnp.zeros((), y.dtype)
    if isinstance(bijection, ODEFlow):
        r = bijection.integrate(y, condition, key=key, reverse=True, penalties=True)
        return r.y, r.log_det, r.kinetic, r.jacobian
    if isinstance(bijection, Chain):
        keys = jax.random.split(key, len(bijection.bijections))
        total = (zero, zero, zero)
        for b, k in zip(reversed(bijection.bijections), keys):
            y, *parts = _inverse_with_penalties(b, y, condition, k)
            total = tuple(a + p for a, p in zip(total, parts))
        return (y, *total)
    y, ld = call_with_key(bijection, "inverse_and_log_det", y, condition, key)
    return y, ld, zero, zero


class RegularizedLikelihood(eqx.Module):
    """RNODE's loss (Finlay et al. 2020): NLL + ``kinetic``·∫‖v‖²dt + ``jacobian``·∫‖∂v/∂x‖²_F dt,
    per example, for a CNF (a ``Transformed`` whose bijection is an ``ODEFlow`` or a ``Chain``
    containing them). Pass it to ``geoflow.fit(loss=...)``."""

    kinetic: float = eqx.field(static=True, default=0.01)
    jacobian: float = eqx.field(static=True, default=0.01)

    def __call__(self, model, x, condition, key):
        keys = jax.random.split(key, x.shape[0])

        def one(xi, ci, ki):
            z, ld, kin, jac = _inverse_with_penalties(model.bijection, xi, ci, ki)
            return -(model.base._log_prob(z, None) + ld) + self.kinetic * kin + self.jacobian * jac

        return jnp.mean(jax.vmap(one)(x, condition, keys))
