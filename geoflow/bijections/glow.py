"""Glow's layers for images (Kingma & Dhariwal 2018): ActNorm, the invertible 1×1 convolution
with an LU parameterisation, and squeeze (space-to-depth).

Image events have shape ``(channels, height, width)``; as for every bijection, ``forward`` is
latent → data and the layers are written for one image.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular
from jaxtyping import Array, Float

from ..nn import Frozen
from .base import Bijection


def check_image_shape(shape, who: str) -> tuple[int, int, int]:
    """``shape`` as ``(channels, height, width)``, else a clear error naming ``who`` needs it."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"{who} works on images of shape (channels, height, width); got {shape}")
    return shape


def squeeze(x: Float[Array, "c h w"], factor: int = 2) -> Float[Array, "c*f*f h/f w/f"]:
    """Space-to-depth: every ``factor × factor`` patch becomes ``factor²`` channels. Volume
    preserving; :func:`unsqueeze` inverts it."""
    c, h, w = x.shape
    if h % factor or w % factor:
        raise ValueError(f"squeeze by {factor} needs height and width divisible by {factor}; got {h}×{w}")
    x = x.reshape(c, h // factor, factor, w // factor, factor)
    return x.transpose(0, 2, 4, 1, 3).reshape(c * factor * factor, h // factor, w // factor)


def unsqueeze(x: Float[Array, "c h w"], factor: int = 2) -> Float[Array, "c/f/f h*f w*f"]:
    """Depth-to-space, the inverse of :func:`squeeze`."""
    c, h, w = x.shape
    if c % (factor * factor):
        raise ValueError(f"unsqueeze by {factor} needs channels divisible by {factor * factor}; got {c}")
    x = x.reshape(c // (factor * factor), factor, factor, h, w)
    return x.transpose(0, 3, 1, 4, 2).reshape(c // (factor * factor), h * factor, w * factor)


class ActNorm(Bijection):
    """Per-channel affine map ``data = latent · exp(log_scale) + bias`` (channels are the first
    axis: an image's channels, or every element of a vector).

    Data-dependent initialization (:meth:`data_init`, called by :func:`geoflow.fit` on the first
    batch) sets ``bias`` and ``log_scale`` so that the data-side activations of that batch map to
    zero mean and unit variance per channel; after that they are ordinary parameters.
    ``initialized`` records whether that happened, so a second ``fit`` does not redo it.
    """

    bias: Float[Array, " c"]
    log_scale: Float[Array, " c"]
    initialized: bool = eqx.field(static=True)
    shape: tuple[int, ...] = eqx.field(static=True)
    cond_shape: tuple[int, ...] | None = eqx.field(static=True, default=None)

    def __init__(self, shape: int | tuple[int, ...], *, bias=None, log_scale=None, initialized: bool = False):
        self.shape = (shape,) if isinstance(shape, int) else tuple(int(s) for s in shape)
        c = self.shape[0]
        self.bias = jnp.zeros(c) if bias is None else jnp.asarray(bias)
        self.log_scale = jnp.zeros(c) if log_scale is None else jnp.asarray(log_scale)
        self.initialized = initialized
        self.cond_shape = None

    def _per_channel(self, a):
        return a.reshape(a.shape + (1,) * (len(self.shape) - 1))

    def _log_det(self):
        return math.prod(self.shape[1:]) * jnp.sum(self.log_scale)

    def forward_and_log_det(self, x, condition=None):
        return x * self._per_channel(jnp.exp(self.log_scale)) + self._per_channel(self.bias), self._log_det()

    def inverse_and_log_det(self, y, condition=None):
        return (y - self._per_channel(self.bias)) * self._per_channel(jnp.exp(-self.log_scale)), -self._log_det()

    @property
    def awaiting_data(self) -> bool:
        return not self.initialized

    def data_init(self, y, condition=None, key=None):
        if self.initialized:
            return super().data_init(y, condition, key)
        axes = (0,) + tuple(range(2, y.ndim))  # batch and pixels: statistics per channel
        layer = ActNorm(self.shape, bias=jnp.mean(y, axis=axes),
                        log_scale=jnp.log(jnp.std(y, axis=axes) + 1e-6), initialized=True)
        return layer, jax.vmap(layer.inverse)(y)


def _random_rotation_lu(key, c: int):
    """LU factors of a random orthogonal ``c × c`` matrix (Glow's initialization); traceable, so
    stacked layers can be built under ``filter_vmap``."""
    q, _ = jnp.linalg.qr(jax.random.normal(key, (c, c)))
    p, lower, upper = jax.scipy.linalg.lu(q)
    diag = jnp.diag(upper)
    return p, lower, jnp.triu(upper, 1), jnp.sign(diag), jnp.log(jnp.abs(diag))


class InvertibleConv1x1(Bijection):
    """Invertible 1×1 convolution ``data[:, i, j] = W · latent[:, i, j]`` with
    ``W = P · L · (U + diag(sign · exp(log_diag)))`` (Glow's LU parameterisation).

    ``P`` (a permutation) and ``sign`` are fixed at initialization; ``L`` is unit lower
    triangular and ``U`` strictly upper triangular. The log-determinant is
    ``height · width · Σ log_diag`` — O(c) instead of an O(c³) determinant — and the inverse
    is ``W⁻¹`` from two triangular solves. Starts as a random rotation.
    """

    permutation: Frozen
    sign: Frozen
    lower: Float[Array, "c c"]
    upper: Float[Array, "c c"]
    log_diag: Float[Array, " c"]
    shape: tuple[int, ...] = eqx.field(static=True)
    cond_shape: tuple[int, ...] | None = eqx.field(static=True, default=None)

    def __init__(self, shape: tuple[int, int, int], *, key):
        c, _, _ = self.shape = check_image_shape(shape, "InvertibleConv1x1")
        p, lower, upper, sign, log_diag = _random_rotation_lu(key, c)
        self.permutation, self.sign = Frozen(p), Frozen(sign)
        self.lower, self.upper, self.log_diag = lower, upper, log_diag
        self.cond_shape = None

    def _factors(self):
        c = self.shape[0]
        lower = jnp.tril(self.lower, -1) + jnp.eye(c)
        upper = jnp.triu(self.upper, 1) + jnp.diag(self.sign.value * jnp.exp(self.log_diag))
        return self.permutation.value, lower, upper

    @property
    def weight(self) -> Float[Array, "c c"]:
        p, lower, upper = self._factors()
        return p @ lower @ upper

    def _log_det(self):
        return self.shape[1] * self.shape[2] * jnp.sum(self.log_diag)

    def forward_and_log_det(self, x, condition=None):
        return jnp.einsum("ij,jhw->ihw", self.weight, x), self._log_det()

    def inverse_weight(self) -> Float[Array, "c c"]:
        """``W⁻¹ = U⁻¹ L⁻¹ Pᵀ`` by two triangular solves on the identity; it depends only on the
        parameters, so under ``vmap`` it is computed once per batch, not once per image."""
        p, lower, upper = self._factors()
        eye = jnp.eye(self.shape[0], dtype=lower.dtype)
        inverse = solve_triangular(upper, solve_triangular(lower, eye, lower=True, unit_diagonal=True), lower=False)
        return inverse @ p.T

    def inverse_and_log_det(self, y, condition=None):
        return jnp.einsum("ij,jhw->ihw", self.inverse_weight(), y), -self._log_det()
