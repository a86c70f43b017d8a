"""The exact posterior of a small set of molecules under the independent-coupling training path:
an oracle that checks the molecule sampler (given the true posterior it must reproduce the data)
and bounds what a network can reach on that set.

For ``x₁`` one of ``M`` molecules (probabilities ``π``) and the path of
:class:`molecules.matching.MoleculeFlowMatching` without Kabsch alignment or permutation —
``x_t = (1 − t) x₀ + t x₁`` with ``x₀`` a centred Gaussian of scale ``σ``, each token kept with
probability ``κ_t = t^p`` and masked otherwise — the posterior weight of molecule ``m`` given a noisy
molecule is

    ``w_m ∝ π_m · 1[same atom count] · exp(−‖x_t − t x₁⁽ᵐ⁾‖² / (2 (1 − t)² σ²)) · Π_known 1[token = m's]``

(masking is independent of the values, so masked tokens carry no information). The prediction
is the posterior mean of the positions and the posterior marginal of every token.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from .flow import MoleculeSampler, check_token_power, normalized_counts
from .geometry import centre
from .network import zero_prediction
from .graph import MolecularGraph, Vocabulary, check_graph

# log-weight per known token that disagrees with a molecule. Not −∞: a sampler that unmasks two
# tokens in one step can reach a state no molecule explains; the oracle then follows the molecules
# with the fewest disagreements instead of dividing by zero.
_DISAGREEMENT = -1e4


class ExactMoleculePosterior(MoleculeSampler):
    """The posterior-predictive "network" of molecules ``graphs`` drawn with ``probs``.

    **Arguments:** `graphs` (a batched :class:`MolecularGraph` ``(M, N, …)``, real atoms first),
    `vocabulary`, `probs` ``(M,)`` (default uniform), `prior_scale` (``σ``, Å), `token_power`
    (``κ_t = t^token_power``), as the model's.
    """

    positions: Float[Array, "M N 3"]
    atom_types: Int[Array, "M N"]
    charges: Int[Array, "M N"]
    bonds: Int[Array, "M N N"]
    mask: Bool[Array, "M N"]
    log_probs: Float[Array, " M"]
    vocabulary: Vocabulary = eqx.field(static=True)
    max_atoms: int = eqx.field(static=True)
    atom_counts: tuple[float, ...] = eqx.field(static=True)
    prior_scale: float = eqx.field(static=True)
    token_power: float = eqx.field(static=True)

    def __init__(self, graphs: MolecularGraph, vocabulary: Vocabulary, probs=None, prior_scale: float = 1.0,
                 token_power: float = 1.0):
        check_graph(graphs, vocabulary, "graphs")
        mask = np.asarray(graphs.mask, bool)
        if mask.ndim != 2:
            raise ValueError(f"graphs must be a batch (M, N); got a mask of shape {mask.shape}")
        sizes = mask.sum(1)
        if not all(mask[i, : sizes[i]].all() for i in range(len(sizes))):
            raise ValueError("graphs must list their real atoms first (mask True then False)")
        m = mask.shape[0]
        probs = np.full(m, 1.0 / m) if probs is None else np.asarray(probs, np.float64)
        if probs.shape != (m,) or (probs < 0).any() or abs(probs.sum() - 1) > 1e-6:
            raise ValueError(f"probs must be {m} non-negative numbers summing to 1; got shape {probs.shape}")
        maskf = jnp.asarray(mask, jnp.float32)
        self.positions = jax.vmap(centre)(jnp.asarray(graphs.positions, jnp.float32), maskf)
        self.atom_types, self.charges = jnp.asarray(graphs.atom_types, jnp.int32), jnp.asarray(graphs.charges, jnp.int32)
        self.bonds, self.mask = jnp.asarray(graphs.bonds, jnp.int32), jnp.asarray(mask)
        self.log_probs = jnp.log(jnp.maximum(jnp.asarray(probs, jnp.float32), 1e-30))
        self.vocabulary, self.max_atoms, self.prior_scale = vocabulary, mask.shape[1], float(prior_scale)
        self.token_power = check_token_power(token_power)
        self.atom_counts = normalized_counts(np.bincount(sizes, weights=probs, minlength=self.max_atoms + 1),
                                             self.max_atoms)

    def weights(self, x, types, charges, bonds, mask, t) -> Float[Array, " M"]:
        """The posterior ``(M,)`` over the molecules given one noisy molecule at time ``t``."""
        p_a, p_c, p_b = self.paths
        maskf = mask.astype(jnp.float32)
        sq = jnp.sum(jnp.sum((x[None] - t * self.positions) ** 2, -1) * maskf, -1)
        log_w = self.log_probs - sq / (2 * ((1 - t) * self.prior_scale) ** 2)
        log_w = jnp.where(jnp.all(self.mask == mask, -1), log_w, -jnp.inf)

        def disagreements(noisy, clean, path):
            known = noisy < path.vocab_size
            return jnp.sum((known & (noisy != clean)).reshape(clean.shape[0], -1), -1)

        conflicts = (disagreements(types[None], self.atom_types, p_a) + disagreements(charges[None], self.charges, p_c)
                     + disagreements(bonds[None], self.bonds, p_b) // 2)  # each unordered pair once
        return jax.nn.softmax(log_w + _DISAGREEMENT * conflicts)

    def predict(self, x, types, charges, bonds, mask, t, previous=None):
        """The posterior mean of the clean positions and the posterior marginals of the tokens
        (as log-probabilities), known tokens carried over; ``previous`` is ignored."""
        w = self.weights(x, types, charges, bonds, mask, t)
        x1 = jnp.einsum("m,mnd->nd", w, self.positions)
        p_a, p_c, p_b = self.paths

        def log_marginal(tokens, path, noisy):
            probs = jnp.einsum("m,m...v->...v", w, jax.nn.one_hot(tokens, path.vocab_size))
            return path.carry_known(jnp.log(jnp.maximum(probs, 1e-30)), noisy)

        return (x1, log_marginal(self.atom_types, p_a, types), log_marginal(self.charges, p_c, charges),
                log_marginal(self.bonds, p_b, bonds))

    def no_prediction(self, positions):
        """A zero prediction of the form the sampler carries between steps (never read here)."""
        return zero_prediction(positions, tuple(p.vocab_size for p in self.paths))
