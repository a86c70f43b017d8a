"""Priors on manifolds, with the same face as every ``geoflow`` distribution."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from geoflow.distributions import Distribution
from geoflow.nn import Frozen
from geoflow.precision import exact_matmul

from .base import Manifold
from .product import Power, Product
from .so3 import SO3, matrix_to_rotvec, rotvec_to_matrix


class OnManifold(Distribution):
    """A distribution on a manifold: ``log_prob`` takes points in canonical coordinates (torus
    angles wrapped) and refuses points off the manifold with a clear error, as the flow models
    do, instead of scoring them."""

    @property
    def support(self) -> Manifold:
        return self.manifold

    def log_prob(self, x, condition=None, *, key=None):
        return super().log_prob(self.support.check(jnp.asarray(x), "x"), condition, key=key)


class UniformOn(OnManifold):
    """The uniform (normalised Riemannian volume) distribution on a compact manifold."""

    manifold: Manifold
    shape: tuple[int, ...] = eqx.field(static=True)
    cond_shape: tuple[int, ...] | None = eqx.field(static=True, default=None)

    def __init__(self, manifold: Manifold):
        if not manifold.compact:
            raise ValueError(f"{type(manifold).__name__} is not compact: it has no uniform distribution")
        self.manifold = manifold
        self.shape = tuple(manifold.shape)
        self.cond_shape = None

    def _log_prob(self, x, condition=None):
        return jnp.asarray(self.manifold.uniform_log_prob(), x.dtype)

    def _sample(self, key, condition=None):
        return self.manifold.random_uniform(key)


class WrappedNormal(OnManifold):
    """``exp_mean(σ z)`` with ``z`` a standard normal in the tangent space at ``mean`` (isotropic
    in the Riemannian metric), on any manifold with a closed-form
    :meth:`~manifolds.Manifold.wrapped_normal_log_prob` (ℝⁿ, Tⁿ, Sⁿ, SO(3), their products and
    powers). ``log_prob`` is exact, against the Riemannian volume."""

    manifold: Manifold
    fixed_mean: Frozen  # a fixed prior: not trained by fit, nor weight-decayed off the manifold
    sigma: float = eqx.field(static=True)
    shape: tuple[int, ...] = eqx.field(static=True)
    cond_shape: tuple[int, ...] | None = eqx.field(static=True, default=None)

    def __init__(self, manifold: Manifold, mean, sigma: float):
        if not sigma > 0:
            raise ValueError(f"WrappedNormal needs sigma > 0, got {sigma}")
        self.manifold, self.sigma = manifold, float(sigma)
        self.fixed_mean = Frozen(manifold.check(jnp.asarray(mean, jnp.float32), "mean"))
        self.shape, self.cond_shape = tuple(manifold.shape), None

    @property
    def mean(self) -> jax.Array:
        return jax.lax.stop_gradient(self.fixed_mean.value)

    def _log_prob(self, x, condition=None):
        return self.manifold.wrapped_normal_log_prob(self.mean, x, self.sigma)

    def _sample(self, key, condition=None):
        return self.manifold.exp(self.mean, self.sigma * self.manifold.random_tangent_normal(key, self.mean))


class ProductDistribution(OnManifold):
    """Independent parts on the factors of a :class:`~manifolds.Product`, e.g. a rotation prior
    times a Gaussian on translations for SE(3). The density is against the product's volume,
    in which factor ``i`` (metric scale ``sᵢ``) has ``sᵢ^dimᵢ`` times its own volume."""

    manifold: Product
    parts: tuple[Distribution, ...]
    shape: tuple[int, ...] = eqx.field(static=True)
    cond_shape: tuple[int, ...] | None = eqx.field(static=True, default=None)

    def __init__(self, manifold: Product, parts):
        self.manifold, self.parts = manifold, tuple(parts)
        if len(self.parts) != len(manifold.factors):
            raise ValueError(f"{len(manifold.factors)} factors need as many parts, got {len(self.parts)}")
        for i, (f, d) in enumerate(zip(manifold.factors, self.parts)):
            if tuple(d.shape) != tuple(f.shape):
                raise ValueError(f"part {i} has event shape {d.shape}; factor {type(f).__name__} expects {f.shape}")
        self.shape, self.cond_shape = tuple(manifold.shape), None

    def _log_prob(self, x, condition=None):
        return sum(d.log_prob(p) - f.dim * math.log(s) for d, f, s, p in
                   zip(self.parts, self.manifold.factors, self.manifold.scales, self.manifold.split(x)))

    def _sample(self, key, condition=None):
        keys = jax.random.split(key, len(self.parts))
        return self.manifold.join([d.sample(k) for d, k in zip(self.parts, keys)])


class PowerDistribution(OnManifold):
    """``n`` independent copies of one distribution on the factor of a :class:`~manifolds.Power`."""

    manifold: Power
    part: Distribution
    shape: tuple[int, ...] = eqx.field(static=True)
    cond_shape: tuple[int, ...] | None = eqx.field(static=True, default=None)

    def __init__(self, manifold: Power, part: Distribution):
        if tuple(part.shape) != tuple(manifold.manifold.shape):
            raise ValueError(f"part has event shape {part.shape}; {type(manifold.manifold).__name__} expects "
                             f"{manifold.manifold.shape}")
        self.manifold, self.part = manifold, part
        self.shape, self.cond_shape = tuple(manifold.shape), None

    def _log_prob(self, x, condition=None):
        return jnp.sum(self.part.log_prob(x))

    def _sample(self, key, condition=None):
        return self.part.sample(key, (self.manifold.n,))


def se3_prior(manifold: Product, rotation_eps: float | None = None, translation_loc=0.0,
              translation_scale=1.0) -> ProductDistribution:
    """The usual prior on SE(3) = :func:`~manifolds.SE3`: rotations uniform (or IGSO(3) with
    ``rotation_eps``) times a Gaussian ``N(loc, scale²)`` on translations (in data units)."""
    from geoflow.distributions import DiagonalNormal

    rotation = UniformOn(SO3()) if rotation_eps is None else IGSO3(rotation_eps)
    loc = jnp.broadcast_to(jnp.asarray(translation_loc, jnp.float32), (3,))
    return ProductDistribution(manifold, [rotation, DiagonalNormal(loc, translation_scale)])


def igso3_density(omega, eps: float, terms: int = 2000):
    """IGSO(3) density against the *uniform probability* on SO(3), as a function of the rotation
    angle ``ω``: ``Σ_l (2l+1) exp(−l(l+1) ε²/2) sin((l+½)ω) / sin(ω/2)`` (Nikolayev & Savyolova
    1997; Leach et al. 2022), truncated after ``terms`` terms. NumPy float64: the series cancels
    to tiny values in the tail, which float32 cannot resolve; values below 1e-300 are clamped."""
    omega = np.asarray(omega, np.float64)
    ls = np.arange(terms, dtype=np.float64)
    weights = (2 * ls + 1) * np.exp(-ls * (ls + 1) * eps**2 / 2)
    small = omega < 1e-6
    w = np.where(small, 1.0, omega)[..., None]
    ratio = np.where(small[..., None], 2 * ls + 1, np.sin((ls + 0.5) * w) / np.sin(w / 2))
    return np.maximum(np.sum(weights * ratio, axis=-1), 1e-300)


class IGSO3(OnManifold):
    """The isotropic Gaussian on SO(3) with mean ``mean`` (a rotation) and scale ``eps``.

    ``log_prob`` is against the Riemannian volume of :class:`~manifolds.SO3` (total 8π²), like
    every density on the manifold; it interpolates the log-density tabulated (in float64, on
    ``grid_size`` angles) at construction. Sampling draws the angle by the inverse CDF of its
    marginal ``(1 − cos ω)/π · f(ω)`` and the axis uniformly.
    """

    fixed_mean: Frozen
    table: Frozen  # (3, grid): angle grid, log-density and CDF of the angle — fixed, never trained
    eps: float = eqx.field(static=True)
    shape: tuple[int, ...] = eqx.field(static=True, default=(3, 3))
    cond_shape: tuple[int, ...] | None = eqx.field(static=True, default=None)

    def __init__(self, eps: float, mean=None, grid_size: int = 8192):
        if not eps > 0:
            raise ValueError(f"IGSO3 needs eps > 0, got {eps}")
        self.eps = float(eps)
        self.fixed_mean = Frozen(jnp.eye(3) if mean is None else SO3().check(jnp.asarray(mean, jnp.float32), "mean"))
        grid = np.linspace(0.0, np.pi, grid_size)
        density = igso3_density(grid, self.eps, terms=max(2000, int(40 / self.eps)))
        marginal = (1 - np.cos(grid)) / np.pi * density
        cdf = np.concatenate([[0.0], np.cumsum(0.5 * (marginal[1:] + marginal[:-1]) * np.diff(grid))])
        log_density = np.log(density) - math.log(8 * math.pi**2)
        self.table = Frozen(jnp.asarray(np.stack([grid, log_density, cdf / cdf[-1]]), jnp.float32))

    @property
    def support(self) -> Manifold:
        return SO3()

    @property
    def mean(self) -> jax.Array:
        return jax.lax.stop_gradient(self.fixed_mean.value)

    @property
    def grid(self) -> jax.Array:
        return jax.lax.stop_gradient(self.table.value)[0]

    @property
    def log_density(self) -> jax.Array:
        return jax.lax.stop_gradient(self.table.value)[1]

    @property
    def cdf(self) -> jax.Array:
        return jax.lax.stop_gradient(self.table.value)[2]

    def _log_prob(self, r, condition=None):
        omega = jnp.linalg.norm(matrix_to_rotvec(exact_matmul(self.mean.T, r)))
        return jnp.interp(omega, self.grid, self.log_density)

    def _sample(self, key, condition=None):
        k_angle, k_axis = jax.random.split(key)
        omega = jnp.interp(jax.random.uniform(k_angle), self.cdf, self.grid)
        axis = jax.random.normal(k_axis, (3,))
        axis = axis / jnp.linalg.norm(axis)
        return exact_matmul(self.mean, rotvec_to_matrix(omega * axis))


class WrappedNormalMixtureSO3(OnManifold):
    """An equal-weight mixture of wrapped normals on SO(3): component ``k`` is
    ``means[k] · exp([σ_k z]×)`` with ``z ~ N(0, I₃)`` (a rotation vector in radians).

    Its exact density against the Riemannian volume is :meth:`SO3.wrapped_normal_log_prob`.
    """

    fixed_means: Frozen  # a target density: fixed, never trained
    fixed_sigmas: Frozen
    shape: tuple[int, ...] = eqx.field(static=True, default=(3, 3))
    cond_shape: tuple[int, ...] | None = eqx.field(static=True, default=None)

    def __init__(self, means, sigmas):
        means = SO3().check(jnp.asarray(means, jnp.float32), "means")
        if means.ndim != 3:
            raise ValueError(f"means must be a stack of rotations (k, 3, 3); got shape {means.shape}")
        self.fixed_means = Frozen(means)
        self.fixed_sigmas = Frozen(jnp.broadcast_to(jnp.asarray(sigmas, jnp.float32), means.shape[:1]))

    @property
    def support(self) -> Manifold:
        return SO3()

    @property
    def means(self) -> jax.Array:
        return jax.lax.stop_gradient(self.fixed_means.value)

    @property
    def sigmas(self) -> jax.Array:
        return jax.lax.stop_gradient(self.fixed_sigmas.value)

    @classmethod
    def random(cls, key, k: int, concentration: float = 100.0):
        """De Bortoli et al.'s SO(3) mixtures: means uniform on SO(3), precisions 1/σ² drawn from
        Gamma(``concentration``, 1)."""
        k_mean, k_prec = jax.random.split(key)
        precision = jax.random.gamma(k_prec, concentration, (k,))
        return cls(SO3().random_uniform(k_mean, (k,)), 1 / jnp.sqrt(precision))

    def _log_prob(self, r, condition=None):
        so3 = SO3()
        per = jax.vmap(lambda m, s: so3.wrapped_normal_log_prob(m, r, s))(self.means, self.sigmas)
        return jax.nn.logsumexp(per) - jnp.log(per.shape[0])

    def _sample(self, key, condition=None):
        k_comp, k_z = jax.random.split(key)
        c = jax.random.randint(k_comp, (), 0, self.means.shape[0])
        return exact_matmul(self.means[c], rotvec_to_matrix(self.sigmas[c] * jax.random.normal(k_z, (3,))))
