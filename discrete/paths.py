"""Mixture probability paths for discrete flow matching (Gat et al. 2024), one position at a time.

Given the data token ``x₁``, each position of ``x_t`` is independently

    p_t(x | x₁) = κ_t δ(x, x₁) + (1 − κ_t) p₀(x),

so at ``t = 0`` it is a draw from the source ``p₀`` and at ``t = 1`` it is ``x₁``. ``κ_t`` is
the ``α_t`` of one of the core's schedulers (linear, polynomial, cosine; ``κ̇`` by ``jax.jvp``).

States: the ``V`` data tokens ``0 … V−1``, plus, for the masking source, one mask token ``V``.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from geoflow.continuous.paths import SCHEDULERS, CondOT, Scheduler

SOURCES = ("mask", "uniform")


class MixturePath(eqx.Module):
    """The mixture path from ``source`` to the data over a vocabulary of ``vocab_size`` tokens.

    **Arguments:**
    - `vocab_size`: ``V``, the number of data tokens.
    - `source`: ``"mask"`` (all mass on an extra mask token), ``"uniform"`` (uniform over the
      ``V`` tokens) or an array of ``V`` probabilities (any source over the data tokens).
    - `scheduler`: a core :class:`~geoflow.continuous.paths.Scheduler` (or its name); ``κ_t = α_t``.
    """

    vocab_size: int = eqx.field(static=True)
    source: str = eqx.field(static=True)
    source_probs: tuple[float, ...] = eqx.field(static=True)  # p₀ over the num_states states; never trained
    scheduler: Scheduler

    def __init__(self, vocab_size: int, source="mask", scheduler: Scheduler | str = "linear"):
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be at least 1, got {vocab_size}")
        self.vocab_size = int(vocab_size)
        if isinstance(source, str):
            if source not in SOURCES:
                raise ValueError(f"unknown source {source!r}; expected one of {SOURCES} or an array of probabilities")
            self.source = source
            probs = np.zeros(vocab_size + 1) if source == "mask" else np.full(vocab_size, 1.0 / vocab_size)
            if source == "mask":
                probs[vocab_size] = 1.0
        else:
            probs = np.asarray(source, np.float64)
            if probs.shape != (vocab_size,) or (probs < 0).any() or abs(probs.sum() - 1) > 1e-6:
                raise ValueError(f"a source distribution must be {vocab_size} non-negative probabilities summing "
                                 f"to 1; got shape {probs.shape}, sum {probs.sum():.4g}")
            self.source = "custom"
        self.source_probs = tuple(float(p) for p in probs)
        if isinstance(scheduler, str):
            if scheduler not in SCHEDULERS:
                raise ValueError(f"unknown scheduler {scheduler!r}; expected one of {sorted(SCHEDULERS)}")
            scheduler = SCHEDULERS[scheduler]()
        self.scheduler = scheduler if scheduler is not None else CondOT()

    @property
    def num_states(self) -> int:
        """Tokens a sequence can hold during sampling: ``V + 1`` with a mask token, else ``V``."""
        return self.vocab_size + (self.source == "mask")

    @property
    def mask_token(self) -> int | None:
        return self.vocab_size if self.source == "mask" else None

    @property
    def p0(self):
        """The source distribution ``(num_states,)``."""
        return jnp.asarray(self.source_probs, jnp.float32)

    def kappa(self, t):
        """``(κ_t, κ̇_t)``."""
        kappa = lambda s: self.scheduler(s)[0]
        return jax.jvp(kappa, (t,), (jnp.ones_like(t),))

    def time_of_kappa(self, kappa, iterations: int = 40):
        """The ``t`` with ``κ_t = kappa`` (bisection: every scheduler's ``κ`` increases in ``t``)."""
        def halve(_, bounds):
            lo, hi = bounds
            mid = 0.5 * (lo + hi)
            below = self.scheduler(mid)[0] < kappa
            return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

        lo, hi = jax.lax.fori_loop(0, iterations, halve, (jnp.zeros_like(kappa), jnp.ones_like(kappa)))
        return 0.5 * (lo + hi)

    def jump_coefficient(self, t):
        """``κ̇_t / (1 − κ_t)``: the rate at which a position still at its source value jumps to ``x₁``."""
        k, dk = self.kappa(t)
        return dk / jnp.maximum(1 - k, 1e-6)

    def carry_known(self, logits: Float[Array, "... V"], tokens: Int[Array, "..."]) -> Float[Array, "... V"]:
        """With the masking source, ``logits`` with every unmasked token set to certainty (the path
        never changes a token once it leaves the mask, so its posterior is exactly one-hot there);
        other sources leave them unchanged."""
        if self.source != "mask":
            return logits
        known = (tokens < self.vocab_size)[..., None]
        one_hot = jnp.arange(self.vocab_size) == tokens[..., None]
        return jnp.where(known, jnp.where(one_hot, 0.0, -1e9), logits)

    def sample_source(self, key, shape):
        """Source tokens of ``shape``."""
        if self.source == "mask":
            return jnp.full(shape, self.vocab_size, jnp.int32)
        logits = jnp.log(self.p0)
        return jax.random.categorical(key, logits, shape=shape).astype(jnp.int32)

    def sample_xt(self, key, x1, t):
        """``x_t ~ p_t(· | x₁)`` for a sequence ``x1`` ``(L,)`` at scalar time ``t``."""
        k_keep, k_src = jax.random.split(key)
        keep = jax.random.uniform(k_keep, x1.shape) < self.kappa(t)[0]
        return jnp.where(keep, x1, self.sample_source(k_src, x1.shape))

    def conditional_probs(self, x1, t):
        """``p_t(· | x₁)`` ``(*x1.shape, num_states)``."""
        k = self.kappa(t)[0]
        return k * jax.nn.one_hot(x1, self.num_states) + (1 - k) * self.p0
