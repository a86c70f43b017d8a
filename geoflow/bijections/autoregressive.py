"""Masked autoregressive layers (MAF, Papamakarios et al. 2017; IAF, Kingma et al. 2016)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ..nn import MaskedMLP
from .base import Bijection
from .transformers import Transformer


class MaskedAutoregressive(Bijection):
    """Autoregressive layer ``y_i = τ(x_i; θ_i(y_{<i}, condition))`` with a MADE conditioner.

    ``inverse`` (data → latent, i.e. density evaluation) is one network pass: this is MAF.
    ``forward`` (sampling) needs ``dim`` sequential passes. Wrap it in
    :class:`~geoflow.bijections.Invert` to get IAF, where sampling is the single pass.

    **Arguments:**
    - `key`, `transformer`, `dim`, `cond_dim`: as for :class:`Coupling`.
    - `width`, `depth`, `activation`: the MADE network.
    - `order`: ``"sequential"``, ``"random"`` or an explicit permutation of ``1..dim``.
    """

    transformer: Transformer
    made: MaskedMLP
    shape: tuple[int, ...] = eqx.field(static=True)
    cond_shape: tuple[int, ...] | None = eqx.field(static=True)

    def __init__(self, *, transformer: Transformer, dim: int, cond_dim: int | None = None,
                 width: int = 64, depth: int = 2, activation: str = "relu", order="sequential", key):
        self.transformer = transformer
        self.made = MaskedMLP(dim, transformer.num_params, width, depth, key=key,
                              cond_dim=cond_dim or 0, order=order, activation=activation)
        self.shape = (dim,)
        self.cond_shape = None if cond_dim is None else (cond_dim,)

    def inverse_and_log_det(self, y, condition=None):
        return self.transformer.inverse(y, self.made(y, condition))

    def forward_and_log_det(self, x, condition=None):
        # after pass k the elements of degree <= k are exact: dim - 1 passes, then the last
        # one gives every element and the log-determinant
        def body(_, y):
            return self.transformer.forward(x, self.made(y, condition))[0]

        # unrolled for a few dimensions: XLA:CPU runs a loop body well below the speed of the
        # same operations unrolled; beyond that a loop keeps compile time flat in dim
        passes = self.shape[0] - 1
        y = jax.lax.fori_loop(0, passes, body, jnp.zeros_like(x), unroll=passes <= 8)
        return self.transformer.forward(x, self.made(y, condition))
