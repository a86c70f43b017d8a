"""Distributions: the protocol every generative model follows, base distributions, and
:class:`Transformed`, which turns a base distribution and a bijection into a flow.

Subclasses implement the single-example methods ``_log_prob``, ``_sample`` (and optionally
``_sample_and_log_prob``); the public methods check input, broadcast leading batch axes of
``x`` and ``condition`` against each other and ``vmap``.

A distribution whose density is a randomised estimate (a continuous flow with a Hutchinson
trace) has ``needs_key = True``: ``log_prob`` then takes ``key=`` and its ``_log_prob`` a
per-example ``key``.
"""

from __future__ import annotations

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .bijections import Bijection
from .bijections.base import call_with_key, needs_data_init
from .checks import check_condition, check_event, check_finite
from .nn import Frozen


class Distribution(eqx.Module):
    """A distribution over events of shape ``shape``, optionally conditioned on a context
    vector of shape ``cond_shape``."""

    shape: eqx.AbstractVar[tuple[int, ...]]
    cond_shape: eqx.AbstractVar[tuple[int, ...] | None]

    @property
    def needs_key(self) -> bool:
        """Whether ``log_prob`` is a randomised estimate that needs ``key=``."""
        return False

    @abc.abstractmethod
    def _log_prob(self, x: Array, condition: Array | None) -> Array:
        """Log-density of one event."""

    @abc.abstractmethod
    def _sample(self, key, condition: Array | None) -> Array:
        """One event."""

    def _sample_and_log_prob(self, key, condition):
        x = self._sample(key, condition)
        return x, self._log_prob(x, condition)

    # ---- public, batched -------------------------------------------------------------
    def log_prob(self, x: Float[Array, "*batch ..."], condition: Array | None = None, *, key=None) -> Array:
        """Log-density of ``x`` (shape ``(*batch, *self.shape)``); returns ``(*batch,)``.

        Exact, except for a model with ``needs_key`` (Hutchinson trace), where it is an
        unbiased estimate drawn with ``key`` (independent probes for every example)."""
        x = check_finite(check_event(x, self.shape, "x"), "x")
        condition = check_condition(condition, self.cond_shape)
        batch = x.shape[: x.ndim - len(self.shape)]
        if condition is not None:
            cbatch = condition.shape[:-1]
            batch = jnp.broadcast_shapes(batch, cbatch)
            condition = jnp.broadcast_to(condition, batch + self.cond_shape).reshape(-1, *self.cond_shape)
        x = jnp.broadcast_to(x, batch + self.shape).reshape(-1, *self.shape)
        if self.needs_key:
            if key is None:
                raise ValueError(f"{type(self).__name__}.log_prob is a Hutchinson estimate here; pass key= "
                                 "(or build the model with trace='exact')")
            keys = jax.random.split(key, x.shape[0])
            lp = jax.vmap(lambda xi, ci, ki: self._log_prob(xi, ci, key=ki))(x, condition, keys)
        else:
            lp = jax.vmap(self._log_prob)(x, condition)
        return lp.reshape(batch)

    def _batched_sample(self, fn, key, sample_shape, condition):
        sample_shape = (sample_shape,) if isinstance(sample_shape, int) else tuple(sample_shape)
        condition = check_condition(condition, self.cond_shape)
        cbatch = () if condition is None else condition.shape[:-1]
        out_batch = sample_shape + cbatch
        n = math.prod(out_batch)
        keys = jax.random.split(key, n)
        if condition is not None:
            condition = jnp.broadcast_to(condition, out_batch + self.cond_shape).reshape(n, -1)
        out = jax.vmap(fn)(keys, condition)
        return jax.tree.map(lambda a: a.reshape(out_batch + a.shape[1:]), out)

    def sample(self, key, sample_shape: int | tuple[int, ...] = (), condition: Array | None = None) -> Array:
        """Samples of shape ``(*sample_shape, *condition_batch, *self.shape)``."""
        return self._batched_sample(self._sample, key, sample_shape, condition)

    def sample_and_log_prob(self, key, sample_shape=(), condition=None) -> tuple[Array, Array]:
        """Samples and their log-densities, cheaper than ``sample`` then ``log_prob`` for flows."""
        return self._batched_sample(self._sample_and_log_prob, key, sample_shape, condition)


class StandardNormal(Distribution):
    """Independent standard normal over ``shape``."""

    shape: tuple[int, ...] = eqx.field(static=True)
    cond_shape: tuple[int, ...] | None = eqx.field(static=True, default=None)

    def __init__(self, shape: tuple[int, ...] | int):
        self.shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.cond_shape = None

    def _log_prob(self, x, condition=None):
        return -0.5 * jnp.sum(x**2) - 0.5 * x.size * math.log(2 * math.pi)

    def _sample(self, key, condition=None):
        return jax.random.normal(key, self.shape)


class DiagonalNormal(Distribution):
    """Normal with learnable mean ``loc`` and log standard deviation ``log_scale``."""

    loc: Float[Array, " dim"]
    log_scale: Float[Array, " dim"]
    shape: tuple[int, ...] = eqx.field(static=True)
    cond_shape: tuple[int, ...] | None = eqx.field(static=True, default=None)

    def __init__(self, loc, scale=1.0):
        loc = jnp.atleast_1d(jnp.asarray(loc, float))
        scale = jnp.broadcast_to(jnp.asarray(scale, float), loc.shape)
        if not bool(jnp.all(scale > 0)):
            raise ValueError("DiagonalNormal needs scale > 0")
        self.loc, self.log_scale = loc, jnp.log(scale)
        self.shape = loc.shape
        self.cond_shape = None

    def _log_prob(self, x, condition=None):
        z = (x - self.loc) * jnp.exp(-self.log_scale)
        return -0.5 * jnp.sum(z**2) - jnp.sum(self.log_scale) - 0.5 * x.size * math.log(2 * math.pi)

    def _sample(self, key, condition=None):
        return self.loc + jnp.exp(self.log_scale) * jax.random.normal(key, self.shape)


class Uniform(Distribution):
    """Uniform on the box ``[low, high]``; ``-inf`` outside it (a true zero density)."""

    bounds: Frozen  # (2, dim): low and high, fixed (not trained by fit, nor weight-decayed)
    shape: tuple[int, ...] = eqx.field(static=True)
    cond_shape: tuple[int, ...] | None = eqx.field(static=True, default=None)

    def __init__(self, low, high):
        low, high = jnp.atleast_1d(jnp.asarray(low, float)), jnp.atleast_1d(jnp.asarray(high, float))
        low, high = jnp.broadcast_arrays(low, high)
        if not bool(jnp.all(high > low)):
            raise ValueError(f"Uniform needs high > low everywhere, got low={low}, high={high}")
        self.bounds = Frozen(jnp.stack([low, high]))
        self.shape = low.shape
        self.cond_shape = None

    @property
    def low(self) -> Float[Array, " dim"]:
        return jax.lax.stop_gradient(self.bounds.value)[0]

    @property
    def high(self) -> Float[Array, " dim"]:
        return jax.lax.stop_gradient(self.bounds.value)[1]

    def _log_prob(self, x, condition=None):
        low, high = self.low, self.high
        inside = jnp.all((x >= low) & (x <= high))
        return jnp.where(inside, -jnp.sum(jnp.log(high - low)), -jnp.inf)

    def _sample(self, key, condition=None):
        return jax.random.uniform(key, self.shape, minval=self.low, maxval=self.high)


class Transformed(Distribution):
    """The flow ``y = bijection.forward(x)``, ``x ~ base``: exact density by change of variables.

    **Arguments:**
    - `base`: an unconditional distribution with the bijection's event shape.
    - `bijection`: latent → data map; its ``cond_shape`` is the flow's.
    """

    base: Distribution
    bijection: Bijection
    shape: tuple[int, ...] = eqx.field(static=True)
    cond_shape: tuple[int, ...] | None = eqx.field(static=True)

    def __init__(self, base: Distribution, bijection: Bijection):
        if base.shape != bijection.shape:
            raise ValueError(f"base event shape {base.shape} differs from the bijection's {bijection.shape}")
        if base.cond_shape is not None:
            raise ValueError("Transformed expects an unconditional base distribution")
        self.base, self.bijection = base, bijection
        self.shape = bijection.shape
        self.cond_shape = bijection.cond_shape

    @property
    def needs_key(self) -> bool:
        return self.bijection.needs_key

    def _log_prob(self, y, condition=None, key=None):
        x, logdet = call_with_key(self.bijection, "inverse_and_log_det", y, condition, key)
        return self.base._log_prob(x, None) + logdet

    def needs_data_init(self) -> bool:
        """Whether a layer of the flow (ActNorm) awaits :meth:`data_init`."""
        return needs_data_init(self.bijection)

    def data_init(self, y: Array, key=None) -> Transformed:
        """The flow with data-dependent parameters (ActNorm) set from the batch ``y`` ``(n, *shape)``;
        :func:`geoflow.fit` calls this on its first batch."""
        return Transformed(self.base, self.bijection.data_init(jnp.asarray(y), None, key)[0])

    def _probe_key(self, key):
        """The key for a randomised log-determinant, independent of the base sample's."""
        return jax.random.fold_in(key, 1) if self.needs_key else None

    def _sample(self, key, condition=None):
        x = self.base._sample(key, None)
        return self.bijection.forward(x, condition, key=self._probe_key(key))

    def _sample_and_log_prob(self, key, condition=None):
        x, lp = self.base._sample_and_log_prob(key, None)
        y, logdet = call_with_key(self.bijection, "forward_and_log_det", x, condition, self._probe_key(key))
        return y, lp - logdet
