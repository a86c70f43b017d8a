"""Affine maps with a full (triangular) matrix: the flow form of a full-covariance Gaussian."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular
from jaxtyping import Array, Float

from .base import Bijection


class TriangularAffine(Bijection):
    """``data = loc + L · latent`` with ``L`` lower triangular and a positive diagonal.

    On a standard normal base this is the Gaussian ``N(loc, L Lᵀ)``; :meth:`fit` gives the
    maximum-likelihood one (the "Gaussian" baseline of density-estimation tables).

    **Arguments:**
    - `loc`: ``(dim,)``; `lower`: ``(dim, dim)``, only its lower triangle is used and its
      diagonal must be positive.
    """

    loc: Float[Array, " dim"]
    lower: Float[Array, "dim dim"]
    shape: tuple[int, ...] = eqx.field(static=True)
    cond_shape: tuple[int, ...] | None = eqx.field(static=True, default=None)

    def __init__(self, loc, lower):
        loc, lower = jnp.asarray(loc), jnp.asarray(lower)
        if loc.ndim != 1 or lower.shape != (loc.shape[0], loc.shape[0]):
            raise ValueError(f"TriangularAffine needs loc (dim,) and lower (dim, dim); got {loc.shape} and {lower.shape}")
        self.loc, self.lower = loc, lower
        self.shape = loc.shape
        self.cond_shape = None

    @classmethod
    def fit(cls, data: Float[Array, "n dim"]) -> TriangularAffine:
        """Sample mean and the Cholesky factor of the maximum-likelihood covariance (computed in
        float64 with NumPy, then cast to the default dtype)."""
        data = np.asarray(data, np.float64)
        if data.ndim != 2 or len(data) <= data.shape[1]:
            raise ValueError(f"fitting a full covariance needs data (n, dim) with n > dim; got {data.shape}")
        mean = data.mean(0)
        cov = np.cov(data, rowvar=False, bias=True)
        return cls(jnp.asarray(mean), jnp.asarray(np.linalg.cholesky(cov)))

    def _matrix(self):
        return jnp.tril(self.lower)

    def forward_and_log_det(self, x, condition=None):
        lower = self._matrix()
        return self.loc + lower @ x, jnp.sum(jnp.log(jnp.abs(jnp.diag(lower))))

    def inverse_and_log_det(self, y, condition=None):
        lower = self._matrix()
        x = solve_triangular(lower, y - self.loc, lower=True)
        return x, -jnp.sum(jnp.log(jnp.abs(jnp.diag(lower))))
