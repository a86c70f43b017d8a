"""Monotonic rational-quadratic splines (Durkan et al. 2019, "Neural Spline Flows").

On ``[-bound, bound]`` the map is a rational-quadratic spline with ``knots`` bins; outside it
is the identity (linear tails, slope 1 at the boundary knots so the map is C¹). Inputs are
clipped into the interval *before* the spline maths and the identity is selected after, so
far-away inputs give finite values and finite gradients (masking after the maths would leak
NaN gradients from the unused branch).

Why the loops over bins: the number of bins is small and static, so the knots, the bin search
and the choice of the bin's knots are written bin by bin (Python loops over ``(d,)`` arrays).
Every step is then element-wise and XLA fuses the whole spline — softmaxes, cumulative sums,
search and selection — into one pass over the batch, and its gradient into another. The
array formulation (softmax over a bin axis, cumulative sums, gathers) ran as dozens of small
kernels and spent most of its time moving ``(batch, d, K)`` tables through memory.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp

from .transformers import Transformer


def positive(p):
    """A smooth map ℝ → (0, ∞) with ``positive(0) = 1`` and ``positive(p) ≈ p`` for large ``p``:
    ``(p + √(p² + 4)) / 2``. It plays the role of softplus for the knot derivatives; XLA's CPU
    softplus (exp, log1p and branches) costs ten times as much and dominated the spline layer."""
    return 0.5 * (p + jnp.sqrt(p * p + 4.0))


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

    def _edges(self, raw, floor):
        """Knot positions ``[-bound, …, bound]`` (``K + 1`` arrays of shape ``(d,)``) from ``K``
        unnormalised bin sizes: ``floor + (1 − K·floor)·softmax(raw)`` of the interval each."""
        k, bound = self.knots, self.bound
        top = raw[0]
        for r in raw[1:]:
            top = jnp.maximum(top, r)
        sizes = [jnp.exp(r - top) for r in raw]
        partial, total = [], sizes[0]
        for s in sizes[1:]:
            partial.append(total)
            total = total + s
        scale = 2 * bound * (1 - floor * k) / total
        inner = [2 * bound * floor * j - bound + scale * p for j, p in enumerate(partial, start=1)]
        # the ends are exact, so the tails join continuously whatever the rounding
        return [-bound] + inner + [bound]

    def _knots(self, params):
        """Knot x and y positions and the derivatives at every knot, each ``K + 1`` arrays
        ``(d,)``, from the ``3K − 1`` parameter arrays ``(d,)``."""
        k = self.knots
        xs = self._edges(params[:k], self.min_bin_width)
        ys = self._edges(params[k : 2 * k], self.min_bin_height)
        inner = [self.min_derivative + (1 - self.min_derivative) * positive(c) for c in params[2 * k :]]
        return xs, ys, [1.0] + inner + [1.0]

    def _bin_of(self, v, params, in_y: bool):
        """Clip ``v`` into the interval and return it with its bin's knots: ``x0, y0`` (left
        knot), ``w, h`` (bin width and height), ``d0, d1`` (derivatives at both knots)."""
        xs, ys, ds = self._knots(params)
        vc = jnp.clip(v, -self.bound, self.bound)
        edges = ys if in_y else xs
        x0, x1, y0, y1, d0, d1 = xs[0], xs[1], ys[0], ys[1], ds[0], ds[1]
        # the edges increase, so the last bin whose left edge lies below v is v's bin
        for j in range(1, self.knots):
            above = vc >= edges[j]
            x0, x1 = jnp.where(above, xs[j], x0), jnp.where(above, xs[j + 1], x1)
            y0, y1 = jnp.where(above, ys[j], y0), jnp.where(above, ys[j + 1], y1)
            d0, d1 = jnp.where(above, ds[j], d0), jnp.where(above, ds[j + 1], d1)
        return vc, x0, y0, x1 - x0, y1 - y0, d0, d1

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
