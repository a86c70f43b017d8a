"""The :class:`Manifold` interface: Riemannian geometry of a manifold embedded in ℝⁿ, for one
point at a time (``vmap`` for batches), pure JAX and safe under ``jit``, ``vmap`` and ``grad``.

Points and tangent vectors are arrays of the ambient ``shape`` (``(3,)`` for S², ``(3, 3)`` for
SO(3) matrices). A manifold holds no arrays, only static sizes, so it can sit inside any model.
"""

from __future__ import annotations

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp


class Manifold(eqx.Module):
    """A Riemannian manifold in an ambient Euclidean space.

    Subclasses set ``shape`` (ambient event shape) and ``dim`` (intrinsic dimension) and
    implement ``exp``, ``log``, ``proj``, ``to_tangent`` and ``belongs``; the rest has defaults
    in terms of those. ``inner`` defaults to the ambient dot product.
    """

    shape: eqx.AbstractVar[tuple[int, ...]]
    dim: eqx.AbstractVar[int]

    @abc.abstractmethod
    def exp(self, x, v):
        """The point reached at time 1 along the geodesic from ``x`` with velocity ``v``."""

    @abc.abstractmethod
    def log(self, x, y):
        """The tangent vector at ``x`` whose exponential is ``y`` (the shortest one)."""

    @abc.abstractmethod
    def proj(self, x):
        """The nearest point of the manifold to an ambient point ``x`` (a retraction's last step)."""

    @abc.abstractmethod
    def to_tangent(self, x, v):
        """Orthogonal projection of an ambient vector ``v`` onto the tangent space at ``x``."""

    @abc.abstractmethod
    def belongs(self, x, atol: float = 1e-5):
        """Whether ``x`` lies on the manifold within ``atol``."""

    def inner(self, x, u, v):
        """Riemannian inner product of tangent vectors ``u, v`` at ``x``."""
        return jnp.sum(u * v)

    def norm(self, x, v):
        return jnp.sqrt(jnp.maximum(self.inner(x, v, v), 1e-30))

    def dist(self, x, y):
        """Geodesic distance."""
        v = self.log(x, y)
        return jnp.sqrt(self.inner(x, v, v))

    def geodesic(self, x, y, t):
        """The point at time ``t`` on the shortest geodesic from ``x`` (``t = 0``) to ``y`` (``t = 1``)."""
        return self.exp(x, t * self.log(x, y))

    @property
    def compact(self) -> bool:
        return False

    def random_uniform(self, key, shape=()):
        """Uniform samples ``(*shape, *self.shape)`` (compact manifolds only)."""
        raise TypeError(f"{type(self).__name__} is not compact: it has no uniform distribution")

    def log_volume(self):
        """Log of the Riemannian volume (compact manifolds only)."""
        raise TypeError(f"{type(self).__name__} is not compact: it has no finite volume")

    def uniform_log_prob(self):
        """Log-density of the uniform distribution: ``−log volume``."""
        return -self.log_volume()

    def random_tangent_normal(self, key, x):
        """A standard normal tangent vector at ``x`` (isotropic in the Riemannian metric). The
        default projects an ambient normal, right whenever ``inner`` is the ambient dot product."""
        return self.to_tangent(x, jax.random.normal(key, self.shape, x.dtype))

    def wrapped_normal_log_prob(self, mean, x, sigma):
        """Log-density (against the Riemannian volume) of ``exp_mean(σ z)``, ``z`` a standard
        tangent normal at ``mean``: the tangent Gaussian summed over the preimages of ``x`` under
        ``exp_mean``, each divided by the Jacobian of ``exp``."""
        raise TypeError(f"{type(self).__name__} has no closed-form wrapped normal density")

    def tangent_basis(self, x):
        """``(dim, *shape)``: an orthonormal basis (ambient dot product) of the tangent space at
        ``x``; the Riemannian divergence of a tangent field is ``Σᵢ eᵢᵀ J eᵢ`` over it. The
        default takes the ``dim`` leading eigenvectors of the tangent projection's matrix;
        manifolds with a closed form override it (fewer directions pushed through the field)."""
        n = math.prod(self.shape)
        basis = jnp.eye(n, dtype=x.dtype).reshape(n, *self.shape)
        projector = jax.vmap(lambda e: self.to_tangent(x, e).reshape(-1))(basis).T
        _, vectors = jnp.linalg.eigh(0.5 * (projector + projector.T))
        return vectors[:, n - self.dim :].T.reshape(self.dim, *self.shape)

    def canonical(self, x):
        """The same point in the manifold's canonical coordinates (one point): the identity,
        except where several coordinates name one point (angles of a torus)."""
        return x

    def check(self, x, name: str = "x", atol: float = 1e-4):
        """``x`` (any leading batch axes) in canonical coordinates, with a clear error if it is
        off the manifold."""
        from geoflow.checks import check_event

        x = check_event(x, self.shape, name)
        flat = jax.vmap(self.canonical)(x.reshape(-1, *self.shape))
        x = flat.reshape(x.shape)
        on = jnp.all(jax.vmap(lambda p: self.belongs(p, atol))(flat))
        return eqx.error_if(x, ~on, f"{name} has points off the {self!r} manifold (tolerance {atol}); "
                                    f"expected points of {type(self).__name__} (use manifold.proj to project)")
