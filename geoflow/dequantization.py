"""Dequantisation: continuous densities for integer data (pixels), trained on a likelihood bound.

For integer data ``x`` (pixel values ``0 … levels−1``) and any density ``p`` on ``[0, levels)^D``,
``P(x) = ∫_{[0,1)^D} p(x + u) du``; with a noise distribution ``q(u | x)`` on ``[0,1)^D``,
Jensen gives the bound ``log P(x) ≥ E_q[log p(x + u) − log q(u | x)]``.

- *Uniform* dequantisation takes ``q = U[0,1)^D`` (``log q = 0``): the bound is ``E_u log p(x + u)``
  (Theis et al. 2016; RealNVP, Glow).
- *Variational* dequantisation learns ``q`` as a conditional flow (Flow++, Ho et al. 2019), which
  can only tighten the bound: uniform noise is one of the ``q`` it can represent, and the one it
  starts from (:class:`VariationalDequantizer`'s logistic base).

Both are losses for :func:`geoflow.fit`, fed integer-valued data; fresh noise is drawn at every
step. Bits/dim are ``−bound / (D · log 2)`` in the discrete pixel space.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .bijections import Chain, ImageCoupling
from .bijections.glow import check_image_shape
from .bijections.preprocessing import uniform_dequantize
from .distributions import Distribution
from .serialization import register_migration


def uniform_bound(model: Distribution, x: Float[Array, "n ..."], key) -> Array:
    """``log p(x + u)`` with ``u ~ U[0,1)``, one draw per example: an unbiased estimate of the
    uniform-dequantisation bound on ``log P(x)`` for integer ``x`` ``(n, *shape)``; returns ``(n,)``."""
    k_noise, k_model = jax.random.split(key)
    y = uniform_dequantize(k_noise, x, 1)  # x + u: the model's density is over pixel values
    return model.log_prob(y, key=k_model if model.needs_key else None)


class UniformDequantization(eqx.Module):
    """Loss for :func:`geoflow.fit`: the negative uniform-dequantisation bound per example (nats),
    for integer-valued data. :meth:`dequantize` gives the noisy batch ActNorm initializes on."""

    def __call__(self, model, x, condition, key):
        if condition is not None:
            raise ValueError("dequantised image training is unconditional; got a condition")
        return -jnp.mean(uniform_bound(model, x, key))

    def dequantize(self, x, key):
        return uniform_dequantize(key, x, 1)


DEQUANTIZER_BASES = ("logistic", "normal")
# files written before the base was a choice hold Flow++'s normal base
register_migration("geoflow.dequantization.VariationalDequantizer", lambda fields: {"base": "normal", **fields})


class VariationalDequantizer(eqx.Module):
    """``q(u | x)``: noise ``u = sigmoid(f(ε; x))`` with ``f`` a stack of checkerboard affine
    couplings whose networks see the (rescaled) integer image ``x``.

    The couplings start as the identity, so the base of ``ε`` sets where ``q`` starts. With
    ``base="logistic"`` (the default) ``sigmoid(ε)`` is exactly uniform: ``q`` starts as uniform
    dequantisation, bound for bound, and training can only move it where the bound is tighter,
    which is what a dequantiser added to a flow already trained on uniform noise needs. With
    ``base="normal"`` (Flow++'s) it starts as a logit-normal, which no affine stack turns into
    the uniform exactly.

    **Arguments:**
    - `key`; `shape`: ``(c, h, w)`` of the images; `levels`: pixel values ``0 … levels−1``.
    - `couplings`: number of coupling layers (alternating checkerboards); `width`: their networks.
    - `base`: ``"logistic"`` or ``"normal"``, the distribution of ``ε``.
    """

    flow: Chain
    levels: int = eqx.field(static=True)
    shape: tuple[int, ...] = eqx.field(static=True)
    base: str = eqx.field(static=True)

    def __init__(self, shape, *, levels: int = 256, couplings: int = 4, width: int = 32,
                 base: str = "logistic", key):
        self.shape = check_image_shape(shape, "VariationalDequantizer")
        if base not in DEQUANTIZER_BASES:
            raise ValueError(f"unknown dequantizer base {base!r}; expected one of {DEQUANTIZER_BASES}")
        keys = jax.random.split(key, couplings)
        self.flow = Chain([ImageCoupling(self.shape, mask="checkerboard", parity=i % 2, width=width,
                                         cond_channels=self.shape[0], key=k) for i, k in enumerate(keys)])
        self.levels, self.base = levels, base

    def sample_and_log_prob(self, key, x: Float[Array, "c h w"]) -> tuple[Array, Array]:
        """One noise draw ``u ∈ (0, 1)^shape`` for the image ``x`` and ``log q(u | x)``."""
        if self.base == "logistic":
            eps = jax.random.logistic(key, self.shape)
            log_base = _log_sigmoid_slope(eps)  # the standard logistic density is the sigmoid's slope
        else:
            eps = jax.random.normal(key, self.shape)
            log_base = -0.5 * jnp.sum(eps**2) - 0.5 * eps.size * math.log(2 * math.pi)
        context = x / self.levels - 0.5
        v, log_det = self.flow.forward_and_log_det(eps, context)
        return jax.nn.sigmoid(v), log_base - log_det - _log_sigmoid_slope(v)


def _log_sigmoid_slope(z: Array) -> Array:
    """``Σᵢ log σ'(zᵢ) = Σᵢ log σ(zᵢ) + log σ(−zᵢ)``: the sigmoid's log-Jacobian at ``z``."""
    return jnp.sum(jax.nn.log_sigmoid(z) + jax.nn.log_sigmoid(-z))


class VariationallyDequantized(eqx.Module):
    """A density ``flow`` on ``[0, levels)^shape`` with a learned dequantiser: a model of integer
    images that offers only a bound, :meth:`elbo`.

    **Arguments:**
    - `flow`: any flow over pixel values in ``[0, levels)`` (e.g. from :mod:`geoflow.image_flows`).
    - `dequantizer`: a :class:`VariationalDequantizer` of the same shape.
    """

    flow: Distribution
    dequantizer: VariationalDequantizer
    shape: tuple[int, ...] = eqx.field(static=True)
    cond_shape: None = eqx.field(static=True, default=None)

    def __init__(self, flow: Distribution, dequantizer: VariationalDequantizer):
        if flow.shape != dequantizer.shape:
            raise ValueError(f"flow shape {flow.shape} differs from the dequantizer's {dequantizer.shape}")
        self.flow, self.dequantizer, self.shape = flow, dequantizer, flow.shape
        self.cond_shape = None

    @property
    def needs_key(self) -> bool:
        return True

    def elbo(self, x: Float[Array, "n ..."], key, samples: int = 1) -> Array:
        """Monte-Carlo estimate (``samples`` draws) of ``E_q[log p(x + u) − log q(u | x)] ≤ log P(x)``
        for integer images ``x`` ``(n, *shape)``; returns ``(n,)`` in nats."""
        x = jnp.asarray(x, float)
        n = x.shape[0]

        def one_draw(k):
            k_noise, k_model = jax.random.split(k)
            u, log_q = jax.vmap(self.dequantizer.sample_and_log_prob)(jax.random.split(k_noise, n), x)
            log_p = self.flow.log_prob(x + u, key=k_model if self.flow.needs_key else None)
            return log_p - log_q

        return jnp.mean(jax.vmap(one_draw)(jax.random.split(key, samples)), axis=0)

    def needs_data_init(self) -> bool:
        """Whether a layer of the flow (ActNorm) awaits :meth:`data_init`."""
        return self.flow.needs_data_init()

    def data_init(self, x, key) -> VariationallyDequantized:
        """Initialize the flow's ActNorm layers on ``x`` dequantised by the current ``q``."""
        k_noise, k_init = jax.random.split(key)
        x = jnp.asarray(x, float)
        u, _ = jax.vmap(self.dequantizer.sample_and_log_prob)(jax.random.split(k_noise, x.shape[0]), x)
        return VariationallyDequantized(self.flow.data_init(x + u, k_init), self.dequantizer)

    def sample(self, key, sample_shape=()):
        """Integer images: flow samples rounded down into ``0 … levels−1``."""
        from .image_flows import clip_to_pixels

        y = self.flow.sample(key, sample_shape)
        return clip_to_pixels(y, self.dequantizer.levels)


class VariationalDequantization(eqx.Module):
    """Loss for :func:`geoflow.fit` with a :class:`VariationallyDequantized` model: the negative
    variational bound per example (nats); trains the flow and the dequantiser together."""

    def __call__(self, model, x, condition, key):
        if condition is not None:
            raise ValueError("dequantised image training is unconditional; got a condition")
        return -jnp.mean(model.elbo(x, key))


def bound_batched(model, images, key, batch_size: int = 500) -> np.ndarray:
    """The dequantisation bound on ``log P(x)`` (nats) of each integer image ``(n, *shape)``, in
    jitted batches (bounded memory), one noise draw per image; float64 ``(n,)``. For a
    :class:`VariationallyDequantized` model it is :meth:`~VariationallyDequantized.elbo`, for any
    other density :func:`uniform_bound`."""
    bound = _elbo_jit if isinstance(model, VariationallyDequantized) else _uniform_bound_jit
    keys = jax.random.split(key, max(1, math.ceil(len(images) / batch_size)))
    return np.concatenate([np.asarray(bound(model, jnp.asarray(images[i * batch_size : (i + 1) * batch_size]), k),
                                      np.float64) for i, k in enumerate(keys)])


_uniform_bound_jit = eqx.filter_jit(uniform_bound)
_elbo_jit = eqx.filter_jit(lambda model, x, key: model.elbo(x, key))
