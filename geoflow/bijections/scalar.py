"""Element-wise bijections with a closed form — ``Exp``, ``SoftPlus``, ``Sigmoid``, ``Tanh``,
``LeakyTanh``, ``Power``, ``HeavyTails`` — the learnable ``LocScale``, and ``MonotoneInverse``,
which inverts any increasing scalar map by bisection when no closed form exists.

Each maps every coordinate of a vector of ``shape = (dim,)`` (the closed forms also take any
array shape, e.g. an image's ``(c, h, w)``) on its own (the log-determinant is the sum of the
coordinates' ``log f′``). Domains are stated; a point outside maps to NaN
or ±inf as the formula gives, so a model trained through such a layer fails loudly (``fit``
stops at the first non-finite loss).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .base import Bijection


class _Scalar(Bijection):
    """``y = f(x)`` coordinate-wise; a subclass gives ``f``, its inverse and ``log f′(x)``."""

    shape: tuple[int, ...] = eqx.field(static=True)
    cond_shape: tuple[int, ...] | None = eqx.field(static=True, default=None)

    def __init__(self, dim: int | tuple[int, ...]):
        shape = (dim,) if isinstance(dim, int) else tuple(dim)
        if not shape or any(int(n) < 1 for n in shape):
            raise ValueError(f"dim must be a positive number of coordinates or a shape of positive sizes; got {dim}")
        self.shape, self.cond_shape = tuple(int(n) for n in shape), None

    @abc.abstractmethod
    def _f(self, x):
        """``y = f(x)``, coordinate by coordinate."""

    @abc.abstractmethod
    def _f_inverse(self, y):
        """``x = f⁻¹(y)``."""

    @abc.abstractmethod
    def _log_derivative(self, x):
        """``log f′(x)`` per coordinate."""

    def forward_and_log_det(self, x, condition=None):
        return self._f(x), jnp.sum(self._log_derivative(x))

    def inverse_and_log_det(self, y, condition=None):
        x = self._f_inverse(y)
        return x, -jnp.sum(self._log_derivative(x))


class Exp(_Scalar):
    """``y = eˣ``: ℝ → (0, ∞)."""

    def _f(self, x):
        return jnp.exp(x)

    def _f_inverse(self, y):
        return jnp.log(y)

    def _log_derivative(self, x):
        return x


class SoftPlus(_Scalar):
    """``y = log(1 + eˣ)``: ℝ → (0, ∞); ``log f′ = log σ(x)``."""

    def _f(self, x):
        return jax.nn.softplus(x)

    def _f_inverse(self, y):
        return y + jnp.log(-jnp.expm1(-y))

    def _log_derivative(self, x):
        return -jax.nn.softplus(-x)


class Sigmoid(_Scalar):
    """``y = 1/(1 + e⁻ˣ)``: ℝ → (0, 1); ``log f′ = −softplus(−x) − softplus(x)``."""

    def _f(self, x):
        return jax.nn.sigmoid(x)

    def _f_inverse(self, y):
        return jnp.log(y) - jnp.log1p(-y)

    def _log_derivative(self, x):
        return -jax.nn.softplus(-x) - jax.nn.softplus(x)


class Tanh(_Scalar):
    """``y = tanh x``: ℝ → (−1, 1); ``log f′ = 2 (log 2 − x − softplus(−2x))``, stable for large |x|."""

    def _f(self, x):
        return jnp.tanh(x)

    def _f_inverse(self, y):
        return jnp.arctanh(y)

    def _log_derivative(self, x):
        return 2.0 * (math.log(2.0) - x - jax.nn.softplus(-2.0 * x))


class LeakyTanh(_Scalar):
    """``tanh`` on ``[−m, m]`` continued linearly outside with the slope it has at ``±m``:
    ℝ → ℝ, bounded slope, so a flow that meets a far point neither overflows nor saturates."""

    max_val: float = eqx.field(static=True, default=3.0)

    def __init__(self, dim: int, max_val: float = 3.0):
        if not (0 < float(max_val) < float("inf")):
            raise ValueError(f"LeakyTanh needs max_val > 0; got {max_val}")
        super().__init__(dim)
        self.max_val = float(max_val)

    def _edge(self):
        t = math.tanh(self.max_val)
        return t, 1.0 - t * t  # value and slope at +m

    def _f(self, x):
        t, slope = self._edge()
        outside = jnp.sign(x) * (t + slope * (jnp.abs(x) - self.max_val))
        return jnp.where(jnp.abs(x) <= self.max_val, jnp.tanh(x), outside)

    def _f_inverse(self, y):
        t, slope = self._edge()
        outside = jnp.sign(y) * (self.max_val + (jnp.abs(y) - t) / slope)
        return jnp.where(jnp.abs(y) <= t, jnp.arctanh(jnp.clip(y, -t, t)), outside)

    def _log_derivative(self, x):
        _, slope = self._edge()
        inside = 2.0 * (math.log(2.0) - jnp.abs(x) - jax.nn.softplus(-2.0 * jnp.abs(x)))
        return jnp.where(jnp.abs(x) <= self.max_val, inside, math.log(slope))


class HeavyTails(_Scalar):
    """The identity on ``[−a, a]`` with exponential tails outside: ``f(x) = sign(x)·(a + eᵘ − 1)``
    for ``u = |x| − a > 0``; ``log f′ = max(|x| − a, 0)``. ℝ → ℝ, continuously differentiable.

    Placed first in a flow's chain (next to a standard-normal base) it gives the latent a
    heavy-tailed density: a latent value ``z`` far out costs about ``(a + log |z|)²/2 + log |z|``
    nats instead of ``z²/2``, so one input the flow maps far from what it was trained on is scored
    badly, not at 10⁶ nats, while every value within ``a`` standard deviations is unchanged (the
    robustness of Student-t bases, Alexanderson & Henter 2020, with the base left a standard
    normal so temperature sampling still scales it). Sampling overflows only past ``|x| ≈ a + 88``.

    **Arguments:** `dim`: the vector length, or the array shape; `threshold`: ``a > 0``.
    """

    threshold: float = eqx.field(static=True, default=4.0)

    def __init__(self, dim: int | tuple[int, ...], threshold: float = 4.0):
        if not (0 < float(threshold) < float("inf")):
            raise ValueError(f"HeavyTails needs a threshold > 0; got {threshold}")
        super().__init__(dim)
        self.threshold = float(threshold)

    def _excess(self, x):
        return jax.nn.relu(jnp.abs(x) - self.threshold)

    # written as x plus a correction, so the derivative at 0 is 1 (sign·|x| would give 0 there)
    def _f(self, x):
        u = self._excess(x)
        return x + jnp.sign(x) * (jnp.expm1(u) - u)

    def _f_inverse(self, y):
        u = self._excess(y)
        return y + jnp.sign(y) * (jnp.log1p(u) - u)

    def _log_derivative(self, x):
        return self._excess(x)


class Power(_Scalar):
    """``y = xᵖ`` for ``p > 0``: (0, ∞) → (0, ∞); ``log f′ = log p + (p − 1) log x``."""

    exponent: float = eqx.field(static=True, default=1.0)

    def __init__(self, dim: int, exponent: float):
        if not (0 < float(exponent) < float("inf")):
            raise ValueError(f"Power needs an exponent > 0; got {exponent}")
        super().__init__(dim)
        self.exponent = float(exponent)

    def _f(self, x):
        return x**self.exponent

    def _f_inverse(self, y):
        return y ** (1.0 / self.exponent)

    def _log_derivative(self, x):
        return math.log(self.exponent) + (self.exponent - 1.0) * jnp.log(x)


class LocScale(Bijection):
    """``y = loc + scale · x`` per coordinate, ``loc`` and ``log scale`` learnable (a shift
    alone: ``scale=1``; a scaling alone: ``loc=0``; both start where given)."""

    loc: Float[Array, " dim"]
    log_scale: Float[Array, " dim"]
    shape: tuple[int, ...] = eqx.field(static=True)
    cond_shape: tuple[int, ...] | None = eqx.field(static=True, default=None)

    def __init__(self, loc=0.0, scale=1.0, dim: int | None = None):
        loc = jnp.asarray(loc, float)
        shape = jnp.broadcast_shapes(loc.shape, jnp.shape(scale), () if dim is None else (int(dim),))
        if len(shape) != 1:
            raise ValueError(f"LocScale acts on vectors: give loc/scale of shape (dim,) or dim=; got shape {shape}")
        scale = jnp.broadcast_to(jnp.asarray(scale, float), shape)
        if not bool(jnp.all(scale > 0)):
            raise ValueError(f"LocScale needs scale > 0; got {scale}")
        self.loc, self.log_scale = jnp.broadcast_to(loc, shape), jnp.log(scale)
        self.shape, self.cond_shape = shape, None

    def forward_and_log_det(self, x, condition=None):
        return self.loc + jnp.exp(self.log_scale) * x, jnp.sum(self.log_scale)

    def inverse_and_log_det(self, y, condition=None):
        return (y - self.loc) * jnp.exp(-self.log_scale), -jnp.sum(self.log_scale)


class MonotoneInverse(Bijection):
    """A bijection from an increasing scalar map ``f`` known only forward: the inverse is found
    by bisection on ``[low, high]`` (``iterations`` halvings, 50 by default: below float32
    resolution for any bracket up to 10¹⁰ wide), ``log f′`` by autodiff.

    ``f(x, params)`` maps the vector ``x`` ``(dim,)`` coordinate by coordinate and must be
    strictly increasing in each on the bracket; `params` is any pytree of arrays (learnable). A ``y`` outside ``(f(low), f(high))`` maps to the nearer end.
    """

    f: Callable = eqx.field(static=True)
    params: object
    low: float = eqx.field(static=True)
    high: float = eqx.field(static=True)
    iterations: int = eqx.field(static=True)
    shape: tuple[int, ...] = eqx.field(static=True)
    cond_shape: tuple[int, ...] | None = eqx.field(static=True, default=None)

    def __init__(self, f: Callable, params, dim: int, *, low: float = -1e3, high: float = 1e3, iterations: int = 50):
        if not low < high:
            raise ValueError(f"MonotoneInverse needs a bracket low < high; got [{low}, {high}]")
        if int(iterations) < 1:
            raise ValueError(f"iterations must be positive; got {iterations}")
        self.f, self.params, self.low, self.high, self.iterations = f, params, float(low), float(high), int(iterations)
        self.shape, self.cond_shape = (int(dim),), None

    def _log_derivative(self, x):
        # f acts coordinate by coordinate, so its Jacobian is diagonal: one JVP with ones gives it
        return jnp.log(jax.jvp(lambda v: self.f(v, self.params), (x,), (jnp.ones_like(x),))[1])

    def forward_and_log_det(self, x, condition=None):
        return self.f(x, self.params), jnp.sum(self._log_derivative(x))

    def inverse_and_log_det(self, y, condition=None):
        x = solve_increasing(lambda v: self.f(v, self.params), y, self.low, self.high, self.iterations)
        return x, -jnp.sum(self._log_derivative(x))


def solve_increasing(f: Callable, target, low: float, high: float, iterations: int):
    """The ``x`` in ``[low, high]`` with ``f(x) = target``, for ``f`` increasing coordinate by
    coordinate: bisection (``iterations`` halvings) for the value, then a Newton step that moves
    nothing, so that the derivatives are the implicit ones (``dx/d target = 1/f′``, and
    ``dx/dθ = −∂f/∂θ / f′`` for whatever ``f`` closes over) and gradients flow through it."""
    frozen = jax.lax.stop_gradient

    def halve(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        below = frozen(f(mid)) < target
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    start = jnp.zeros_like(target)
    lo, hi = jax.lax.fori_loop(0, iterations, halve, (start + low, start + high))
    x = frozen(0.5 * (lo + hi))
    fx, slope = jax.jvp(f, (x,), (jnp.ones_like(x),))
    residual = fx - target
    return x - (residual - frozen(residual)) / frozen(slope)
