"""The Lie-group exponential and logarithm of SE(3), beside :func:`~manifolds.SE3`'s product metric.

A twist ``ξ = (ω, v)`` (rotation vector and translational part) maps to the rigid motion
``exp([ξ]) = (exp([ω]×), J(ω) v)`` of the 4×4 matrix exponential of ``[[ω]×, v; 0, 0]``, where
``J`` is SO(3)'s left Jacobian. Unlike the product metric's geodesics, this couples rotation and
translation (a screw motion). Coefficients switch to Taylor series near ``θ = 0``; the inverse
Jacobian's coefficient is written with ``cot(θ/2)``, which stays finite up to ``θ = π``.
"""

from __future__ import annotations

import jax.numpy as jnp

from geoflow.precision import exact_matmul

from .so3 import hat, matrix_to_rotvec, rotvec_to_matrix

_SMALL = 1e-2  # below this angle the series (to θ⁴) are exact in float32 and float64


def _theta(omega):
    return jnp.sqrt(jnp.sum(omega**2))


def left_jacobian(omega):
    """``J(ω) = I + (1 − cos θ)/θ² [ω]× + (θ − sin θ)/θ³ [ω]×²`` ``(3, 3)``."""
    theta = _theta(omega)
    small = theta < _SMALL
    t = jnp.where(small, 1.0, theta)
    a = jnp.where(small, 0.5 - theta**2 / 24 + theta**4 / 720, (1 - jnp.cos(t)) / t**2)
    b = jnp.where(small, 1 / 6 - theta**2 / 120 + theta**4 / 5040, (t - jnp.sin(t)) / t**3)
    k = hat(omega)
    return jnp.eye(3, dtype=omega.dtype) + a * k + b * exact_matmul(k, k)


def left_jacobian_inverse(omega):
    """``J(ω)⁻¹ = I − ½[ω]× + (1 − (θ/2) cot(θ/2))/θ² [ω]×²`` ``(3, 3)``, for ``θ < 2π``."""
    theta = _theta(omega)
    small = theta < _SMALL
    t = jnp.where(small, 1.0, theta)
    c = jnp.where(small, 1 / 12 + theta**2 / 720 + theta**4 / 30240,
                  (1 - 0.5 * t * jnp.cos(0.5 * t) / jnp.sin(0.5 * t)) / t**2)
    k = hat(omega)
    return jnp.eye(3, dtype=omega.dtype) - 0.5 * k + c * exact_matmul(k, k)


def twist_exp(xi):
    """The rigid motion ``(R (3, 3), t (3,))`` of the twist ``ξ = (ω, v)`` ``(6,)``."""
    omega, v = xi[:3], xi[3:]
    return rotvec_to_matrix(omega), exact_matmul(left_jacobian(omega), v)


def twist_log(rotation, translation):
    """The twist ``(6,)`` with rotation angle in ``[0, π]`` whose exponential is ``(R, t)``."""
    omega = matrix_to_rotvec(rotation)
    return jnp.concatenate([omega, exact_matmul(left_jacobian_inverse(omega), translation)])
