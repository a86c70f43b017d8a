"""Element-wise monotone maps whose parameters come from a conditioner network.

A *transformer* (the term of Papamakarios et al. 2021) maps a vector ``x`` of shape ``(d,)``
element by element. Its per-element parameters come parameter-major: ``params`` is a tuple of
``num_params`` arrays of shape ``(d,)``, the ``j``-th holding every element's ``j``-th
parameter. Conditioners produce them with :func:`geoflow.nn.output_parts`, which keeps each
one a contiguous block under ``vmap`` (why: see there).
Coupling layers, MADE layers and :class:`~geoflow.bijections.Elementwise` all use them.
Every transformer maps zero parameters to the identity, so zero-initialised conditioners
start each layer as the identity.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float


class Transformer(eqx.Module):
    """Element-wise bijection family. ``forward`` is latent → data, as for bijections;
    both directions return the *sum* of the element-wise log-derivatives."""

    @property
    @abc.abstractmethod
    def num_params(self) -> int:
        """Parameters per element."""

    @abc.abstractmethod
    def forward(self, x: Float[Array, " d"], params: Sequence[Float[Array, " d"]]) -> tuple[Array, Array]:
        """``(y, sum log|dy/dx|)``."""

    @abc.abstractmethod
    def inverse(self, y: Float[Array, " d"], params: Sequence[Float[Array, " d"]]) -> tuple[Array, Array]:
        """``(x, sum log|dx/dy|)``."""


class Additive(Transformer):
    """``y = x + t`` (NICE). Volume preserving."""

    @property
    def num_params(self) -> int:
        return 1

    def forward(self, x, params):
        (shift,) = params
        return x + shift, jnp.zeros((), x.dtype)

    def inverse(self, y, params):
        (shift,) = params
        return y - shift, jnp.zeros((), y.dtype)


def bounded_log_scale(raw: Array, bound: float) -> Array:
    """Smoothly clip a raw log-scale to ``(-bound, bound)``; the identity near zero."""
    return bound * jnp.tanh(raw / bound)


class Affine(Transformer):
    """``y = exp(s) · x + t`` with ``s`` softly bounded to ``(-max_log_scale, max_log_scale)``.

    **Arguments:**
    - `max_log_scale`: the bound on ``|s|`` (RealNVP's bounded scales, keeps training stable).
    - `shift`: learn ``t`` too; ``False`` gives the pure diagonal scaling of NICE's last layer.
    """

    max_log_scale: float = eqx.field(static=True, default=5.0)
    shift: bool = eqx.field(static=True, default=True)

    @property
    def num_params(self) -> int:
        return 2 if self.shift else 1

    def _unpack(self, params):
        """Parameters ``(shift, raw log-scale)``, or ``(raw log-scale,)`` without shift."""
        log_scale = bounded_log_scale(params[-1], self.max_log_scale)
        t = params[0] if self.shift else 0.0
        return t, log_scale

    def forward(self, x, params):
        t, s = self._unpack(params)
        return x * jnp.exp(s) + t, jnp.sum(s)

    def inverse(self, y, params):
        t, s = self._unpack(params)
        return (y - t) * jnp.exp(-s), -jnp.sum(s)
