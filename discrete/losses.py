"""Discrete flow-matching losses for ``geoflow.fit``: ``loss(model, x1, condition, key)``."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .checks import check_tokens
from .model import generalized_kl

OBJECTIVES = ("kl", "ce")


class DiscreteFlowMatching(eqx.Module):
    """The mean over positions, times ``t ~ U(0, 1)`` and ``x_t ~ p_t(· | x₁)`` of

    - ``"kl"`` (default): Gat et al.'s generalized KL — its sum over positions is minus the ELBO,
      so training on it maximises the bound that :meth:`DiscreteFlow.elbo` reports;
    - ``"ce"``: the cross-entropy ``−log p_θ(x₁ | x_t)`` at every position.

    `condition_dropout`: the probability of replacing the context by the null context (for
    classifier-free guidance).
    """

    objective: str = eqx.field(static=True, default="kl")
    condition_dropout: float = eqx.field(static=True, default=0.0)

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; expected one of {OBJECTIVES}")

    def data_shape(self, model):
        return (model.length,)

    def check_data(self, model, x):
        """Tokens in range and of the model's length, checked before training starts."""
        return check_tokens(x, model.vocab_size, model.length, "training data")

    def __call__(self, model, x1, condition, key):
        x1 = x1.astype(jnp.int32)
        n = x1.shape[0]
        k_t, k_x, k_keep = jax.random.split(key, 3)
        t = jax.random.uniform(k_t, (n,), maxval=1.0 - 1e-3)  # the weight κ̇/(1−κ) stays ≤ 1000
        xt = jax.vmap(model.path.sample_xt)(jax.random.split(k_x, n), x1, t)
        keep = (jax.random.uniform(k_keep, (n,)) >= self.condition_dropout).astype(jnp.float32)

        def one(xt_i, t_i, x1_i, keep_i, c_i):
            logits = model.logits(xt_i, t_i, c_i, None if c_i is None else keep_i)
            if self.objective == "ce":
                return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits, -1), x1_i[:, None], 1))
            return jnp.mean(generalized_kl(model.path, logits, x1_i, xt_i, t_i))

        if condition is None:
            per = jax.vmap(lambda a, b, c, d: one(a, b, c, d, None))(xt, t, x1, keep)
        else:
            per = jax.vmap(one)(xt, t, x1, keep, condition)
        return jnp.mean(per)
