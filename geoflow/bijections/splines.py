"""Monotonic rational-quadratic splines (Durkan et al. 2019, "Neural Spline Flows").

On ``[-bound, bound]`` the map is a rational-quadratic spline with ``knots`` bins; outside it
is the identity (linear tails, slope 1 at the boundary knots so the map is C¹). Inputs are
clipped into the interval *before* the spline maths and the identity is selected after, so
far-away inputs give finite values and finite gradients (masking after the maths would leak
NaN gradients from the unused branch).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .transformers import Transformer


def positive(p):
    """A smooth map ℝ → (0, ∞) with ``positive(0) = 1`` and ``positive(p) ≈ p`` for large ``p``:
    ``(p + √(p² + 4)) / 2``. It plays the role of softplus for the knot derivatives; XLA's CPU
    softplus (exp, log1p and branches) costs ten times as much and dominated the spline layer."""
    return 0.5 * (p + jnp.sqrt(p * p + 4.0))


@jax.custom_jvp
def _pick(table, idx):
    """``table[i, idx[i]]`` for a ``(d, K)`` table and ``(d,)`` integer indices.

    A gather going forward (cheapest for density evaluation and sampling). The tangent is
    written as a one-hot product so that its transpose, the backward pass, is a broadcast
    multiply instead of the gather's scatter-add, which on CPU costs more than the whole
    spline layer.
    """
    return jnp.take_along_axis(table, idx[:, None], axis=-1)[:, 0]


@_pick.defjvp
def _pick_jvp(primals, tangents):
    table, idx = primals
    onehot = idx[:, None] == jnp.arange(table.shape[-1])
    return _pick(table, idx), jnp.sum(jnp.where(onehot, tangents[0], 0.0), axis=-1)


class RationalQuadraticSpline(Transformer):
    """Rational-quadratic spline transformer with ``3·knots − 1`` parameters per element.

    **Arguments:**
    - `knots`: number of bins ``K``.
    - `bound`: the spline acts on ``[-bound, bound]``; identity outside.
    - `min_bin_width`, `min_bin_height`, `min_derivative`: floors that keep the map well
      conditioned.

    Parameter layout per element: ``K`` unnormalised widths, ``K`` unnormalised heights,
    ``K − 1`` unnormalised interior derivatives (mapped to ``(min_derivative, ∞)`` by
    :func:`positive`). All-zero parameters give the identity.
    """

    knots: int = eqx.field(static=True, default=8)
    bound: float = eqx.field(static=True, default=4.0)
    min_bin_width: float = eqx.field(static=True, default=1e-3)
    min_bin_height: float = eqx.field(static=True, default=1e-3)
    min_derivative: float = eqx.field(static=True, default=1e-3)

    def __check_init__(self):
        if self.knots < 2:
            raise ValueError(f"a spline needs at least 2 bins, got knots={self.knots}")
        if self.min_bin_width * self.knots >= 1 or self.min_bin_height * self.knots >= 1:
            raise ValueError("min_bin_width·knots and min_bin_height·knots must be below 1")

    @property
    def num_params(self) -> int:
        return 3 * self.knots - 1

    def _knots(self, params):
        """Knot positions ``(d, K+1)`` in x and y and derivatives ``(d, K+1)`` at every knot."""
        k = self.knots

        # cumulative sums as a matmul with a triangular matrix: XLA's cumsum on CPU (and its
        # gradient) is a reduce-window that costs more than the whole spline
        upper = np.triu(np.ones((k, k + 1), np.float32), 1)

        def positions(raw, floor):
            w = floor + (1 - floor * k) * jax.nn.softmax(raw, axis=-1)
            edges = 2 * self.bound * (w @ upper) - self.bound
            # exact ends so the tails join continuously whatever the rounding
            return edges.at[:, 0].set(-self.bound).at[:, -1].set(self.bound)

        xs = positions(params[:, :k], self.min_bin_width)
        ys = positions(params[:, k : 2 * k], self.min_bin_height)
        inner = self.min_derivative + (1 - self.min_derivative) * positive(params[:, 2 * k :])
        ones = jnp.ones_like(inner[:, :1])
        derivs = jnp.concatenate([ones, inner, ones], axis=-1)
        return xs, ys, derivs

    def _bin_of(self, v, params, in_y: bool):
        """Clip ``v`` into the interval and return it with its bin's knots: ``x0, y0`` (left
        knot), ``w, h`` (bin width and height), ``d0, d1`` (derivatives at both knots)."""
        xs, ys, ds = self._knots(params)
        vc = jnp.clip(v, -self.bound, self.bound)
        edges = ys if in_y else xs
        idx = jnp.sum(vc[:, None] >= edges[:, 1:-1], axis=-1)
        x0, y0 = _pick(xs, idx), _pick(ys, idx)
        w, h = _pick(xs, idx + 1) - x0, _pick(ys, idx + 1) - y0
        return vc, x0, y0, w, h, _pick(ds, idx), _pick(ds, idx + 1)

    def forward(self, x, params):
        inside = jnp.abs(x) < self.bound
        xc, x0, y0, w, h, d0, d1 = self._bin_of(x, params, in_y=False)
        s = h / w
        xi = (xc - x0) / w
        xi1m = xi * (1 - xi)
        denom = s + (d1 + d0 - 2 * s) * xi1m
        y = y0 + h * (s * xi**2 + d0 * xi1m) / denom
        deriv = s**2 * (d1 * xi**2 + 2 * s * xi1m + d0 * (1 - xi) ** 2) / denom**2
        y = jnp.where(inside, y, x)
        logdet = jnp.where(inside, jnp.log(deriv), 0.0)
        return y, jnp.sum(logdet)

    def inverse(self, y, params):
        inside = jnp.abs(y) < self.bound
        yc, x0, y0, w, h, d0, d1 = self._bin_of(y, params, in_y=True)
        s = h / w
        dy = yc - y0
        c2 = d1 + d0 - 2 * s
        a = h * (s - d0) + dy * c2
        b = h * d0 - dy * c2
        c = -s * dy
        disc = jnp.maximum(b**2 - 4 * a * c, 0.0)
        xi = (2 * c) / (-b - jnp.sqrt(disc))
        x = x0 + xi * w
        xi1m = xi * (1 - xi)
        denom = s + c2 * xi1m
        deriv = s**2 * (d1 * xi**2 + 2 * s * xi1m + d0 * (1 - xi) ** 2) / denom**2
        x = jnp.where(inside, x, y)
        logdet = jnp.where(inside, -jnp.log(deriv), 0.0)
        return x, jnp.sum(logdet)
