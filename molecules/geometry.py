"""Rigid geometry of point clouds with padding: centring the real atoms and the optimal proper
rotation between two of them (Kabsch). Shared by the molecule flow, its loss and the protein
metrics."""

from __future__ import annotations

import jax.numpy as jnp

from geoflow.precision import exact_matmul


def centre(x, maskf):
    """Positions with the centre of mass of the real atoms at the origin (padding stays 0)."""
    com = jnp.sum(x * maskf[:, None], 0) / jnp.maximum(jnp.sum(maskf), 1)
    return (x - com) * maskf[:, None]


def kabsch_rotation(x0, x1, maskf):
    """The proper rotation ``R`` minimising ``Σ ‖R x0ᵢ − x1ᵢ‖²`` over real atoms (both centred)."""
    h = exact_matmul((x0 * maskf[:, None]).T, x1 * maskf[:, None])
    u, _, vt = jnp.linalg.svd(h)
    d = jnp.sign(jnp.linalg.det(exact_matmul(vt.T, u.T)))
    return exact_matmul(vt.T * jnp.array([1.0, 1.0, 1.0], x0.dtype).at[2].set(d), u.T)
