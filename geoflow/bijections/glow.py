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
from jaxtyping import Array, Float

from .base import Bijection
from .linear import LULinear


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


class InvertibleConv1x1(LULinear):
    """Invertible 1×1 convolution ``data[:, i, j] = W · latent[:, i, j]`` with Glow's LU
    parameterisation of ``W`` (:class:`~geoflow.bijections.linear.LULinear`, applied to every
    pixel's channels). The log-determinant is ``height · width · Σ log_diag``. Starts as a
    random rotation.
    """

    def __init__(self, shape: tuple[int, int, int], *, key):
        c, _, _ = check_image_shape(shape, "InvertibleConv1x1")
        super().__init__(c, key=key)
        self.shape = tuple(shape)

    def _log_det(self):
        return self.shape[1] * self.shape[2] * jnp.sum(self.log_diag)

    def forward_and_log_det(self, x, condition=None):
        return jnp.einsum("ij,jhw->ihw", self.weight, x), self._log_det()

    def inverse_and_log_det(self, y, condition=None):
        return jnp.einsum("ij,jhw->ihw", self.inverse_weight(), y), -self._log_det()
