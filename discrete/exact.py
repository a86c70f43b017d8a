"""The exact posterior denoiser of a known distribution on a small set of sequences: an oracle
for tests and for checking samplers and bounds (``DiscreteFlow(path, ExactDenoiser(...), L)``)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from .paths import MixturePath


class ExactDenoiser(eqx.Module):
    """``p(x₁ⁱ | x_t)`` for ``x₁`` drawn from ``probs`` over the sequences ``support``.

    **Arguments:** `path` (the mixture path the model uses), `support` ``(N, L)`` tokens,
    `probs` ``(N,)`` summing to one. The posterior over the support is
    ``p(x₁) Πᵢ p_t(x_tⁱ | x₁ⁱ)`` normalised, then marginalised per position.
    """

    path: MixturePath
    support: Int[Array, "N L"]
    log_probs: Float[Array, " N"]
    cond_shape: None = eqx.field(static=True, default=None)

    def __init__(self, path: MixturePath, support, probs):
        self.path = path
        self.support = jnp.asarray(support, jnp.int32)
        self.log_probs = jnp.log(jnp.asarray(probs, jnp.float32))
        self.cond_shape = None

    def __call__(self, x: Int[Array, " L"], t, condition=None, keep=None) -> Float[Array, "L V"]:
        p_t = self.path.conditional_probs(self.support, t)  # (N, L, S): p_t(· | x₁ⁱ)
        likelihood = jnp.take_along_axis(p_t, x[None, :, None], axis=2)[..., 0]  # (N, L)
        log_w = self.log_probs + jnp.sum(jnp.log(jnp.maximum(likelihood, 1e-30)), axis=1)
        w = jax.nn.softmax(log_w)
        marginals = jnp.einsum("n,nlv->lv", w, jax.nn.one_hot(self.support, self.path.vocab_size))
        return jnp.log(jnp.maximum(marginals, 1e-30))
