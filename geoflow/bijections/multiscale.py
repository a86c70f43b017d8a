"""The multi-scale architecture of RealNVP and Glow as one bijection on ``(c, h, w)`` images.

One level, data → latent: ``before`` (layers at full resolution, e.g. RealNVP's checkerboard
couplings), squeeze to ``(4c, h/2, w/2)``, ``steps``, then *factor out* half the channels:
the kept half ``h`` goes on to ``inner`` (the next level), the factored half ``z`` is
finished. Glow gives ``z`` a learned conditional Gaussian prior ``N(μ(h), σ(h)²)``; written as
the affine bijection ``z = μ(h) + σ(h)·ε`` with ``ε`` standard normal, that prior is exact and
the whole model stays a bijection onto a standard normal of the image's size. The latent
``(c, h, w)`` array holds the flattened ``inner`` latent followed by the flattened ``ε`` of every
level, so temperature sampling is just scaling the base noise.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ..serialization import register_migration
from .base import Bijection, call_with_key
from .glow import check_image_shape, squeeze, unsqueeze
from .image_coupling import ConvNet
from .transformers import bounded_log_scale


class SplitPrior(eqx.Module):
    """``z = μ(h) + exp(log σ(h)) · ε``: the learned conditional prior of factored channels.
    A zero-initialized network, so it starts as a standard normal.

    `min_log_std` softly floors ``log σ`` (identity above 0, ``b·tanh(raw/b)`` below, with
    ``b = −min_log_std``), so the latent pass ``ε = (z − μ)/σ`` expands by at most
    ``exp(b)``. Unbounded, a prior that learns the near-constant background of MNIST drives
    ``log σ`` to −28 for an image with ink there, and that one image to 10²¹ bits/dim; ordinary
    values lie above −5. ``None`` leaves ``log σ`` unbounded (files written before the floor).
    """

    net: ConvNet
    min_log_std: float | None = eqx.field(static=True)

    def __init__(self, kept_channels: int, factored_channels: int, width: int, *,
                 min_log_std: float | None = -4.0, key):
        if min_log_std is not None and not min_log_std < 0:
            raise ValueError(f"min_log_std must be negative (the floor of log σ) or None, got {min_log_std}")
        self.net = ConvNet(kept_channels, 2 * factored_channels, width, key=key)
        self.min_log_std = min_log_std

    def _params(self, kept):
        raw = self.net(kept)
        half = raw.shape[0] // 2
        mean, log_std = raw[:half], raw[half:]
        if self.min_log_std is not None:
            log_std = jnp.where(log_std >= 0, log_std, bounded_log_scale(log_std, -self.min_log_std))
        return mean, log_std

    def forward(self, eps, kept):
        mean, log_std = self._params(kept)
        return mean + jnp.exp(log_std) * eps, jnp.sum(log_std)

    def inverse(self, z, kept):
        mean, log_std = self._params(kept)
        return (z - mean) * jnp.exp(-log_std), -jnp.sum(log_std)


# files written before the floor existed hold unbounded priors
register_migration("geoflow.bijections.multiscale.SplitPrior", lambda fields: {"min_log_std": None, **fields})


def _keys(key, n):
    return [None] * n if key is None else list(jax.random.split(key, n))


class MultiScale(Bijection):
    """One level of a multi-scale flow (see the module docstring); nest them for more levels.

    **Arguments:**
    - `shape`: the level's input ``(c, h, w)``; ``h`` and ``w`` must be even.
    - `steps`: a bijection on the squeezed shape ``(4c, h/2, w/2)``.
    - `inner`: a bijection on the kept half ``(2c, h/2, w/2)`` (the next level, or the final
      layers), or ``None`` for the last level (nothing is factored out).
    - `prior`: the :class:`SplitPrior` of the factored half, or ``None`` for RealNVP's
      standard normal.
    - `before`: optional layers on ``(c, h, w)`` applied before the squeeze.
    """

    steps: Bijection
    inner: Bijection | None
    prior: SplitPrior | None
    before: Bijection | None
    shape: tuple[int, ...] = eqx.field(static=True)
    cond_shape: tuple[int, ...] | None = eqx.field(static=True, default=None)

    def __init__(self, shape, steps: Bijection, inner: Bijection | None = None,
                 prior: SplitPrior | None = None, before: Bijection | None = None):
        c, h, w = self.shape = check_image_shape(shape, "MultiScale")
        if h % 2 or w % 2:
            raise ValueError(f"a multi-scale level squeezes by 2 and needs even height and width; got {h}×{w}")
        squeezed = (4 * c, h // 2, w // 2)
        if steps.shape != squeezed:
            raise ValueError(f"steps must act on the squeezed shape {squeezed}, got {steps.shape}")
        if inner is not None and inner.shape != (2 * c, h // 2, w // 2):
            raise ValueError(f"inner must act on the kept half {(2 * c, h // 2, w // 2)}, got {inner.shape}")
        if before is not None and before.shape != self.shape:
            raise ValueError(f"before must act on {self.shape}, got {before.shape}")
        if prior is not None and inner is None:
            raise ValueError("a split prior needs an inner level: the last level factors nothing out")
        self.steps, self.inner, self.prior, self.before = steps, inner, prior, before
        self.cond_shape = None

    @property
    def needs_key(self) -> bool:
        return any(b is not None and b.needs_key for b in (self.steps, self.inner, self.before))

    def _kept_size(self) -> int:
        c, h, w = self.shape
        return 2 * c * (h // 2) * (w // 2)

    def inverse_and_log_det(self, y, condition=None, *, key=None):
        k_before, k_steps, k_inner = _keys(key, 3)
        total = jnp.zeros((), y.dtype)
        if self.before is not None:
            y, ld = call_with_key(self.before, "inverse_and_log_det", y, None, k_before)
            total += ld
        y, ld = call_with_key(self.steps, "inverse_and_log_det", squeeze(y), None, k_steps)
        total += ld
        if self.inner is None:
            return y.reshape(self.shape), total
        half = y.shape[0] // 2
        kept, factored = y[:half], y[half:]
        if self.prior is not None:
            factored, ld = self.prior.inverse(factored, kept)
            total += ld
        kept, ld = call_with_key(self.inner, "inverse_and_log_det", kept, None, k_inner)
        latent = jnp.concatenate([kept.ravel(), factored.ravel()])
        return latent.reshape(self.shape), total + ld

    def forward_and_log_det(self, x, condition=None, *, key=None):
        k_before, k_steps, k_inner = _keys(key, 3)
        c, h, w = self.shape
        total = jnp.zeros((), x.dtype)
        if self.inner is None:
            y = x.reshape(4 * c, h // 2, w // 2)
        else:
            flat, n = x.ravel(), self._kept_size()
            kept = flat[:n].reshape(self.inner.shape)
            factored = flat[n:].reshape(self.inner.shape)
            kept, ld = call_with_key(self.inner, "forward_and_log_det", kept, None, k_inner)
            total += ld
            if self.prior is not None:
                factored, ld = self.prior.forward(factored, kept)
                total += ld
            y = jnp.concatenate([kept, factored])
        y, ld = call_with_key(self.steps, "forward_and_log_det", y, None, k_steps)
        y, total = unsqueeze(y), total + ld
        if self.before is not None:
            y, ld = call_with_key(self.before, "forward_and_log_det", y, None, k_before)
            total += ld
        return y, total

    def data_init(self, y, condition=None, key=None):
        k_before, k_steps, k_inner = _keys(jax.random.key(0) if key is None else key, 3)
        data = y
        before = self.before
        if before is not None:
            before, y = before.data_init(y, None, k_before)
        steps, y = self.steps.data_init(jax.vmap(squeeze)(y), None, k_steps)
        inner = self.inner
        if inner is not None:
            kept = y[:, : y.shape[1] // 2]
            inner, _ = inner.data_init(kept, None, k_inner)
        layer = MultiScale(self.shape, steps, inner, self.prior, before)
        return layer, Bijection.data_init(layer, data, None, key)[1]
