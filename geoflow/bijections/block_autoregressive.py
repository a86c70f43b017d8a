"""Block neural autoregressive flow (BNAF, De Cao, Aziz & Titov 2019): one autoregressive
network that is itself the monotone transformation — the universal family of flowjax and zuko.

A layer is a feed-forward network on ``dim`` coordinates whose hidden layers hold ``hidden``
units per coordinate. Each weight matrix is made of ``dim × dim`` blocks: block ``(i, j)`` is zero
above the diagonal (``j > i``), free below it, and positive on it (``exp`` of the raw weights),
and every row is weight-normalised (``W = eᵍ · V / ‖V‖``, Salimans & Kingma 2016). Between
layers a leaky ``tanh`` (:class:`~geoflow.bijections.LeakyTanh`: ``tanh`` continued linearly, so
the map is onto ℝ) keeps every output increasing in its own coordinate. The Jacobian is
lower-triangular; its diagonal ``∂zᵢ/∂yᵢ`` is the product of the diagonal blocks and the
activations' slopes, carried in log space (a log-sum-exp matrix product per layer), so the
log-determinant is exact and costs one pass. As in the paper's experiments the layer is a gated
residual, ``z = σ(a) ⊙ f(y) + σ(−a) ⊙ y``: its slope is at least ``σ(−a)``, so it starts near
a scaled identity, stays onto ℝ, and layers stack like those of any other flow.

Direction: the network maps data to latent (``inverse_and_log_det``, density in one pass, as
MAF). Sampling (``forward_and_log_det``) inverts it coordinate by coordinate, each by bisection
(:func:`~geoflow.bijections.scalar.solve_increasing`): ``dim × iterations`` passes, with exact
implicit gradients. BNAF is a density estimator first; for fast sampling use a coupling flow.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .base import Bijection
from .scalar import LeakyTanh, solve_increasing


class _BlockLinear(eqx.Module):
    """A weight-normalised block-lower-triangular linear map from ``(dim, fan_in)`` to ``(dim, fan_out)``."""

    raw: Float[Array, "d out d in"]
    log_gain: Float[Array, "d out"]
    bias: Float[Array, "d out"]

    def __init__(self, dim: int, fan_in: int, fan_out: int, *, key):
        # the diagonal block enters as exp(raw): start it near e^0 = 1 like the free blocks' scale
        self.raw = jax.random.normal(key, (dim, fan_out, dim, fan_in)) / math.sqrt(dim * fan_in)
        self.log_gain = jnp.zeros((dim, fan_out))
        self.bias = jnp.zeros((dim, fan_out))

    def weights(self):
        """``(W (d, out, d, in), log of the diagonal blocks (d, out, in))``."""
        dim = self.raw.shape[0]
        diagonal = jnp.eye(dim, dtype=bool)[:, None, :, None]
        below = jnp.tril(jnp.ones((dim, dim), bool), -1)[:, None, :, None]
        v = jnp.where(diagonal, jnp.exp(self.raw), jnp.where(below, self.raw, 0.0))
        log_norm = 0.5 * jnp.log(jnp.sum(v**2, (2, 3)))  # (d, out)
        w = v * jnp.exp(self.log_gain - log_norm)[..., None, None]
        own = jnp.arange(dim)
        log_diagonal = self.raw[own, :, own, :] + (self.log_gain - log_norm)[..., None]
        return w, log_diagonal


def _log_matmul(a, b):
    """``log(exp(a) @ exp(b))`` per coordinate: ``(d, m, k), (d, k, n) → (d, m, n)``."""
    return jax.nn.logsumexp(a[..., :, :, None] + b[..., None, :, :], axis=-2)


class BlockAutoregressive(Bijection):
    """One BNAF layer on vectors of ``dim``: ``depth`` hidden layers of ``hidden`` units per
    coordinate (``dim · hidden`` in all). `cond_dim`: a context vector enters the first layer's
    pre-activations (it shifts them, so the Jacobian keeps its form). `max_val`: where the
    activation's ``tanh`` turns linear. `low`, `high`, `iterations`: the bisection bracket and
    halvings of the inverse (sampling); a latent point the bracket cannot reach maps to its end.
    """

    layers: tuple[_BlockLinear, ...]
    gate: Float[Array, " d"]
    condition_in: Float[Array, "c d h"] | None
    max_val: float = eqx.field(static=True)
    low: float = eqx.field(static=True)
    high: float = eqx.field(static=True)
    iterations: int = eqx.field(static=True)
    shape: tuple[int, ...] = eqx.field(static=True)
    cond_shape: tuple[int, ...] | None = eqx.field(static=True)

    def __init__(self, dim: int, *, key, hidden: int = 8, depth: int = 1, cond_dim: int | None = None,
                 max_val: float = 3.0, low: float = -1e3, high: float = 1e3, iterations: int = 50):
        if int(dim) < 1 or int(hidden) < 1 or int(depth) < 1:
            raise ValueError(f"BlockAutoregressive needs dim, hidden and depth ≥ 1; got {dim}, {hidden}, {depth}")
        if not low < high or int(iterations) < 1:
            raise ValueError(f"the inverse needs low < high and iterations ≥ 1; got [{low}, {high}], {iterations}")
        sizes = [1] + [int(hidden)] * int(depth) + [1]
        keys = jax.random.split(key, len(sizes))
        self.layers = tuple(_BlockLinear(dim, a, b, key=k) for a, b, k in zip(sizes[:-1], sizes[1:], keys))
        # σ(a) = 1/4 at the start: far from the origin (f flat) a layer contracts by 3/4, not 1/2,
        # so a stack of layers starts with tails of the base's scale
        self.gate = jnp.full(dim, -math.log(3.0))
        self.condition_in = (None if cond_dim is None else
                             jax.random.normal(keys[-1], (int(cond_dim), int(dim), int(hidden))) / math.sqrt(cond_dim))
        self.max_val, self.low, self.high, self.iterations = float(max_val), float(low), float(high), int(iterations)
        self.shape, self.cond_shape = (int(dim),), None if cond_dim is None else (int(cond_dim),)
        # scale the last layer so that f′(0) = 1: the layer starts as the identity near the origin
        log_f_slope = self._inner(jnp.zeros(dim), None if cond_dim is None else jnp.zeros(cond_dim), self._weights())[1]
        last = self.layers[-1]
        self.layers = (*self.layers[:-1], eqx.tree_at(lambda l: l.log_gain, last, last.log_gain - log_f_slope[:, None]))

    def _weights(self):
        """Each layer's ``(W, log of its diagonal blocks)``: computed once per pass or inverse,
        not once per bisection step."""
        return tuple(layer.weights() for layer in self.layers)

    def _inner(self, y, condition, weights):
        """``(f(y) (d,), log ∂fᵢ/∂yᵢ (d,))``: the block network alone, with :meth:`_weights`."""
        activation = LeakyTanh(1, self.max_val)
        h, log_jacobian = y[:, None], None
        for k, (layer, (w, log_diagonal)) in enumerate(zip(self.layers, weights)):
            pre = jnp.einsum("iajb,jb->ia", w, h) + layer.bias
            if k == 0 and self.condition_in is not None:
                pre = pre + jnp.einsum("c,cia->ia", condition, self.condition_in)
            log_jacobian = log_diagonal if log_jacobian is None else _log_matmul(log_diagonal, log_jacobian)
            if k < len(self.layers) - 1:
                h, log_slope = jax.vmap(activation.forward_and_log_det)(pre.reshape(-1, 1))
                h, log_jacobian = h.reshape(pre.shape), log_jacobian + log_slope.reshape(pre.shape)[..., None]
            else:
                h = pre
        return h[:, 0], log_jacobian[:, 0, 0]

    def _network(self, y, condition, weights):
        """``(z (d,), log ∂zᵢ/∂yᵢ (d,))``: the data → latent pass, ``f`` in the gated residual
        ``z = σ(a) f(y) + σ(−a) y`` of slope ``σ(a) f′ + σ(−a)``."""
        f, log_f_slope = self._inner(y, condition, weights)
        log_slope = jnp.logaddexp(jax.nn.log_sigmoid(self.gate) + log_f_slope, jax.nn.log_sigmoid(-self.gate))
        return jax.nn.sigmoid(self.gate) * f + jax.nn.sigmoid(-self.gate) * y, log_slope

    def inverse_and_log_det(self, y, condition=None):
        z, log_diagonal = self._network(y, condition, self._weights())
        return z, jnp.sum(log_diagonal)

    def forward_and_log_det(self, z, condition=None):
        # coordinate i of the network depends on y_{≤i} only, increasingly on y_i: solve each in
        # turn with the earlier ones fixed (later ones do not matter, so they stay 0)
        weights = self._weights()

        def solve(i, y):
            coordinate = lambda c: self._network(y.at[i].set(c), condition, weights)[0][i]
            return y.at[i].set(solve_increasing(coordinate, z[i], self.low, self.high, self.iterations))

        y = jax.lax.fori_loop(0, self.shape[0], solve, jnp.zeros_like(z))
        return y, -jnp.sum(self._network(y, condition, weights)[1])
