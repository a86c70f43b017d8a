"""Backbone geometry: residue frames from N, CA, C atoms and back, dihedral angles, and a
chain builder from (φ, ψ, ω) for tests and ideal structures.

A residue frame is a rotation ``R`` (3, 3) and a translation ``t`` (3,) at CA: ``e₁`` points
from CA to C, ``e₂`` is the part of CA→N orthogonal to ``e₁`` (Gram–Schmidt), ``e₃ = e₁ × e₂``,
and ``R = [e₁ e₂ e₃]`` (columns). Atoms in the residue's local frame are ``Rᵀ (x − t)``.
Ideal geometry is Engh & Huber's (1991). Everything works on one chain; ``vmap`` for batches.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from manifolds.so3 import hat

N_CA, CA_C, C_N, C_O = 1.458, 1.525, 1.329, 1.231  # bond lengths, Å
N_CA_C, CA_C_N, C_N_CA, CA_C_O = (math.radians(a) for a in (111.2, 116.2, 121.7, 120.1))  # bond angles
# N, CA, C in the local frame of their own residue (ideal geometry)
IDEAL_LOCAL = np.array([[N_CA * math.cos(N_CA_C), N_CA * math.sin(N_CA_C), 0.0], [0.0, 0.0, 0.0], [CA_C, 0.0, 0.0]],
                       np.float32)
ATOMS = ("N", "CA", "C", "O")
LENGTH_SCALE = 0.1  # the models' length unit per Å: translations in nm, as FrameFlow's


def _unit(v):
    return v / jnp.sqrt(jnp.sum(v**2, -1, keepdims=True) + 1e-12)


def frames_from_backbone(backbone):
    """``(R (L, 3, 3), t (L, 3))`` from backbone atoms ``(L, ≥3, 3)`` in the order N, CA, C[, O]."""
    n, ca, c = backbone[:, 0], backbone[:, 1], backbone[:, 2]
    e1 = _unit(c - ca)
    u = n - ca
    e2 = _unit(u - jnp.sum(u * e1, -1, keepdims=True) * e1)
    e3 = jnp.cross(e1, e2)
    return jnp.stack([e1, e2, e3], -1), ca


def place_atom(a, b, c, bond: float, angle, torsion):
    """The atom ``d`` with ``|cd| = bond``, angle ``b-c-d = angle`` and dihedral ``a-b-c-d =
    torsion`` (radians): the natural-extension reference frame (NeRF) step."""
    bc = _unit(c - b)
    normal = _unit(jnp.cross(b - a, bc))
    m = jnp.stack([bc, jnp.cross(normal, bc), normal], -1)
    angle, torsion = jnp.broadcast_arrays(jnp.asarray(angle), jnp.asarray(torsion))
    local = bond * jnp.stack([-jnp.cos(angle), jnp.sin(angle) * jnp.cos(torsion), jnp.sin(angle) * jnp.sin(torsion)], -1)
    return c + jnp.einsum("...ij,...j->...i", m, local)


def dihedral(a, b, c, d):
    """The dihedral angle ``a-b-c-d`` in ``(−π, π]`` (batched over leading axes)."""
    b0, b1, b2 = a - b, c - b, d - c
    b1u = _unit(b1)
    v = b0 - jnp.sum(b0 * b1u, -1, keepdims=True) * b1u
    w = b2 - jnp.sum(b2 * b1u, -1, keepdims=True) * b1u
    x = jnp.sum(v * w, -1)
    y = jnp.sum(jnp.cross(b1u, v) * w, -1)
    return jnp.arctan2(y, x)


def ideal_nca_c(rotations, translations):
    """Atoms N, CA, C ``(L, 3, 3)`` in ideal geometry on frames ``(L, 3, 3), (L, 3)`` (what the
    frames alone fix; :func:`backbone_from_frames` adds O)."""
    return jnp.einsum("lij,aj->lai", rotations, jnp.asarray(IDEAL_LOCAL, rotations.dtype)) + translations[:, None]


def backbone_from_frames(rotations, translations, psi=None):
    """Atoms N, CA, C, O ``(L, 4, 3)`` in ideal geometry from frames ``(L, 3, 3), (L, 3)``.

    O lies in the peptide plane at the torsion ``N-CA-C-O = ψ + π``. ``psi`` (L,) gives ψ;
    without it, ψ of residue ``i`` is read from the next residue's N (the idealized oxygen), and
    the last residue, which has no next N, takes its neighbour's ψ."""
    nca_c = ideal_nca_c(rotations, translations)
    n, ca, c = nca_c[:, 0], nca_c[:, 1], nca_c[:, 2]
    if psi is None:
        psi = dihedral(n[:-1], ca[:-1], c[:-1], n[1:])
        psi = jnp.concatenate([psi, psi[-1:]]) if psi.shape[0] else jnp.zeros(1, rotations.dtype)
    o = place_atom(n, ca, c, C_O, CA_C_O, psi + jnp.pi)
    return jnp.concatenate([nca_c, o[:, None]], 1)


def backbone_dihedrals(backbone):
    """``(φ, ψ)`` in radians, each ``(L,)``, with NaN where undefined (φ of the first residue,
    ψ of the last): ``φᵢ = C_{i−1}-Nᵢ-CAᵢ-Cᵢ``, ``ψᵢ = Nᵢ-CAᵢ-Cᵢ-N_{i+1}``."""
    n, ca, c = backbone[:, 0], backbone[:, 1], backbone[:, 2]
    nan = jnp.full((1,), jnp.nan, backbone.dtype)
    phi = jnp.concatenate([nan, dihedral(c[:-1], n[1:], ca[1:], c[1:])])
    psi = jnp.concatenate([dihedral(n[:-1], ca[:-1], c[:-1], n[1:]), nan])
    return phi, psi


def backbone_from_dihedrals(phi, psi, omega=None):
    """A chain ``(L, 4, 3)`` in ideal geometry with the given φ, ψ (and ω, default trans π)
    angles in radians, each ``(L,)`` (φ₀ and ψ_{L−1} are unused except ψ placing the last O)."""
    phi, psi = np.asarray(phi, np.float64), np.asarray(psi, np.float64)
    omega = np.full_like(phi, np.pi) if omega is None else np.asarray(omega, np.float64)
    n = np.array(IDEAL_LOCAL[0], np.float64)
    ca, c = np.zeros(3), np.array(IDEAL_LOCAL[2], np.float64)
    atoms = [[n, ca, c]]
    for i in range(1, len(phi)):
        pn, pca, pc = atoms[-1]
        n = np.asarray(place_atom(pn, pca, pc, C_N, CA_C_N, psi[i - 1]))
        ca = np.asarray(place_atom(pca, pc, n, N_CA, C_N_CA, omega[i - 1]))
        c = np.asarray(place_atom(pc, n, ca, CA_C, N_CA_C, phi[i]))
        atoms.append([n, ca, c])
    nca_c = np.asarray(atoms, np.float64)
    o = np.asarray(place_atom(nca_c[:, 0], nca_c[:, 1], nca_c[:, 2], C_O, CA_C_O, psi + np.pi))
    return np.concatenate([nca_c, o[:, None]], 1).astype(np.float32)


def torsion_axes(backbone):
    """The axes of torsions ``θ = (φ₀, ψ₀, φ₁, …)`` of backbone atoms ``(L, A, 3)`` (N, CA, C
    first): unit directions ``(2L, 3)`` (Nᵢ→CAᵢ for ``φᵢ``, CAᵢ→Cᵢ for ``ψᵢ``) and the points
    ``(2L, 3)`` they pass through at their far end (CAᵢ, Cᵢ), about which the chain after them turns."""
    n, ca, c = backbone[:, 0], backbone[:, 1], backbone[:, 2]
    start = jnp.stack([n, ca], 1).reshape(-1, 3)
    end = jnp.stack([ca, c], 1).reshape(-1, 3)
    return _unit(end - start), end


def turn_torsions(backbone, turns):
    """Backbone atoms ``(L, A, 3)`` (N, CA, C[, O]) with each ``φᵢ`` turned by ``turns[i, 0]`` and
    ``ψᵢ`` by ``turns[i, 1]`` (radians, ``(L, 2)``), bond lengths, bond angles and ω unchanged.

    Turning ``φᵢ`` rotates everything after CAᵢ in chain order (Cᵢ, Oᵢ, then the residues after
    ``i``) about the axis Nᵢ→CAᵢ; turning ``ψᵢ`` rotates everything after Cᵢ (Oᵢ, which lies in the
    peptide plane ψᵢ places, then the next residues) about CAᵢ→Cᵢ; the chain before stays put.
    Applied from the chain's end, every turn finds its axis where the input has it, so the result
    is the composition ``T₀ ∘ T₁ ∘ … ∘ T_k`` of the turns about the input's axes, with ``k`` the
    last torsion before the atom: a prefix of compositions (``O(L)``), not a loop over atoms."""
    axis, end = torsion_axes(backbone)  # torsion 2i is φᵢ, 2i + 1 is ψᵢ
    theta = turns.reshape(-1, 1, 1)
    cross = jax.vmap(hat)(axis)
    rotation = (jnp.eye(3, dtype=backbone.dtype) + jnp.sin(theta) * cross
                + (1 - jnp.cos(theta)) * jnp.einsum("kij,kjl->kil", cross, cross))  # Rodrigues
    shift = end - jnp.einsum("kij,kj->ki", rotation, end)  # x ↦ R (x − e) + e

    def compose(first, second):  # first ∘ second
        r1, t1 = first
        r2, t2 = second
        return jnp.einsum("...ij,...jk->...ik", r1, r2), jnp.einsum("...ij,...j->...i", r1, t2) + t1

    rotations, shifts = jax.lax.associative_scan(compose, (rotation, shift))
    identity = (jnp.eye(3, dtype=backbone.dtype)[None], jnp.zeros((1, 3), backbone.dtype))
    rotations, shifts = (jnp.concatenate([i, x]) for i, x in zip(identity, (rotations, shifts)))
    length = backbone.shape[0]
    # the last torsion each atom follows, offset by the identity: N, CA of residue i follow ψ_{i−1};
    # C follows φᵢ; O and any later atom ψᵢ
    last = 2 * jnp.arange(length)[:, None] + jnp.array([0, 0, 1] + [2] * (backbone.shape[1] - 3))
    return jnp.einsum("laij,laj->lai", rotations[last], backbone) + shifts[last]


__all__ = ["ATOMS", "IDEAL_LOCAL", "backbone_dihedrals", "backbone_from_dihedrals", "backbone_from_frames",
           "dihedral", "frames_from_backbone", "ideal_nca_c", "place_atom", "turn_torsions"]
