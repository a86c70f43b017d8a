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

from ..nn import conv_chw
from .base import Bijection

LOG_DETS = ("series", "exact")


def lipswish(x: Array) -> Array:
    """``x · sigmoid(x) / 1.1``: smooth, with Lipschitz constant 1 (Residual Flows)."""
    return jax.nn.silu(x) / 1.1


def circular_conv_norm(weight: Array, size: tuple[int, int]) -> Array:
    """The operator norm of a stride-1 convolution with ``weight`` ``(out, in, kh, kw)`` on
    ``size`` images with zero padding, bounded above (Sedghi et al. 2019).

    The zero-padded convolution is a crop of the circular one on a grid of at least
    ``h + kh − 1`` by ``w + kw − 1``, so its norm is at most the circular operator's, which
    the 2-D FFT block-diagonalises: the largest singular value over the grid's frequencies
    of the kernel's ``out × in`` transfer matrix."""
    out_c, in_c, kh, kw = weight.shape
    grid = (size[0] + kh - 1, size[1] + kw - 1)
    transfer = jnp.fft.fft2(weight, s=grid).transpose(2, 3, 0, 1).reshape(-1, out_c, in_c)
    gram = jnp.einsum("foi,foj->fij", transfer.conj(), transfer)
    return jnp.sqrt(jnp.max(jnp.linalg.eigvalsh(gram)[:, -1]))


class SpectralNorm(eqx.Module):
    """A linear layer (``eqx.nn.Linear`` or ``eqx.nn.Conv2d``) whose weight is rescaled so that
    its operator norm is at most ``coeff``: ``W ← W · min(1, coeff / σ)``.

    ``σ`` is never an underestimate, so ``Lip(g) ≤ coeff`` holds at every step: for a dense
    layer it is the largest singular value (an SVD of the weight); for a convolution on
    images of shape ``in_shape``, the FFT bound of :func:`circular_conv_norm`. (A power
    iteration restarted at each call, the usual shortcut for stateless models, estimates σ
    from below and can let a block lose invertibility.) ``σ`` is held constant for the
    gradient (Miyato et al. 2018).
    """

    layer: eqx.Module
    coeff: float = eqx.field(static=True)
    in_shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, layer: eqx.Module, in_shape: tuple[int, ...], *, coeff: float = 0.9):
        if not 0 < coeff < 1:
            raise ValueError(f"the Lipschitz coefficient must be in (0, 1) for an invertible block, got {coeff}")
        self.layer, self.coeff, self.in_shape = layer, coeff, tuple(in_shape)

    def _linear(self, v):
        """The layer without its bias (convolutions as patch products, see ``conv_chw``)."""
        if isinstance(self.layer, eqx.nn.Conv2d):
            return conv_chw(self.layer, v, bias=False)
        return self.layer.weight @ v

    def sigma(self) -> Array:
        """The operator norm of the un-normalised weight (an upper bound for convolutions)."""
        weight = jax.lax.stop_gradient(self.layer.weight)
        if isinstance(self.layer, eqx.nn.Conv2d):
            if weight.shape[2:] == (1, 1):  # a 1×1 convolution is one matrix at every pixel
                return jnp.linalg.norm(weight[:, :, 0, 0], 2)
            return circular_conv_norm(weight, self.in_shape[1:])
        return jnp.linalg.norm(weight, 2)

    def normalized(self) -> eqx.Module:
        """The plain layer with its weight rescaled: compute it once, outside loops, because
        ``σ`` costs more than applying the layer."""
        scale = jnp.minimum(1.0, self.coeff / (self.sigma() + 1e-12))
        return eqx.tree_at(lambda l: l.weight, self.layer, self.layer.weight * scale)

    def __call__(self, x):
        return apply_layer(self.normalized(), x)


def apply_layer(layer: eqx.Module, x: Array) -> Array:
    """A dense layer on a vector, or a convolution on a channels-first image."""
    if isinstance(layer, eqx.nn.Conv2d):
        return conv_chw(layer, x)
    return layer.weight @ x + (0.0 if layer.bias is None else layer.bias)


def _layers_for(key, shape, width: int, depth: int, coeff: float, cond_dim: int = 0):
    """Spectrally normalised layers of ``g``: dense for vectors (a context vector joins the first
    layer's input), 3×3/1×1/3×3 convolutions for images (the i-ResNet block)."""
    keys = jax.random.split(key, depth + 1)
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
    return tuple(SpectralNorm(layer, s, coeff=coeff) for layer, s in zip(layers, in_shapes))


class ResidualBlock(Bijection):
    """``latent = data + g(data)`` with ``g`` a LipSwish network of spectrally normalised layers.

    **Arguments:**
    - `key`; `shape`: ``(d,)`` (dense layers) or ``(c, h, w)`` (convolutions).
    - `cond_dim`: size of a context vector fed to ``g`` with the data (vectors only); the
      spectral norm covers the whole first matrix, so ``g`` stays a contraction in the data.
    - `width`, `depth`: hidden units/channels and number of hidden layers of ``g``.
    - `coeff`: the Lipschitz bound of each layer (< 1), guaranteed (see :class:`SpectralNorm`).
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

    def __init__(self, shape, *, cond_dim: int | None = None, width: int = 64, depth: int = 2, coeff: float = 0.9,
                 log_det: str = "series", n_exact: int = 2, p: float = 0.5,
                 tol: float = 1e-6, max_iter: int = 200, key):
        self.shape = (shape,) if isinstance(shape, int) else tuple(shape)
        if log_det not in LOG_DETS:
            raise ValueError(f"unknown log_det {log_det!r}; expected one of {LOG_DETS}")
        if not 0 < p < 1:
            raise ValueError(f"the roulette parameter p must be in (0, 1), got {p}")
        self.layers = _layers_for(key, self.shape, width, depth, coeff, cond_dim or 0)
        self.log_det, self.n_exact, self.p = log_det, n_exact, p
        self.tol, self.max_iter = tol, max_iter
        self.cond_shape = None if cond_dim is None else (cond_dim,)

    @property
    def needs_key(self) -> bool:
        return self.log_det == "series"

    def normalized_layers(self) -> tuple[eqx.Module, ...]:
        """The layers of ``g`` with their spectral normalisation applied (see :meth:`residual`)."""
        return tuple(layer.normalized() for layer in self.layers)

    def residual(self, x: Array, condition: Array | None = None, layers=None) -> Array:
        """``g(x)`` (or ``g(x; condition)``), a contraction in ``x``. Loops pass ``layers`` from
        :meth:`normalized_layers`, computed once, instead of normalising at every call."""
        if condition is not None:
            x = jnp.concatenate([x, condition])
        layers = self.normalized_layers() if layers is None else layers
        for i, layer in enumerate(layers):
            x = apply_layer(layer, x)
            if i < len(layers) - 1:
                x = lipswish(x)
        return x

    def exact_log_det(self, y: Array, condition: Array | None = None) -> Array:
        """``log|det(I + J_g(y))|`` from the full Jacobian."""
        n = math.prod(self.shape)
        layers = self.normalized_layers()
        jac = jax.jacfwd(lambda flat: self.residual(flat.reshape(self.shape), condition, layers).ravel())(y.ravel())
        return jnp.linalg.slogdet(jnp.eye(n) + jac)[1]

    def series_log_det(self, y: Array, key, condition: Array | None = None) -> Array:
        """Unbiased Russian-roulette estimate of ``log det(I + J_g(y))`` whose gradient is the
        Neumann-series estimate of Residual Flows."""
        k_probe, k_terms = jax.random.split(key)
        v = jax.random.normal(k_probe, self.shape)
        n = self.n_exact + jax.random.geometric(k_terms, self.p) - 1  # geometric counts trials ≥ 1
        layers = self.normalized_layers()
        frozen, fixed_condition = jax.lax.stop_gradient((layers, condition))
        _, vjp = jax.vjp(lambda x: self.residual(x, fixed_condition, frozen), jax.lax.stop_gradient(y))

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
        _, jv = jax.jvp(lambda x: self.residual(x, condition, layers), (y,), (v,))
        surrogate = jnp.vdot(jax.lax.stop_gradient(neumann), jv)
        return jax.lax.stop_gradient(estimate) + surrogate - jax.lax.stop_gradient(surrogate)

    def _log_det_at(self, y, condition, key):
        return self.exact_log_det(y, condition) if self.log_det == "exact" else self.series_log_det(y, key, condition)

    def inverse_and_log_det(self, y, condition=None, *, key=None):
        return y + self.residual(y, condition), self._log_det_at(y, condition, key)

    def forward(self, x, condition=None, *, key=None):
        """``data`` with ``data + g(data) = x``, by fixed-point iteration (no log-determinant)."""

        layers = self.normalized_layers()

        def body(state):
            i, y, _ = state
            new = x - self.residual(y, condition, layers)
            return i + 1, new, jnp.max(jnp.abs(new - y))

        init = (jnp.asarray(0), x, jnp.asarray(jnp.inf, x.dtype))
        i, y, change = jax.lax.while_loop(lambda s: (s[0] < self.max_iter) & (s[2] > self.tol), body, init)
        return eqx.error_if(y, change > self.tol,
                            f"ResidualBlock inverse did not converge to tol={self.tol} in {self.max_iter} "
                            "fixed-point iterations (is the Lipschitz coefficient below 1?)")

    def forward_and_log_det(self, x, condition=None, *, key=None):
        y = self.forward(x, condition)
        return y, -self._log_det_at(y, condition, key)
