"""The rotation group SO(3) as 3 × 3 matrices, with the bi-invariant metric
``⟨U, V⟩ = ½ tr(UᵀV)``, under which the distance between two rotations is the angle of the
rotation taking one to the other (so the volume is 8π²).

Conversions between matrices, rotation vectors (axis · angle) and unit quaternions
``(w, x, y, z)`` are written to be stable at angle 0 (series) and near π (the logarithm goes
through the quaternion, whose axis is well defined there).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from geoflow.precision import exact_matmul

from .base import Manifold


def hat(w):
    """``(3,)`` → the skew matrix ``[w]×`` with ``[w]× v = w × v``."""
    z = jnp.zeros_like(w[0])
    return jnp.array([[z, -w[2], w[1]], [w[2], z, -w[0]], [-w[1], w[0], z]])


def vee(m):
    """Inverse of :func:`hat` (of the skew part of ``m``)."""
    return 0.5 * jnp.array([m[2, 1] - m[1, 2], m[0, 2] - m[2, 0], m[1, 0] - m[0, 1]])


def rotvec_to_matrix(w):
    """Rodrigues' formula ``I + sinθ/θ [w]× + (1 − cosθ)/θ² [w]×²``, smooth at θ = 0."""
    theta2 = jnp.sum(w**2)
    small = theta2 < 1e-6
    t2 = jnp.where(small, 1.0, theta2)
    t = jnp.sqrt(t2)
    a = jnp.where(small, 1 - theta2 / 6 + theta2**2 / 120, jnp.sin(t) / t)
    b = jnp.where(small, 0.5 - theta2 / 24 + theta2**2 / 720, (1 - jnp.cos(t)) / t2)
    k = hat(w)
    return jnp.eye(3, dtype=w.dtype) + a * k + b * exact_matmul(k, k)


def matrix_to_quaternion(r):
    """Shepperd's method: the branch with the largest diagonal term, so no division by ~0.
    Returns ``(w, x, y, z)`` with ``w ≥ 0``."""
    tr = jnp.trace(r)
    candidates = jnp.stack([
        jnp.array([1 + tr, r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]]),
        jnp.array([r[2, 1] - r[1, 2], 1 + 2 * r[0, 0] - tr, r[0, 1] + r[1, 0], r[0, 2] + r[2, 0]]),
        jnp.array([r[0, 2] - r[2, 0], r[0, 1] + r[1, 0], 1 + 2 * r[1, 1] - tr, r[1, 2] + r[2, 1]]),
        jnp.array([r[1, 0] - r[0, 1], r[0, 2] + r[2, 0], r[1, 2] + r[2, 1], 1 + 2 * r[2, 2] - tr]),
    ])
    best = jnp.argmax(jnp.array([tr, r[0, 0], r[1, 1], r[2, 2]]))
    q = jnp.sum(jnp.where((jnp.arange(4) == best)[:, None], candidates, 0.0), axis=0)
    q = q / jnp.sqrt(jnp.sum(q**2) + 1e-30)
    return jnp.where(q[0] < 0, -q, q)


def quaternion_to_matrix(q):
    w, x, y, z = q / jnp.sqrt(jnp.sum(q**2) + 1e-30)
    return jnp.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def quaternion_to_rotvec(q):
    """Axis · angle with angle in ``[0, π]``: ``2 atan2(‖v‖, w) v / ‖v‖``, series at ‖v‖ → 0."""
    q = jnp.where(q[0] < 0, -q, q)
    s2 = jnp.sum(q[1:] ** 2)
    small = s2 < 1e-12
    s = jnp.sqrt(jnp.where(small, 1.0, s2))
    factor = jnp.where(small, 2 / q[0] - 2 * s2 / (3 * q[0] ** 3), 2 * jnp.arctan2(s, q[0]) / s)
    return factor * q[1:]


def matrix_to_rotvec(r):
    return quaternion_to_rotvec(matrix_to_quaternion(r))


def rotvec_to_quaternion(w):
    theta = jnp.sqrt(jnp.sum(w**2) + 1e-30)
    return jnp.concatenate([jnp.cos(theta / 2)[None], jnp.sinc(theta / (2 * jnp.pi)) * 0.5 * w])


class SO3(Manifold):
    """SO(3) ⊂ ℝ³ˣ³ with the bi-invariant metric ``½ tr(UᵀV)`` (distance = rotation angle)."""

    shape: tuple[int, ...] = eqx.field(static=True, default=(3, 3))
    dim: int = eqx.field(static=True, default=3)

    def exp(self, r, v):
        return exact_matmul(r, rotvec_to_matrix(vee(exact_matmul(r.T, v))))

    def log(self, r, s):
        return exact_matmul(r, hat(matrix_to_rotvec(exact_matmul(r.T, s))))

    def proj(self, m):
        """The nearest rotation (polar decomposition by SVD, determinant fixed to +1)."""
        u, _, vt = jnp.linalg.svd(m)
        d = jnp.sign(jnp.linalg.det(exact_matmul(u, vt)))
        return exact_matmul(u * jnp.array([1.0, 1.0, 1.0], m.dtype).at[2].set(d), vt)

    def to_tangent(self, r, v):
        a = exact_matmul(r.T, v)
        return exact_matmul(r, 0.5 * (a - a.T))

    def belongs(self, r, atol=1e-5):
        orthogonal = jnp.max(jnp.abs(exact_matmul(r.T, r) - jnp.eye(3, dtype=r.dtype))) < atol
        return orthogonal & (jnp.abs(jnp.linalg.det(r) - 1.0) < atol)

    def inner(self, r, u, v):
        return 0.5 * jnp.sum(u * v)

    def dist(self, r, s):
        return jnp.sqrt(jnp.sum(matrix_to_rotvec(exact_matmul(r.T, s)) ** 2) + 1e-30)

    def tangent_basis(self, r):
        """``R [eₖ]× / √2``: orthonormal under the ambient (Frobenius) dot product."""
        return jnp.einsum("ij,kjl->kil", r, jax.vmap(hat)(jnp.eye(3, dtype=r.dtype))) / jnp.sqrt(2.0).astype(r.dtype)

    def random_tangent_normal(self, key, r):
        # ω ~ N(0, I₃) has Riemannian norm |ω| under ½ tr: the tangent vector is R [ω]×
        return exact_matmul(r, hat(jax.random.normal(key, (3,), r.dtype)))

    def wrapped_normal_log_prob(self, mean, r, sigma):
        """For a relative rotation of angle ``θ``: ``Σ_j N₃(θ_j; σ) θ_j² / (2(1 − cos θ))`` over
        the preimages ``θ_j = θ + 2πj`` (``j ∈ {−1, 0, 1}``, ample for σ ≲ 1), the inverse
        Jacobian of ``exp`` on so(3)."""
        theta = jnp.linalg.norm(matrix_to_rotvec(exact_matmul(mean.T, r)))
        near_identity = theta < 1e-4
        safe = jnp.where(near_identity, 1.0, theta)
        wraps = safe + 2 * jnp.pi * jnp.arange(-1, 2)
        log_jac = 2 * jnp.log(jnp.abs(wraps)) - jnp.log(2 * (1 - jnp.cos(safe)))
        terms = -0.5 * (wraps / sigma) ** 2 - 1.5 * jnp.log(2 * jnp.pi * sigma**2) + log_jac
        # at the identity only the j = 0 preimage (v = 0, Jacobian 1) has a finite density
        at_identity = -1.5 * jnp.log(2 * jnp.pi * sigma**2)
        return jnp.where(near_identity, at_identity, jax.nn.logsumexp(terms))

    @property
    def compact(self):
        return True

    def random_uniform(self, key, shape=()):
        q = jax.random.normal(key, (*shape, 4))  # uniform unit quaternions → Haar rotations
        flat = q.reshape(-1, 4)
        return jax.vmap(quaternion_to_matrix)(flat).reshape(*shape, 3, 3)

    def log_volume(self):
        return math.log(8 * math.pi**2)
