"""A discrete flow-matching model: a mixture path, a denoiser, a CTMC sampler and an ELBO.

``DiscreteFlow`` shows the house face where it applies: ``sample(key, sample_shape)`` and
``elbo(x, key)`` — a *lower bound* on ``log p(x)`` in nats, named as one; there is no exact
``log_prob`` for a CTMC model. Train it with ``geoflow.fit(model, tokens, loss=DiscreteFlowMatching())``.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from .checks import check_tokens
from .denoisers import DENOISERS
from .paths import MixturePath
from .rates import posterior_rates

METHODS = ("euler", "tau-leaping")
FINAL_STEPS = ("sample", "argmax")


def categorical_from_weights(key, weights: Float[Array, "n k"]) -> Int[Array, " n"]:
    """One draw per row with probabilities ∝ the non-negative ``weights``, by the inverse CDF:
    one uniform per row rather than ``jax.random.categorical``'s Gumbel noise per entry."""
    cdf = jnp.cumsum(weights, -1)
    u = jax.random.uniform(key, weights.shape[:-1] + (1,)) * cdf[..., -1:]
    return jnp.minimum(jnp.sum(cdf <= u, -1), weights.shape[-1] - 1).astype(jnp.int32)


def generalized_kl(path: MixturePath, logits, x1, xt, t):
    """Gat et al.'s generalized KL per position ``(L,)``: ``−c_t [p(x_t) − δ + (1 − δ) log p(x₁)]``
    with ``c_t = κ̇/(1−κ)`` and ``δ = [x_t = x₁]``. Its expectation over ``t ~ U(0, 1)`` and
    ``x_t`` is the path-space KL between the conditional and the model CTMC: minus the ELBO."""
    log_p = jax.nn.log_softmax(logits, -1)
    log_p_x1 = jnp.take_along_axis(log_p, x1[:, None], 1)[:, 0]
    in_vocab = xt < path.vocab_size  # the mask token has posterior probability 0
    p_xt = jnp.where(in_vocab, jnp.exp(jnp.take_along_axis(log_p, jnp.minimum(xt, path.vocab_size - 1)[:, None], 1)[:, 0]), 0.0)
    delta = (xt == x1).astype(logits.dtype)
    return -path.jump_coefficient(t) * (p_xt - delta + (1 - delta) * log_p_x1)


class DiscreteFlow(eqx.Module):
    """Sequences of ``length`` tokens from ``path.vocab_size`` by discrete flow matching.

    **Arguments:**
    - `path`: a :class:`MixturePath` (source and scheduler).
    - `denoiser`: ``denoiser(x_t (L,), t, condition, keep) -> logits (L, V)``.
    - `length`: ``L``.

    With the masking source an unmasked token is already ``x₁`` (the path never changes it
    again), so the posterior there is set to certainty ("carry-over"): exact, and it makes the
    ELBO's unmasked terms vanish.
    """

    path: MixturePath
    denoiser: eqx.Module
    length: int = eqx.field(static=True)
    shape: tuple[int, ...] = eqx.field(static=True)
    cond_shape: tuple[int, ...] | None = eqx.field(static=True)

    def __init__(self, path: MixturePath, denoiser, length: int):
        self.path, self.denoiser, self.length = path, denoiser, int(length)
        self.shape = (self.length,)
        self.cond_shape = getattr(denoiser, "cond_shape", None)

    @property
    def vocab_size(self) -> int:
        return self.path.vocab_size

    def logits(self, x: Int[Array, " L"], t, condition=None, keep=None) -> Float[Array, "L V"]:
        """Posterior logits ``log p(x₁ | x_t)`` up to a constant, for one sequence."""
        return self.path.carry_known(self.denoiser(x, t, condition, keep), x)

    def _guided_log_probs(self, x, t, condition, guidance, temperature, guided=True):
        log_p = jax.nn.log_softmax(self.logits(x, t, condition), -1)
        if guided and condition is not None:  # classifier-free guidance on log-probabilities
            log_p = (1 + guidance) * log_p - guidance * jax.nn.log_softmax(self.logits(x, t, None), -1)
        return jax.nn.log_softmax(log_p / temperature, -1)

    # ---- sampling ---------------------------------------------------------------------------

    def sample(self, key, sample_shape=(), condition=None, *, steps: int = 100, method: str = "euler",
               eta: float = 0.0, corrector_steps: int = 0, corrector_eta: float = 1.0, temperature: float = 1.0,
               final: str = "sample", guidance: float = 0.0, known=None) -> Int[Array, "... L"]:
        """Token sequences ``(*sample_shape, L)`` by simulating the CTMC from the source.

        **Arguments:**
        - `steps`: uniform time steps; the last one (to ``t = 1``) replaces ``x`` by a draw
          (``final="sample"``) or the mode (``final="argmax"``, deterministic) of the posterior.
        - `method`: ``"euler"`` (jump to ``y`` with probability ``h R(y)``; the rest stays) or
          ``"tau-leaping"`` (rates frozen over the step: a position jumps with probability
          ``1 − exp(−h Σ R)``, to ``y ∝ R(y)``).
        - `eta`: detailed-balance noise (Campbell et al. 2024); ``0`` is the minimal rate.
        - `corrector_steps`, `corrector_eta`: extra steps of pure detailed-balance noise after
          each step, which leave ``p_t`` invariant and correct errors of the predictor.
        - `temperature`: divides the posterior's log-probabilities (below 1: sharper).
        - `guidance`: classifier-free guidance weight (with a `condition`).
        - `known`: ``(L,)`` tokens to clamp, ``-1`` where free: infilling.
        """
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
        if final not in FINAL_STEPS:
            raise ValueError(f"unknown final step {final!r}; expected one of {FINAL_STEPS}")
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if known is None:
            known = jnp.full((self.length,), -1, jnp.int32)
        else:
            known = jnp.asarray(known, jnp.int32)
            if known.shape != (self.length,):
                raise ValueError(f"known has shape {known.shape}; expected ({self.length},) with -1 at free positions")
            check_tokens(jnp.where(known < 0, 0, known)[None], self.vocab_size, self.length, "known")
        sample_shape = (sample_shape,) if isinstance(sample_shape, int) else tuple(sample_shape)
        n = math.prod(sample_shape)
        floats = [jnp.asarray(v, jnp.float32) for v in (eta, corrector_eta, temperature, guidance)]
        x = _sample_batch(self, jax.random.split(key, n), condition, known, *floats, steps=int(steps), method=method,
                          corrector_steps=int(corrector_steps), final=final, guided=bool(guidance))
        return x.reshape(*sample_shape, self.length)

    def _sample_one(self, key, condition, known, steps, method, eta, corrector_steps, corrector_eta,
                    temperature, final, guidance, guided):
        clamp = lambda x: jnp.where(known >= 0, known, x)
        h = 1.0 / steps

        def jump(key, x, rates):
            total = jnp.sum(rates, -1)
            p_jump = jnp.clip(h * total, 0.0, 1.0) if method == "euler" else -jnp.expm1(-h * total)
            k_jump, k_dest = jax.random.split(key)
            dest = categorical_from_weights(k_dest, rates)
            moves = (jax.random.uniform(k_jump, x.shape) < p_jump) & (total > 0)
            return clamp(jnp.where(moves, dest, x))

        def step(x, inputs):
            k, key = inputs
            t = k * h
            probs = jnp.exp(self._guided_log_probs(x, t, condition, guidance, temperature, guided))
            k_step, k_corr = jax.random.split(key)
            x = jump(k_step, x, posterior_rates(self.path, probs, x, t, eta))
            for k_c in jax.random.split(k_corr, corrector_steps):  # unrolled: corrector_steps is small
                probs = jnp.exp(self._guided_log_probs(x, t + h, condition, guidance, temperature, guided))
                x = jump(k_c, x, posterior_rates(self.path, probs, x, t + h, corrector_eta, flow=False))
            return x, None

        k_source, k_steps, k_final = jax.random.split(key, 3)
        x = clamp(self.path.sample_source(k_source, (self.length,)))
        x, _ = jax.lax.scan(step, x, (jnp.arange(steps - 1, dtype=jnp.float32), jax.random.split(k_steps, steps - 1)))
        log_p = self._guided_log_probs(x, (steps - 1) * h, condition, guidance, temperature, guided)
        x1 = jnp.argmax(log_p, -1) if final == "argmax" else categorical_from_weights(k_final, jnp.exp(log_p))
        return clamp(x1.astype(jnp.int32))

    # ---- likelihood bound -------------------------------------------------------------------

    def elbo(self, x, key, condition=None, *, samples: int = 64) -> Float[Array, "..."]:
        """A Monte Carlo estimate (``samples`` draws per sequence) of the evidence lower bound
        ``≤ log p(x)`` in nats per sequence, for tokens ``x`` ``(..., L)``: ``−E_t Σᵢ
        generalized-KL``. The bound is exact (equal to ``log p``) for the masking source when the
        denoiser is the true posterior; with other sources it is a strict bound.

        With the masking source the time integral is done in closed form over the number ``k``
        of masked positions (weight ``1/k``; ``κ_t ~ Beta(L−k+1, k)`` given ``k``), which keeps
        the estimator's variance bounded; other sources use stratified times
        (:meth:`elbo_by_time`, which is valid for every source)."""
        return self._bound(x, key, condition, samples, by_time=False)

    def _elbo_one(self, key, x1, condition, samples):
        if self.path.source == "mask":
            return self._elbo_one_masked(key, x1, condition, samples)
        return self._elbo_one_by_time(key, x1, condition, samples)

    def _elbo_one_by_time(self, key, x1, condition, samples):
        """``−E_t Σᵢ generalized-KL`` with ``samples`` stratified times: any source."""
        k_u, k_x = jax.random.split(key)
        t = (jnp.arange(samples) + jax.random.uniform(k_u, (samples,))) / samples

        def one_time(k, ti):
            xt = self.path.sample_xt(k, x1, ti)
            return jnp.sum(generalized_kl(self.path, self.logits(xt, ti, condition), x1, xt, ti))

        return -jnp.mean(jax.vmap(one_time)(jax.random.split(k_x, samples), t))


    def _elbo_one_masked(self, key, x1, condition, samples):
        """``ELBO = −Σ_{k=1}^{L} (1/k) E_{|M|=k} Σ_{i∈M} −log p(x₁ⁱ | x₁ with M masked, t)``: for the
        masking path ``∫ κ̇/(1−κ) (1−κ)^{k} κ^{L−k} dt`` summed over the ``C(L, k)`` masks of size
        ``k`` is ``1/k``, whatever the schedule. ``k`` is stratified over the draws."""
        length = self.length
        k_u, k_rest = jax.random.split(key)
        ks = 1 + jnp.floor((jnp.arange(samples) + jax.random.uniform(k_u)) * length / samples).astype(jnp.int32)

        def one_draw(key, k):
            k_perm, k_beta = jax.random.split(key)
            masked = jnp.argsort(jax.random.uniform(k_perm, (length,))).argsort() < k
            t = self.path.time_of_kappa(jax.random.beta(k_beta, (length - k + 1).astype(jnp.float32), k.astype(jnp.float32)))
            xt = jnp.where(masked, self.path.mask_token, x1)
            log_p = jax.nn.log_softmax(self.logits(xt, t, condition), -1)
            nll = -jnp.take_along_axis(log_p, x1[:, None], 1)[:, 0]
            return length / k * jnp.sum(jnp.where(masked, nll, 0.0))

        return -jnp.mean(jax.vmap(one_draw)(jax.random.split(k_rest, samples), ks))

    def elbo_by_time(self, x, key, condition=None, *, samples: int = 64) -> Float[Array, "..."]:
        """The same bound as :meth:`elbo` by the generic estimator for every source: the
        generalized KL at ``samples`` stratified times ``t`` and one draw of ``x_t`` each. With
        the masking source it has more variance than :meth:`elbo`'s closed form over ``k``."""
        return self._bound(x, key, condition, samples, by_time=True)

    def _bound(self, x, key, condition, samples, by_time):
        x = check_tokens(x, self.vocab_size, self.length, "x")
        batch = x.shape[:-1]
        flat = x.reshape(-1, self.length)
        if condition is not None:
            condition = jnp.broadcast_to(condition, (*batch, condition.shape[-1])).reshape(flat.shape[0], -1)
        keys = jax.random.split(key, flat.shape[0])
        return _elbo_batch(self, keys, flat, condition, samples=int(samples), by_time=by_time).reshape(batch)


@eqx.filter_jit
def _sample_batch(model, keys, condition, known, eta, corrector_eta, temperature, guidance, *, steps, method,
                  corrector_steps, final, guided):
    """Compiled once per model structure and static setting (η, temperature and guidance are traced)."""
    one = lambda k, c: model._sample_one(k, c, known, steps, method, eta, corrector_steps, corrector_eta,
                                         temperature, final, guidance, guided)
    if condition is None or condition.ndim == 1:
        return jax.vmap(lambda k: one(k, condition))(keys)
    return jax.vmap(one)(keys, condition)


@eqx.filter_jit
def _elbo_batch(model, keys, tokens, condition, *, samples, by_time=False):
    one = model._elbo_one_by_time if by_time else model._elbo_one
    if condition is None:
        return jax.vmap(lambda k, s: one(k, s, None, samples))(keys, tokens)
    return jax.vmap(lambda k, s, c: one(k, s, c, samples))(keys, tokens, condition)


def dfm(key, length: int, vocab_size: int, *, source="mask", scheduler="linear", denoiser: str = "mlp",
        cond_dim: int | None = None, **denoiser_kwargs) -> DiscreteFlow:
    """A discrete flow-matching model for sequences of ``length`` tokens from ``vocab_size``.

    `source`: ``"mask"``, ``"uniform"`` or ``V`` probabilities; `scheduler`: ``"linear"``,
    ``"polynomial"``, ``"cosine"`` or a core scheduler; `denoiser`: ``"mlp"`` (short sequences)
    or ``"transformer"``, with `denoiser_kwargs` passed on (``width``, ``depth``, ``dim``, …)."""
    if denoiser not in DENOISERS:
        raise ValueError(f"unknown denoiser {denoiser!r}; expected one of {sorted(DENOISERS)}")
    path = MixturePath(vocab_size, source, scheduler)
    net = DENOISERS[denoiser](length, vocab_size, path.num_states, key=key, cond_dim=cond_dim, **denoiser_kwargs)
    return DiscreteFlow(path, net, length)
