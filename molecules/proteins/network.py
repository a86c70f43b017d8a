"""An SE(3)-equivariant network over residue frames in the spirit of invariant point attention
(AlphaFold 2; FrameFlow's backbone): every input it reads is invariant — relative translations
and rotations expressed in a residue's own frame, distances between points that residues place
in their frames, residue-index offsets, time — and its outputs are velocities in each residue's
local frame, mapped to the global frame at the end. Rotating and translating every frame
together therefore rotates the velocities and leaves them otherwise unchanged, exactly. It is
not reflection-equivariant: proteins are chiral.

Works on one fragment; ``vmap`` for batches.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from geoflow.continuous.fields import time_features
from geoflow.nn import MLP, scan_layers
from geoflow.serialization import register_migration
from manifolds.so3 import hat, rotvec_to_matrix


def _rbf(distance, count: int, top: float):
    centres = jnp.linspace(0.0, top, count)
    return jnp.exp(-(((distance[..., None] - centres) / (top / count)) ** 2))


def index_embedding(values, count: int):
    """``count`` sinusoidal features of residue indices or offsets (wavelengths up to 64·2π)."""
    angle = values[..., None] / jnp.exp(jnp.linspace(0.0, math.log(64.0), count // 2))
    return jnp.concatenate([jnp.sin(angle), jnp.cos(angle)], -1)


def frame_pair_features(rotations, translations, radial: int, top: float):
    """Invariant features of every pair of frames ``(L, L, 12 + radial)``: ``j``'s position and
    rotation in ``i``'s frame and a radial basis of their distance."""
    rel = translations[None, :] - translations[:, None]  # t_j − t_i at [i, j]
    local = jnp.einsum("iba,ijb->ija", rotations, rel)  # R_iᵀ (t_j − t_i)
    relative_rotation = jnp.einsum("iba,jbc->ijac", rotations, rotations)  # R_iᵀ R_j
    distance = jnp.sqrt(jnp.sum(rel**2, -1) + 1e-10)
    n = rotations.shape[0]
    return jnp.concatenate([local, relative_rotation.reshape(n, n, 9), _rbf(distance, radial, top)], -1)


def pair_features(rotations, translations, offsets: int, radial: int, top: float):
    """:func:`frame_pair_features` and a sinusoidal embedding of the index offset ``j − i``:
    ``(L, L, 12 + radial + offsets)``."""
    n = rotations.shape[0]
    index = jnp.arange(n)
    offset = (index[None, :] - index[:, None]).astype(rotations.dtype)
    return jnp.concatenate([frame_pair_features(rotations, translations, radial, top),
                            index_embedding(offset, offsets)], -1)


class _PointAttention(eqx.Module):
    """One round of attention over residues with invariant scalar and point terms, then a transition."""

    qkv: MLP
    points: MLP
    pair_bias: MLP
    point_weights: Float[Array, " H"]
    out: MLP
    transition: MLP
    norm1: eqx.nn.LayerNorm
    norm2: eqx.nn.LayerNorm
    heads: int = eqx.field(static=True)
    head_dim: int = eqx.field(static=True)
    num_points: int = eqx.field(static=True)

    def __init__(self, width: int, pair: int, heads: int, head_dim: int, num_points: int, *, key):
        k = jax.random.split(key, 5)
        self.heads, self.head_dim, self.num_points = heads, head_dim, num_points
        self.qkv = MLP(width, 3 * heads * head_dim, width, 0, key=k[0])
        self.points = MLP(width, 3 * heads * num_points * 3, width, 0, key=k[1])  # query, key, value points
        self.pair_bias = MLP(pair, heads, width, 0, key=k[2])
        self.point_weights = jnp.zeros(heads)
        out_in = heads * (head_dim + num_points * 4 + pair)
        self.out = MLP(out_in, width, width, 0, key=k[3], zero_last=True)
        self.transition = MLP(width, width, 2 * width, 1, key=k[4], activation="silu", zero_last=True)
        self.norm1, self.norm2 = eqx.nn.LayerNorm(width), eqx.nn.LayerNorm(width)

    def point_weight(self):
        """``γ (H,)``: each head's weight on its squared point distances."""
        return jax.nn.softplus(self.point_weights) * math.sqrt(2.0 / (9.0 * self.num_points))

    def queries(self, h, rotations, translations):
        """Scalar queries, keys, values ``(L, H, head_dim)`` each and the query, key and value
        points ``(L, H, P, 3)`` each, which every residue places in its own frame, in the global frame."""
        n, hd, p = h.shape[0], self.heads, self.num_points
        q, k, v = jnp.split(jax.vmap(self.qkv)(h).reshape(n, hd, 3 * self.head_dim), 3, -1)
        pts = jax.vmap(self.points)(h).reshape(n, 3, hd, p, 3)
        glob = jnp.einsum("nab,nshpb->nshpa", rotations, pts) + translations[:, None, None, None]
        return q, k, v, glob[:, 0], glob[:, 1], glob[:, 2]

    def attention(self, q, k, query_points, key_points, pair):
        """``softmax_j(q_i·k_j/√d + b(pair_ij) − ½γ Σ_p |qp_i − kp_j|²)`` per head, ``(L, L, H)``.

        Computed as one contraction of ``[q/√d, γ·qp]`` with ``[k, kp]`` less ``½γ|kp_j|²``:
        ``|qp_i|²`` is the same for every ``j`` and drops out of the softmax, and no
        ``(L, L, H, P, 3)`` array of differences is formed (a sixth of the network's time at L = 64).
        """
        n, hd = q.shape[:2]
        gamma = self.point_weight()
        qp, kp = query_points.reshape(n, hd, -1), key_points.reshape(n, hd, -1)
        logits = (jnp.einsum("ihc,jhc->ijh", jnp.concatenate([q / math.sqrt(self.head_dim), gamma[:, None] * qp], -1),
                             jnp.concatenate([k, kp], -1))
                  - 0.5 * gamma * jnp.sum(kp**2, -1)[None] + jax.vmap(jax.vmap(self.pair_bias))(pair))
        return jax.nn.softmax(logits, axis=1)  # over j

    def __call__(self, h, pair, rotations, translations):
        n, hd, p = h.shape[0], self.heads, self.num_points
        q, k, v, qp, kp, vp = self.queries(h, rotations, translations)
        attn = self.attention(q, k, qp, kp, pair)
        # the scalar and point values summed in one contraction
        summed = jnp.einsum("ijh,jhc->ihc", attn, jnp.concatenate([v, vp.reshape(n, hd, 3 * p)], -1))
        scalars = summed[..., :self.head_dim]
        points = summed[..., self.head_dim:].reshape(n, hd, p, 3) - translations[:, None, None]
        points = jnp.einsum("iba,ihpb->ihpa", rotations, points)  # back in residue i's frame: invariant
        norms = jnp.sqrt(jnp.sum(points**2, -1) + 1e-8)
        pairs = jnp.einsum("ijh,ije->ihe", attn, pair)
        features = jnp.concatenate([scalars.reshape(n, -1), points.reshape(n, -1), norms.reshape(n, -1),
                                    pairs.reshape(n, -1)], -1)
        h = jax.vmap(self.norm1)(h + jax.vmap(self.out)(features))
        return jax.vmap(self.norm2)(h + jax.vmap(self.transition)(h))


class FrameNetwork(eqx.Module):
    """``network(t, rotations (L, 3, 3), translations (L, 3)) -> (Ṙ (L, 3, 3), ṫ (L, 3))``:
    ``Ṙᵢ = Rᵢ [ωᵢ]×`` and ``ṫᵢ = Rᵢ vᵢ`` with ``(ωᵢ, vᵢ)`` read off invariant features, and
    ``ṫ`` with zero mean (the fragment stays centred).

    With ``self_conditioning=True`` the network also reads features of an earlier prediction
    (:meth:`previous_features`: the earlier outputs in each residue's frame and the pair
    geometry of the clean frames they point at, FrameFlow's self-conditioning and AlphaFold's
    recycling); without one it reads zeros.

    **Arguments:** `key`; `width` (residue features), `pair` (pair features), `layers`, `heads`,
    `head_dim`, `num_points` (points per head), `radial` (distance basis), `distance_top` (the
    basis covers ``[0, distance_top]`` in the model's length unit), `time_embedding`,
    `self_conditioning`.
    """

    node_in: MLP
    pair_in: MLP
    layers: _PointAttention  # stacked, run with lax.scan
    head: MLP
    previous_node: MLP | None
    previous_pair: MLP | None
    radial: int = eqx.field(static=True)
    offsets: int = eqx.field(static=True)
    distance_top: float = eqx.field(static=True)
    time_embedding: int = eqx.field(static=True)

    def __init__(self, *, key, width: int = 128, pair: int = 64, layers: int = 4, heads: int = 4, head_dim: int = 16,
                 num_points: int = 4, radial: int = 16, offsets: int = 16, distance_top: float = 2.0,
                 time_embedding: int = 32, self_conditioning: bool = False):
        k = jax.random.split(key, 6)
        self.radial, self.offsets, self.distance_top, self.time_embedding = radial, offsets, float(distance_top), time_embedding
        self.node_in = MLP(time_embedding + offsets, width, width, 1, key=k[0], activation="silu")
        self.pair_in = MLP(12 + radial + offsets, pair, pair, 1, key=k[1], activation="silu")
        self.layers = eqx.filter_vmap(lambda kk: _PointAttention(width, pair, heads, head_dim, num_points, key=kk))(
            jax.random.split(k[2], layers))
        self.head = MLP(width, 6, width, 1, key=k[3], activation="silu")
        self.previous_node = self.previous_pair = None
        if self_conditioning:
            self.previous_node = MLP(6, width, width, 1, key=k[4], activation="silu")
            self.previous_pair = MLP(12 + radial, pair, pair, 1, key=k[5], activation="silu")

    @property
    def self_conditioning(self) -> bool:
        return self.previous_node is not None

    def __call__(self, t, rotations, translations):
        omega, displacement = self.outputs(t, rotations, translations)
        return rotations @ jax.vmap(hat)(omega), displacement

    def previous_features(self, rotations, translations, omega, displacement):
        """What the network reads of an earlier prediction ``(ω (L, 3), d (L, 3))`` made at these
        frames: ``(node (L, 6), pair (L, L, 12 + radial))``, the prediction in each residue's own
        frame, ``(ωᵢ, Rᵢᵀdᵢ)``, and :func:`frame_pair_features` of the clean frames it points
        at, ``(Rᵢ exp[ωᵢ]×, t + d)``. All invariant."""
        node = jnp.concatenate([omega, jnp.einsum("nba,nb->na", rotations, displacement)], -1)
        clean_rotations = rotations @ jax.vmap(rotvec_to_matrix)(omega)
        return node, frame_pair_features(clean_rotations, translations + displacement, self.radial, self.distance_top)

    def no_previous(self, length: int, dtype, batch: tuple[int, ...] = ()):
        """The :meth:`previous_features` read when there is no earlier prediction: zeros
        ``(node (*batch, L, 6), pair (*batch, L, L, 12 + radial))``."""
        return (jnp.zeros((*batch, length, 6), dtype), jnp.zeros((*batch, length, length, 12 + self.radial), dtype))

    def outputs(self, t, rotations, translations, previous=None):
        """``(ω (L, 3), d (L, 3))``: per residue a rotation vector in its own frame and a global
        displacement with zero mean, ``d = Rᵢ vᵢ − mean``; :meth:`__call__` reads them as the
        velocities ``(Rᵢ[ωᵢ]×, dᵢ)``, a clean-frame field as the way to the clean frames.
        ``previous``: :meth:`previous_features` of an earlier prediction, or None (none yet; read
        only by a self-conditioning network)."""
        n = rotations.shape[0]
        pair = jax.vmap(jax.vmap(self.pair_in))(
            pair_features(rotations, translations, self.offsets, self.radial, self.distance_top))
        position = index_embedding(jnp.arange(n, dtype=rotations.dtype), self.offsets)
        tf = jnp.broadcast_to(time_features(t, self.time_embedding), (n, self.time_embedding))
        h = jax.vmap(self.node_in)(jnp.concatenate([tf, position], -1))
        if self.self_conditioning and previous is None:
            # no earlier prediction: the readings of zero features, one row broadcast to every
            # residue and pair (sampling reads none in the first pass of every step)
            h = h + self.previous_node(jnp.zeros(6, h.dtype))
            pair = pair + self.previous_pair(jnp.zeros(12 + self.radial, pair.dtype))
        elif self.self_conditioning:
            node_previous, pair_previous = previous
            h = h + jax.vmap(self.previous_node)(node_previous)
            pair = pair + jax.vmap(jax.vmap(self.previous_pair))(pair_previous)
        # unrolled: a few layers, each large enough that fusing across them pays (scan_layers)
        h = scan_layers(self.layers, lambda layer, h, _: layer(h, pair, rotations, translations), h, unroll=True)
        out = jax.vmap(self.head)(h)
        omega, v = out[:, :3], out[:, 3:]
        displacement = jnp.einsum("nab,nb->na", rotations, v)
        return omega, displacement - jnp.mean(displacement, 0)


# files saved before self-conditioning existed hold networks without it
register_migration("molecules.proteins.network.FrameNetwork",
                   lambda fields: {"previous_node": None, "previous_pair": None, **fields})
