"""Flow matching (Lipman et al. 2023; Tong et al. 2024; Liu et al. 2023) on top of
:class:`~geoflow.continuous.ODEFlow`.

A flow-matching model is ``Transformed(source, ODEFlow(field))``: sampling integrates the
learned field, ``log_prob`` runs the CNF machinery (exact or Hutchinson trace). Training is
``geoflow.fit(model, data, loss=FlowMatching(...))``. With a sample set as the source
(:class:`EmpiricalSource`) the model transports one data set to another and has no density.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ..distributions import Distribution, StandardNormal, Transformed
from ..nn import Frozen, trainable
from .cnf import ODEFlow, make_field
from .couplings import COUPLINGS, couple, exact_pairing
from .ode import ODESolver
from .paths import AffinePath, BridgePath, CondOT


class EmpiricalSource(Distribution):
    """The uniform distribution over a fixed sample set ``(n, *shape)``: a source for
    data-to-data transport. It can be sampled but has no density."""

    samples: Frozen
    shape: tuple[int, ...] = eqx.field(static=True)
    cond_shape: tuple[int, ...] | None = eqx.field(static=True, default=None)

    def __init__(self, samples):
        samples = jnp.asarray(samples, jnp.float32)
        if samples.ndim < 2 or samples.shape[0] == 0:
            raise ValueError(f"an empirical source needs samples of shape (n, *event), got {samples.shape}")
        if not bool(jnp.all(jnp.isfinite(samples))):
            raise ValueError("the source samples contain NaN or inf; expected finite values")
        self.samples = Frozen(samples)
        self.shape = tuple(samples.shape[1:])
        self.cond_shape = None

    def _log_prob(self, x, condition=None):
        raise ValueError("an empirical source (a sample set) has no density, so a data-to-data flow "
                         "has no log_prob; use a density source (e.g. a standard normal) for likelihoods")

    def _sample(self, key, condition=None):
        data = self.samples.value
        return data[jax.random.randint(key, (), 0, data.shape[0])]


def ode_flow_of(model) -> ODEFlow:
    """The :class:`ODEFlow` of a flow-matching model, or a clear error."""
    bijection = getattr(model, "bijection", None)
    if not isinstance(bijection, ODEFlow):
        raise ValueError("flow-matching losses train a Transformed(source, ODEFlow(field)) model, e.g. from "
                         f"geoflow.continuous.flow_matching(); got {type(model).__name__}")
    return bijection


def source_is_trained(model) -> bool:
    """Whether the source (``model.base``) has trainable parameters. Then its samples change
    within a chunk, and a loss must not pair them ahead of the steps in ``prepare``."""
    return bool(jax.tree.leaves(eqx.filter(model.base, trainable(model.base))))


def with_solver(model, solver: ODESolver):
    """The same model integrating with ``solver`` (e.g. ``fixed(20)`` for fast sampling)."""
    ode_flow_of(model)
    return eqx.tree_at(lambda m: m.bijection.solver, model, solver)


def flow_matching(key, dim: int, *, source=None, field: str = "mlp", width: int = 64, depth: int = 3,
                  activation: str = "selu", cond_dim: int | None = None, solver: ODESolver | None = None,
                  trace: str = "exact", **field_kw) -> Transformed:
    """A flow-matching model: a vector field (default Tong et al.'s MLP 64-64-64 SELU) on
    ``source`` (``None``: standard normal; an array ``(n, dim)``: that sample set).

    `solver` defaults to adaptive Dopri5-class integration (``ODESolver()``); `trace` is the
    divergence used by ``log_prob``.
    """
    base = StandardNormal(dim) if source is None else EmpiricalSource(source)
    if base.shape != (dim,):
        raise ValueError(f"source samples have event shape {base.shape}; expected ({dim},)")
    kw = dict(width=width, depth=depth, activation=activation, **field_kw)
    vf = make_field(field, dim, key=key, cond_dim=cond_dim, **kw)
    return Transformed(base, ODEFlow(vf, ODESolver() if solver is None else solver, trace))


def velocity_regression(flow: ODEFlow, t, xt, ut, condition, keep):
    """Mean over the batch of ``‖v(t, x_t, c) − u_t‖²`` (summed over the event)."""
    if condition is None:
        v = jax.vmap(lambda ti, xi: flow.field(ti, xi))(t, xt)
    else:
        v = jax.vmap(lambda ti, xi, ci, ki: flow.field(ti, xi, ci, keep=ki))(t, xt, condition, keep)
    return jnp.mean(jnp.sum((v - ut).reshape(v.shape[0], -1) ** 2, axis=-1))


class FlowMatching(eqx.Module):
    """The conditional flow-matching loss, ``loss(model, x1, condition, key)``.

    **Arguments:**
    - `path`: an :class:`AffinePath` (scheduler, optional σ smoothing) or a :class:`BridgePath`.
    - `coupling`: ``"independent"`` (I-CFM), ``"exact"`` (minibatch OT, OT-CFM) or
      ``"sinkhorn"`` (entropic OT with `epsilon`; SB-CFM with ``epsilon = 2σ²``).
    - `condition_dropout`: probability of training on the null context, for classifier-free
      guidance (:class:`~geoflow.continuous.Guided`).
    - `within_condition`: with the exact coupling, solve the minibatch OT within each
      condition (examples whose condition vectors are equal, e.g. one class), so that every
      condition's paths start from an unbiased share of the source
      (:func:`~geoflow.continuous.couplings.exact_pairing`).
    """

    path: eqx.Module = eqx.field(default_factory=AffinePath)
    coupling: str = eqx.field(static=True, default="independent")
    epsilon: float | None = eqx.field(static=True, default=None)
    condition_dropout: float = eqx.field(static=True, default=0.0)
    within_condition: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        if self.coupling not in COUPLINGS:
            raise ValueError(f"unknown coupling {self.coupling!r}; expected one of {COUPLINGS}")
        if self.within_condition and self.coupling != "exact":
            raise ValueError(f"within_condition pairs by exact OT per condition; it needs coupling='exact', got "
                             f"{self.coupling!r}")
        if not 0.0 <= self.condition_dropout < 1.0:
            raise ValueError(f"condition_dropout must be in [0, 1), got {self.condition_dropout}")

    def prepare(self, model, x1, condition, key):
        """The exact coupling's assignment for one step, ``(n,)`` indices into the source batch;
        ``None`` for the other couplings, or when the source has trainable parameters.

        It depends only on the data batch, the key and the (untrained) source, so
        :func:`geoflow.fit` solves a block of steps' assignments at once before its scan, on
        every host core, and passes each step its own as ``prepared``.
        """
        if self.coupling != "exact" or source_is_trained(model):
            return None
        k_src = jax.random.split(key, 5)[0]  # the same source batch as __call__ draws
        return exact_pairing(model.base.sample(k_src, x1.shape[0]), x1,
                             condition=condition if self.within_condition else None)

    def __call__(self, model, x1, condition, key, prepared=None):
        flow = ode_flow_of(model)
        if flow.manifold is not None:
            raise ValueError("FlowMatching regresses on straight Euclidean paths; on a manifold use "
                             "manifolds.GeodesicFlowMatching")
        k_src, k_pair, k_t, k_eps, k_drop = jax.random.split(key, 5)
        n = x1.shape[0]
        x0 = jax.lax.stop_gradient(model.base.sample(k_src, n))
        if prepared is not None:
            x0 = x0[prepared]
        elif self.within_condition:
            x0 = x0[exact_pairing(x0, x1, condition=condition)]
        else:
            x0 = couple(self.coupling, x0, x1, k_pair, self.epsilon)
        t = jax.random.uniform(k_t, (n,))
        eps = jax.random.normal(k_eps, x1.shape)
        xt, ut = jax.vmap(self.path.sample)(t, x0, x1, eps)
        keep = None if condition is None else jax.random.bernoulli(k_drop, 1 - self.condition_dropout, (n,))
        return velocity_regression(flow, t, xt, ut, condition, keep)


def cfm(kind: str = "i-cfm", sigma: float = 0.1) -> FlowMatching:
    """Tong et al.'s named variants: ``"i-cfm"``, ``"ot-cfm"`` (exact minibatch OT),
    ``"sb-cfm"`` (Brownian bridge and entropic OT with ε = 2σ²), ``"fm"`` (Lipman's path
    ``x_t = t x₁ + (1 − (1 − σ)t) x₀``) — each with smoothing ``sigma``."""
    if kind == "i-cfm":
        return FlowMatching(AffinePath(sigma=sigma))
    if kind == "ot-cfm":
        return FlowMatching(AffinePath(sigma=sigma), coupling="exact")
    if kind == "sb-cfm":
        return FlowMatching(BridgePath(sigma), coupling="sinkhorn", epsilon=2 * sigma**2)
    if kind == "fm":
        return FlowMatching(AffinePath(CondOT(sigma_min=sigma)))
    raise ValueError(f"unknown flow-matching variant {kind!r}; expected 'i-cfm', 'ot-cfm', 'sb-cfm' or 'fm'")
