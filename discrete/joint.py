"""Joint sampling of continuous, manifold and discrete parts, driven by one clean-data predictor
(FlowMol's and Multiflow's sampler as a library piece: any product of such parts).

A joint model predicts, from the current state of every part at time ``t``, the clean data:
a point ``x̂₁`` for a continuous part and logits over the data tokens for a discrete one. Every
part then takes the step of its own path towards that prediction, all with the same step:

- :class:`Straight` (the straight path ``x_t = (1 − t) x₀ + t x₁``): ``x ← x + h (x̂₁ − x)/(1 − t)``;
- :class:`Geodesic` (a manifold's geodesic path): ``x ← exp_x(h log_x(x̂₁)/(1 − t))``, which stays
  on the manifold and, for a fixed prediction, moves along the geodesic exactly;
- :class:`Masked` (a masking CTMC of :class:`~discrete.MixturePath`): each token jumps with the
  posterior's rates (:func:`~discrete.posterior_rates`; with ``eta > 0`` the detailed-balance
  remasking as well), optionally one draw per unordered pair of a square matrix of tokens (bond
  orders).

With the true posterior as predictor, each step is the exact conditional step of the data's
path, so the sampler reproduces the data's joint law as the steps grow (``tests/test_joint``
checks that on a small joint data set). The last step takes the clean prediction, the
posterior's mode for a token still masked. ``molecules.MoleculeFlow``'s sampler is the same
loop written for molecules (centred positions, an optional SDE, refinement, fake atoms);
:func:`joint_sample` is that loop for a model of one's own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp

from .model import categorical_from_weights
from .paths import MixturePath
from .rates import posterior_rates


class Straight(eqx.Module):
    """A Euclidean part on the straight path; its prediction is ``x̂₁``, the state's shape."""

    def step(self, key, x, prediction, t, h, eta, active=None):
        return x + h * (prediction - x) / (1 - t)

    def finish(self, x, prediction):
        return prediction


class Geodesic(eqx.Module):
    """A part on ``manifold`` (anything with ``exp``, ``log`` and ``shape``, e.g. a
    :mod:`manifolds` space) on its geodesic path; the state is ``(..., *manifold.shape)``."""

    manifold: object

    def _per_point(self, fn, x, y):
        event = len(self.manifold.shape)
        flat = lambda a: a.reshape((-1, *a.shape[a.ndim - event:]))
        return jax.vmap(fn)(flat(x), flat(y)).reshape(x.shape)

    def step(self, key, x, prediction, t, h, eta, active=None):
        move = lambda xi, yi: self.manifold.exp(xi, h * self.manifold.log(xi, yi) / (1 - t))
        return self._per_point(move, x, prediction)

    def finish(self, x, prediction):
        return prediction


class Masked(eqx.Module):
    """Tokens of any shape on a masking ``path``; the prediction is logits ``(*shape, V)`` over
    the ``V`` data tokens. ``symmetric=True``: the tokens are a square matrix ``(N, N)`` kept
    symmetric: each unordered pair jumps once, by the upper triangle's prediction (a model's
    logits for ``(i, j)`` and ``(j, i)`` are best made equal, as :mod:`molecules`' are)."""

    path: MixturePath
    symmetric: bool = eqx.field(static=True, default=False)

    def step(self, key, tokens, logits, t, h, eta, active=None):
        k_jump, k_dest = jax.random.split(key)
        flat = tokens.reshape(-1)
        probs = jax.nn.softmax(logits.reshape(flat.shape[0], -1), -1)
        rates = posterior_rates(self.path, probs, flat, t, eta)
        if active is not None:  # entries outside the data (padding, a matrix's diagonal) never jump
            rates = rates * active.reshape(-1, 1)
        p_jump = jnp.clip(h * jnp.sum(rates, -1), 0.0, 1.0).reshape(tokens.shape)
        u = jax.random.uniform(k_jump, tokens.shape)
        draw = categorical_from_weights(k_dest, rates).reshape(tokens.shape)
        if self.symmetric:  # the upper triangle's entries decide for both
            u, draw, p_jump = _upper_mirrored(u), _upper_mirrored(draw), _upper_mirrored(p_jump)
        return jnp.where(u < p_jump, draw, tokens)

    def finish(self, tokens, logits):
        mode = jnp.argmax(logits, -1)
        if self.symmetric:
            mode = _upper_mirrored(mode)
        return jnp.where(tokens == self.path.mask_token, mode, tokens)


def _upper_mirrored(a):
    """A square matrix's upper triangle (diagonal included) mirrored onto the lower one."""
    upper = jnp.triu(a)
    return upper + jnp.triu(a, 1).T


def joint_sample(predict: Callable, parts: Sequence, initial: tuple, key, *, steps: int, eta: float = 0.0,
                 t_end: float = 1.0, first_previous=None, active: tuple | None = None) -> tuple:
    """The state of every part after ``steps`` joint steps from ``initial`` (one example; ``vmap``
    for a batch) at ``t = 0``.

    ``predict(states, t)`` returns one prediction per part. Self-conditioning: given
    ``first_previous`` (what the model reads before any prediction, in the form of its
    predictions), it is called ``predict(states, t, previous)`` with the last step's predictions.
    ``t_end = 1``: the last step returns the clean prediction (each part's ``finish``); below 1,
    the state reached at ``t_end`` after ``steps`` steps of ``t_end/steps``. ``eta``: the discrete
    parts' remasking rate (0: pure flow). ``active``: per part None or a boolean array of a
    discrete part's token shape, False where a token must keep its initial value (padding); a
    continuous part stays where its prediction is its state.
    """
    if int(steps) < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if not 0.0 < t_end <= 1.0:
        raise ValueError(f"t_end must lie in (0, 1], got {t_end}")
    active = (None,) * len(parts) if active is None else tuple(active)
    if not len(parts) == len(initial) == len(active):
        raise ValueError(f"{len(parts)} parts, {len(initial)} initial states and {len(active)} active masks")
    finishing = t_end == 1.0
    h = t_end / steps
    self_conditioning = first_previous is not None
    call = (lambda s, t, prev: predict(s, t, prev)) if self_conditioning else (lambda s, t, prev: predict(s, t))
    previous = first_previous

    def step(carry, inputs):
        states, previous = carry
        k, key = inputs
        t = k * h
        predictions = call(states, t, previous)
        keys = jax.random.split(key, len(parts))
        states = tuple(part.step(kk, s, p, t, h, eta, a)
                       for part, kk, s, p, a in zip(parts, keys, states, predictions, active))
        return (states, predictions if self_conditioning else previous), None

    moves = steps - 1 if finishing else steps
    (states, previous), _ = jax.lax.scan(step, (tuple(initial), previous),
                                         (jnp.arange(moves, dtype=jnp.float32), jax.random.split(key, moves)))
    if not finishing:
        return states
    predictions = call(states, (steps - 1) * h, previous)
    return tuple(part.finish(s, p) for part, s, p in zip(parts, states, predictions))
