"""Variational inference: fitting a flow ``q`` to an unnormalized density ``p̃`` by minimising
``KL(q ‖ p)`` — ``fit(model, None, loss=ElboLoss(log_density))`` — and the importance-weighted
diagnostics of the result (effective sample size, the log-evidence with its standard error).

``log_density(x)`` takes one point of the model's event shape and returns a scalar; it need
not be normalised (its normaliser ``Z`` is what :func:`importance_diagnostics` estimates).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp


class ElboLoss(eqx.Module):
    """The negative evidence lower bound ``E_q[log q(x) − log p̃(x)]`` by ``num_samples``
    reparameterised draws of the model per step (the model samples, ``log_density`` scores).

    ``stick_the_landing=True`` drops the score term ``∇_θ log q_θ(x)|_x`` (Roeder et al. 2017):
    the gradient flows only through the samples, so it is exactly zero for every draw once
    ``q = p`` — lower variance near the optimum, the same expectation. The loss needs no data:
    pass ``data=None`` to :func:`geoflow.fit` (it declares zero-width examples)."""

    log_density: Callable = eqx.field(static=True)
    num_samples: int = eqx.field(static=True, default=16)
    stick_the_landing: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        if not callable(self.log_density):
            raise ValueError(f"log_density must be a function of one point; got {type(self.log_density).__name__}")
        if int(self.num_samples) < 1:
            raise ValueError(f"num_samples must be positive; got {self.num_samples}")

    def data_shape(self, model):
        return (0,)  # no data: fit feeds placeholder rows the loss ignores

    def __call__(self, model, x, condition, key):
        if self.stick_the_landing:
            samples = model.sample(key, self.num_samples)
            params, static = eqx.partition(model, eqx.is_inexact_array)
            log_q = eqx.combine(jax.lax.stop_gradient(params), static).log_prob(samples)
        else:
            samples, log_q = model.sample_and_log_prob(key, self.num_samples)
        return jnp.mean(log_q - jax.vmap(self.log_density)(samples))


def importance_diagnostics(model, log_density: Callable, key, num_samples: int = 10_000) -> dict:
    """Importance sampling with ``q = model`` for ``p̃ = exp(log_density)``, from ``num_samples``
    draws ``xᵢ`` and weights ``wᵢ = p̃(xᵢ)/q(xᵢ)``:

    - ``log_evidence``: ``log Ẑ = log mean(w)``, and ``log_evidence_se``, its standard error by
      the delta method (``std(w)/(√n mean(w))``);
    - ``ess``: Kish's effective sample size ``(Σw)²/Σw²``, and ``ess_fraction = ess/n``;
    - ``elbo``: ``mean(log w)``, a lower bound on ``log Z`` in expectation.
    """
    x, log_q = model.sample_and_log_prob(key, num_samples)
    log_w = jax.vmap(log_density)(x) - log_q
    log_z = logsumexp(log_w) - math.log(num_samples)
    w = jnp.exp(log_w - log_z)  # weights normalised to mean 1
    ess = float(jnp.sum(w) ** 2 / jnp.sum(w**2))
    return {"log_evidence": float(log_z), "log_evidence_se": float(jnp.std(w) / math.sqrt(num_samples)),
            "ess": ess, "ess_fraction": ess / num_samples, "elbo": float(jnp.mean(log_w)), "samples": num_samples}
