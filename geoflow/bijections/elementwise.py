"""A transformer with its own free parameters, applied to every element (no conditioner)."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .base import Bijection
from .transformers import Transformer


class Elementwise(Bijection):
    """Apply ``transformer`` to each of ``dim`` elements with learned parameters.

    With an :class:`~geoflow.bijections.Affine` transformer without shift this is NICE's
    final diagonal scaling layer; with a spline it is a learnable marginal transform.
    Parameters start at zero, i.e. at the identity.
    """

    transformer: Transformer
    params: Float[Array, "p dim"]
    shape: tuple[int, ...] = eqx.field(static=True)
    cond_shape: tuple[int, ...] | None = eqx.field(static=True, default=None)

    def __init__(self, transformer: Transformer, dim: int):
        self.transformer = transformer
        self.params = jnp.zeros((transformer.num_params, dim))
        self.shape = (dim,)
        self.cond_shape = None

    def forward_and_log_det(self, x, condition=None):
        return self.transformer.forward(x, tuple(self.params))

    def inverse_and_log_det(self, y, condition=None):
        return self.transformer.inverse(y, tuple(self.params))
