"""Coupling layers (Dinh et al.: NICE, RealNVP; Durkan et al.: spline coupling)."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp

from ..nn import MLP
from .base import Bijection
from .transformers import Transformer


class Coupling(Bijection):
    """``y[:split] = x[:split]``, ``y[split:] = τ(x[split:]; θ(x[:split], condition))``.

    The conditioner θ is an MLP whose last layer starts at zero, so the layer starts as the
    identity. Alternate which half is transformed by putting a
    :class:`~geoflow.bijections.Reverse` or :class:`~geoflow.bijections.Permute` between layers.

    **Arguments:**
    - `key`: initialization key.
    - `transformer`: the element-wise map (``Additive``, ``Affine``, ``RationalQuadraticSpline``).
    - `dim`: event size; `split`: number of untouched leading elements (default ``dim // 2``).
    - `cond_dim`: size of the context vector, or ``None``.
    - `width`, `depth`, `activation`: the conditioner MLP.
    """

    transformer: Transformer
    conditioner: MLP
    split: int = eqx.field(static=True)
    shape: tuple[int, ...] = eqx.field(static=True)
    cond_shape: tuple[int, ...] | None = eqx.field(static=True)

    def __init__(self, *, transformer: Transformer, dim: int, split: int | None = None,
                 cond_dim: int | None = None, width: int = 64, depth: int = 2,
                 activation: str = "relu", compute_dtype: str | None = None, key):
        if dim < 2:
            raise ValueError(f"a coupling layer needs at least 2 dimensions, got dim={dim}")
        split = dim // 2 if split is None else split
        if not 0 < split < dim:
            raise ValueError(f"split must be in 1..{dim - 1}, got {split}")
        self.transformer = transformer
        self.split = split
        self.shape = (dim,)
        self.cond_shape = None if cond_dim is None else (cond_dim,)
        self.conditioner = MLP(split + (cond_dim or 0), (dim - split) * transformer.num_params,
                               width, depth, key=key, activation=activation, zero_last=True,
                               compute_dtype=compute_dtype)

    def _params(self, x_fixed, condition):
        inp = x_fixed if condition is None else jnp.concatenate([x_fixed, condition])
        return self.conditioner.parts(inp, self.transformer.num_params)

    def forward_and_log_det(self, x, condition=None):
        fixed, moved = x[: self.split], x[self.split :]
        moved, logdet = self.transformer.forward(moved, self._params(fixed, condition))
        return jnp.concatenate([fixed, moved]), logdet

    def inverse_and_log_det(self, y, condition=None):
        fixed, moved = y[: self.split], y[self.split :]
        moved, logdet = self.transformer.inverse(moved, self._params(fixed, condition))
        return jnp.concatenate([fixed, moved]), logdet
