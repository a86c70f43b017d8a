"""Invertible residual blocks (Behrmann et al. 2019, i-ResNet; Chen et al. 2019, Residual Flows).

Direction (geoflow's convention, forward = latent → data): the *density* direction is the
cheap one, ``latent = data + g(data)``, with ``Lip(g) < 1`` enforced by spectral normalisation;
sampling inverts it by the fixed-point iteration ``data ← latent − g(data)``, which converges
because ``g`` is a contraction.

``log|det(I + J_g)|`` is computed either exactly (``jacfwd`` + ``slogdet``; small events
only) or by the power series ``Σ_k (−1)^{k+1} tr(J_g^k) / k`` with Hutchinson traces and the
unbiased Russian-roulette truncation of Residual Flows: the first ``n_exact`` terms always,
then each further term with probability ``(1 − p)^m``, reweighted by the inverse of that
probability. Gradients use the Neumann series of Residual Flows (no backpropagation through
the power series): the loop runs outside autodiff and one Jacobian-vector product carries
the gradient.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from ..nn import Frozen, conv_chw
from .base import Bijection

LOG_DETS = ("series", "exact")


def lipswish(x: Array) -> Array:
    """``x · sigmoid(x) / 1.1``: smooth, with Lipschitz constant 1 (Residual Flows)."""
    return jax.nn.silu(x) / 1.1


class SpectralNorm(eqx.Module):
    """A linear layer (``eqx.nn.Linear`` or ``eqx.nn.Conv2d``) whose weight is rescaled so that
    its operator norm is at most ``coeff``: ``W ← W · min(1, coeff / σ̂)``.

    ``σ̂`` comes from ``iterations`` power iterations on the layer's linear operator (for a
    convolution, the whole operator on images of shape ``in_shape``) started from a fixed
    random vector. Models carry no hidden state, so the iteration restarts at every call; the
    estimate is a lower bound of σ, which is why ``coeff`` keeps a margin below 1. The singular
    vector is held constant for the gradient (Miyato et al. 2018).
    """

    layer: eqx.Module
    start: Frozen
    coeff: float = eqx.field(static=True)
    iterations: int = eqx.field(static=True)

    def __init__(self, layer: eqx.Module, in_shape: tuple[int, ...], *, key, coeff: float = 0.9,
                 iterations: int = 10):
        if not 0 < coeff < 1:
            raise ValueError(f"the Lipschitz coefficient must be in (0, 1) for an invertible block, got {coeff}")
        self.layer, self.coeff, self.iterations = layer, coeff, iterations
        self.start = Frozen(jax.random.normal(key, in_shape))

    def _linear(self, v):
        """The layer without its bias (convolutions as patch products, see ``conv_chw``)."""
        if isinstance(self.layer, eqx.nn.Conv2d):
            return conv_chw(self.layer, v, bias=False)
        return self.layer.weight @ v

    def sigma(self) -> Array:
        """Power-iteration estimate of the operator norm of the un-normalised weight."""
        layer = jax.lax.stop_gradient(self)

        def step(_, v):
            out, transpose = jax.vjp(layer._linear, v)
            v = transpose(out)[0]
            return v / (jnp.linalg.norm(v) + 1e-12)

        v0 = self.start.value / jnp.linalg.norm(self.start.value)
        v = jax.lax.stop_gradient(jax.lax.fori_loop(0, self.iterations, step, v0))
        return jnp.linalg.norm(self._linear(v))

    def __call__(self, x):
        scale = jnp.minimum(1.0, self.coeff / (self.sigma() + 1e-12))
        bias = self.layer.bias
        return scale * self._linear(x) + (0.0 if bias is None else bias)


def _layers_for(key, shape, width: int, depth: int, coeff: float, iterations: int, cond_dim: int = 0):
    """Spectrally normalised layers of ``g``: dense for vectors (a context vector joins the first
    layer's input), 3×3/1×1/3×3 convolutions for images (the i-ResNet block)."""
    keys = jax.random.split(key, 2 * (depth + 1))
    if cond_dim and len(shape) != 1:
        raise ValueError("conditional residual blocks are built for vectors only")
    if len(shape) == 1:
        sizes = [shape[0] + cond_dim] + [width] * depth + [shape[0]]
        layers = [eqx.nn.Linear(a, b, key=keys[i]) for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))]
        in_shapes = [(a,) for a in sizes[:-1]]
    elif len(shape) == 3:
        c, h, w = shape
        channels = [c] + [width] * depth + [c]
        kernels = [3] + [1] * (depth - 1) + [3]
        layers = [eqx.nn.Conv2d(a, b, k, padding=k // 2, key=keys[i])
                  for i, (a, b, k) in enumerate(zip(channels[:-1], channels[1:], kernels))]
        in_shapes = [(a, h, w) for a in channels[:-1]]
    else:
        raise ValueError(f"a residual block acts on vectors (d,) or images (c, h, w); got shape {shape}")
    return tuple(SpectralNorm(layer, s, key=keys[depth + 1 + i], coeff=coeff, iterations=iterations)
                 for i, (layer, s) in enumerate(zip(layers, in_shapes)))


class ResidualBlock(Bijection):
    """``latent = data + g(data)`` with ``g`` a LipSwish network of spectrally normalised layers.

    **Arguments:**
    - `key`; `shape`: ``(d,)`` (dense layers) or ``(c, h, w)`` (convolutions).
    - `cond_dim`: size of a context vector fed to ``g`` with the data (vectors only); the
      spectral norm covers the whole first matrix, so ``g`` stays a contraction in the data.
    - `width`, `depth`: hidden units/channels and number of hidden layers of ``g``.
    - `coeff`: the Lipschitz bound of each layer (< 1); `iterations`: power iterations.
    - `log_det`: ``"series"`` (Russian roulette + Hutchinson; the methods then take ``key=``)
      or ``"exact"`` (Jacobian and ``slogdet``; for small events and tests).
    - `n_exact`, `p`: terms always computed, and the geometric parameter of the roulette.
    - `tol`, `max_iter`: the fixed-point inverse stops when successive iterates differ by less
      than ``tol`` (max-norm); not converging in ``max_iter`` iterations is an error.
    """

    layers: tuple[SpectralNorm, ...]
    log_det: str = eqx.field(static=True)
    n_exact: int = eqx.field(static=True)
    p: float = eqx.field(static=True)
    tol: float = eqx.field(static=True)
    max_iter: int = eqx.field(static=True)
    shape: tuple[int, ...] = eqx.field(static=True)
    cond_shape: tuple[int, ...] | None = eqx.field(static=True, default=None)

    def __init__(self, key, shape, *, cond_dim: int | None = None, width: int = 64, depth: int = 2, coeff: float = 0.9,
                 iterations: int = 10, log_det: str = "series", n_exact: int = 2, p: float = 0.5,
                 tol: float = 1e-6, max_iter: int = 200):
        self.shape = (shape,) if isinstance(shape, int) else tuple(shape)
        if log_det not in LOG_DETS:
            raise ValueError(f"unknown log_det {log_det!r}; expected one of {LOG_DETS}")
        if not 0 < p < 1:
            raise ValueError(f"the roulette parameter p must be in (0, 1), got {p}")
        self.layers = _layers_for(key, self.shape, width, depth, coeff, iterations, cond_dim or 0)
        self.log_det, self.n_exact, self.p = log_det, n_exact, p
        self.tol, self.max_iter = tol, max_iter
        self.cond_shape = None if cond_dim is None else (cond_dim,)

    @property
    def needs_key(self) -> bool:
        return self.log_det == "series"

    def residual(self, x: Array, condition: Array | None = None) -> Array:
        """``g(x)`` (or ``g(x; condition)``), a contraction in ``x``."""
        if condition is not None:
            x = jnp.concatenate([x, condition])
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = lipswish(x)
        return x

    def exact_log_det(self, y: Array, condition: Array | None = None) -> Array:
        """``log|det(I + J_g(y))|`` from the full Jacobian."""
        n = math.prod(self.shape)
        jac = jax.jacfwd(lambda flat: self.residual(flat.reshape(self.shape), condition).ravel())(y.ravel())
        return jnp.linalg.slogdet(jnp.eye(n) + jac)[1]

    def series_log_det(self, y: Array, key, condition: Array | None = None) -> Array:
        """Unbiased Russian-roulette estimate of ``log det(I + J_g(y))`` whose gradient is the
        Neumann-series estimate of Residual Flows."""
        k_probe, k_terms = jax.random.split(key)
        v = jax.random.normal(k_probe, self.shape)
        n = self.n_exact + jax.random.geometric(k_terms, self.p) - 1  # geometric counts trials ≥ 1
        frozen, fixed_condition = jax.lax.stop_gradient((self, condition))
        _, vjp = jax.vjp(lambda x: frozen.residual(x, fixed_condition), jax.lax.stop_gradient(y))

        def survival(k):  # P(N ≥ k)
            return jnp.where(k <= self.n_exact, 1.0, (1 - self.p) ** (k - self.n_exact))

        def body(state):
            k, w, estimate, neumann = state
            w = vjp(w)[0]  # vᵀ J^k
            sign = jnp.where(k % 2 == 1, 1.0, -1.0)
            estimate = estimate + sign * jnp.vdot(w, v) / (k * survival(k))
            neumann = neumann - sign * w / survival(k)  # (−1)^k vᵀ J^k / P(N ≥ k)
            return k + 1, w, estimate, neumann

        init = (jnp.asarray(1), v, jnp.zeros((), y.dtype), v)
        _, _, estimate, neumann = jax.lax.while_loop(lambda s: s[0] <= n, body, init)
        _, jv = jax.jvp(lambda x: self.residual(x, condition), (y,), (v,))
        surrogate = jnp.vdot(jax.lax.stop_gradient(neumann), jv)
        return jax.lax.stop_gradient(estimate) + surrogate - jax.lax.stop_gradient(surrogate)

    def _log_det_at(self, y, condition, key):
        return self.exact_log_det(y, condition) if self.log_det == "exact" else self.series_log_det(y, key, condition)

    def inverse_and_log_det(self, y, condition=None, *, key=None):
        return y + self.residual(y, condition), self._log_det_at(y, condition, key)

    def forward(self, x, condition=None, *, key=None):
        """``data`` with ``data + g(data) = x``, by fixed-point iteration (no log-determinant)."""

        def body(state):
            i, y, _ = state
            new = x - self.residual(y, condition)
            return i + 1, new, jnp.max(jnp.abs(new - y))

        init = (jnp.asarray(0), x, jnp.asarray(jnp.inf, x.dtype))
        i, y, change = jax.lax.while_loop(lambda s: (s[0] < self.max_iter) & (s[2] > self.tol), body, init)
        return eqx.error_if(y, change > self.tol,
                            f"ResidualBlock inverse did not converge to tol={self.tol} in {self.max_iter} "
                            "fixed-point iterations (is the Lipschitz coefficient below 1?)")

    def forward_and_log_det(self, x, condition=None, *, key=None):
        y = self.forward(x, condition)
        return y, -self._log_det_at(y, condition, key)
