"""CTMC rates of a mixture path, averaged over a denoiser's posterior (Campbell et al. 2024).

For one position in state ``s`` and a data token ``x₁``, the conditional rate to ``y ≠ s`` is

    R(s → y | x₁) = c_t δ(y, x₁)                                  (the flow: c_t = κ̇_t / (1 − κ_t))
                  + η p₀(y)                              if s = x₁  (detailed-balance noise: leave x₁)
                  + η (κ_t + (1 − κ_t) p₀(x₁)) / (1 − κ_t)  if y = x₁ ≠ s and p₀(s) > 0  (… and return)

The first term is the minimal rate that carries ``p_t(· | x₁)`` along the path (for mixture
paths Campbell et al.'s ``R*`` and Gat et al.'s velocity coincide). The ``η`` terms satisfy
detailed balance with respect to ``p_t(· | x₁)``, so they add noise without changing the
marginals; with the masking source they re-mask at rate ``η`` and unmask at ``η κ/(1−κ)``
(Campbell et al.'s choice), with the uniform source they leave ``x₁`` at rate ``η/V`` per token.
The model's rate is the average over ``x₁ ~ p_θ(x₁ | x_t)``, position by position.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from .paths import MixturePath


def posterior_rates(path: MixturePath, probs: Float[Array, "L V"], x: Int[Array, " L"], t, eta=0.0,
                    flow: bool = True) -> Float[Array, "L S"]:
    """Rates ``(L, num_states)`` out of the current tokens ``x`` (zero at ``x`` itself), for the
    posterior ``probs`` over the ``V`` data tokens at each position.

    ``flow=False`` keeps only the detailed-balance part (a corrector step that leaves ``p_t``
    invariant)."""
    num_states = path.num_states
    pi = jnp.pad(probs, ((0, 0), (0, num_states - path.vocab_size)))  # no posterior mass on the mask
    p0 = path.p0
    kappa = path.kappa(t)[0]
    one_minus = jnp.maximum(1 - kappa, 1e-6)
    pi_here = jnp.take_along_axis(pi, x[:, None], axis=1)  # π(s): the posterior that s is already x₁
    source_here = p0[x][:, None] > 0
    rates = eta * pi_here * p0 + eta * pi * (kappa + one_minus * p0) / one_minus * source_here
    if flow:
        rates = rates + path.jump_coefficient(t) * pi
    return jnp.where(jnp.arange(num_states) == x[:, None], 0.0, rates)
