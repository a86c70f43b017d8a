"""Linear maps of vectors: a triangular affine map (the flow form of a full-covariance
Gaussian), a general matrix in Glow's LU parameterisation, and products of Householder
reflections (orthogonal, log-determinant 0)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular
from jaxtyping import Array, Float

from ..nn import Frozen
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


def random_rotation_lu(key, c: int):
    """LU factors ``(P, L, U strictly upper, sign, log|diag|)`` of a random orthogonal ``c × c``
    matrix (Glow's initialization); traceable, so stacked layers can be built under ``filter_vmap``."""
    q, _ = jnp.linalg.qr(jax.random.normal(key, (c, c)))
    p, lower, upper = jax.scipy.linalg.lu(q)
    diag = jnp.diag(upper)
    return p, lower, jnp.triu(upper, 1), jnp.sign(diag), jnp.log(jnp.abs(diag))


class LULinear(Bijection):
    """``data = W · latent`` for vectors of size ``dim`` with ``W = P · L · (U + diag(sign ·
    exp(log_diag)))`` (Glow's LU parameterisation): any invertible matrix near the start.

    ``P`` (a permutation) and ``sign`` are fixed at initialization; ``L`` is unit lower
    triangular and ``U`` strictly upper triangular. The log-determinant is ``Σ log_diag`` —
    O(dim) instead of an O(dim³) determinant — and the inverse is ``W⁻¹`` from two triangular
    solves. Starts as a random rotation.
    """

    permutation: Frozen
    sign: Frozen
    lower: Float[Array, "c c"]
    upper: Float[Array, "c c"]
    log_diag: Float[Array, " c"]
    shape: tuple[int, ...] = eqx.field(static=True)
    cond_shape: tuple[int, ...] | None = eqx.field(static=True, default=None)

    def __init__(self, dim: int, *, key):
        p, lower, upper, sign, log_diag = random_rotation_lu(key, int(dim))
        self.permutation, self.sign = Frozen(p), Frozen(sign)
        self.lower, self.upper, self.log_diag = lower, upper, log_diag
        self.shape, self.cond_shape = (int(dim),), None

    def _factors(self):
        c = self.log_diag.shape[0]
        lower = jnp.tril(self.lower, -1) + jnp.eye(c)
        upper = jnp.triu(self.upper, 1) + jnp.diag(self.sign.value * jnp.exp(self.log_diag))
        return self.permutation.value, lower, upper

    @property
    def weight(self) -> Float[Array, "c c"]:
        p, lower, upper = self._factors()
        return p @ lower @ upper

    def inverse_weight(self) -> Float[Array, "c c"]:
        """``W⁻¹ = U⁻¹ L⁻¹ Pᵀ`` by two triangular solves on the identity; it depends only on the
        parameters, so under ``vmap`` it is computed once per batch, not once per example."""
        p, lower, upper = self._factors()
        eye = jnp.eye(lower.shape[0], dtype=lower.dtype)
        inverse = solve_triangular(upper, solve_triangular(lower, eye, lower=True, unit_diagonal=True), lower=False)
        return inverse @ p.T

    def _log_det(self):
        return jnp.sum(self.log_diag)

    def forward_and_log_det(self, x, condition=None):
        return self.weight @ x, self._log_det()

    def inverse_and_log_det(self, y, condition=None):
        return self.inverse_weight() @ y, -self._log_det()


class Householder(Bijection):
    """``data = H₁ ⋯ H_k · latent`` with reflections ``Hᵢ = I − 2 vᵢvᵢᵀ/‖vᵢ‖²`` (learnable
    ``vᵢ``): an orthogonal map, log-determinant 0, its inverse the reflections in reverse order.
    ``dim`` reflections reach every orthogonal matrix of determinant ``(−1)^dim``."""

    vectors: Float[Array, "k dim"]
    shape: tuple[int, ...] = eqx.field(static=True)
    cond_shape: tuple[int, ...] | None = eqx.field(static=True, default=None)

    def __init__(self, dim: int, reflections: int | None = None, *, key):
        k = int(dim) if reflections is None else int(reflections)
        if k < 1:
            raise ValueError(f"Householder needs at least one reflection; got {reflections}")
        self.vectors = jax.random.normal(key, (k, int(dim)))
        self.shape, self.cond_shape = (int(dim),), None

    @staticmethod
    def _reflect(x, v):
        return x - 2.0 * jnp.dot(v, x) / jnp.dot(v, v) * v

    def forward_and_log_det(self, x, condition=None):
        for v in self.vectors[::-1]:  # H_k first: data = H₁ (H₂ (⋯ H_k x))
            x = self._reflect(x, v)
        return x, jnp.zeros((), x.dtype)

    def inverse_and_log_det(self, y, condition=None):
        for v in self.vectors:
            y = self._reflect(y, v)
        return y, jnp.zeros((), y.dtype)
