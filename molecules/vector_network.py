"""A light E(3)-equivariant network with scalar and vector channels (PaiNN/GVP-style), sized for
CPUs: the same inputs, outputs and symmetries as :class:`molecules.network.EquivariantNetwork`.

Node state: scalars ``s (N, F)`` and vectors ``v (N, 3, V)``; edge state ``e (N, N, E)``. A layer
computes one hidden pair feature

    ``h_ij = silu(A s_i + B s_j + C [rbf(d_ij), e_ij])``   ``(N, N, H)``

— the node projections are computed once per atom, so the only per-pair matrix products are
``C`` and the read-outs of ``h`` — and from it

- scalar messages ``Δs_i = W_s Σ_j h_ij`` (the sum is taken before the projection, which is linear);
- vector messages ``Δv_i = Σ_j g_ij ⊙ v_j + g'_ij ⊙ (x_j − x_i)/(1 + d_ij)`` with gates ``(g, g') = W_v h_ij``;
- an edge update ``e_ij += W_e h_ij``;

then PaiNN's update mixes the two kinds: ``s += a(s, ‖U v‖)``, ``v += b(s, ‖U v‖) ⊙ W v``. Each
layer reads its input normalised (scalars per atom to zero mean and unit variance, vectors by
their RMS norm), so that products of vectors cannot grow with depth or molecule size. The
cost per pair and layer is ``(R + E)·H + H·(2V + E)`` multiply-adds; e3nn's tensor-product layer
pays a per-pair MLP and a spherical-harmonic tensor product on top.

Vectors are polar (built from relative positions), so outputs are equivariant under rotations
and reflections; scalars are invariant under both (the network does not see chirality, as
EDM's EGNN does not). Bond logits read ``(e_ij + e_ji)/2``, so they are symmetric in the pair.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from geoflow.continuous.fields import time_features
from geoflow.nn import MLP, scan_layers
from geoflow.serialization import register_migration

from .network import radial_basis, zero_prediction


def _dense(key, in_size: int, out_size: int, scale: float = 1.0) -> Float[Array, "in out"]:
    """A weight matrix for ``x @ w`` with variance ``scale / in_size`` (LeCun)."""
    return jax.random.normal(key, (in_size, out_size)) * math.sqrt(scale / in_size)


def _normalized(s, v):
    """Scalars with zero mean and unit variance over channels, and vectors divided by their RMS
    norm over channels (``+1``: zero stays zero). Both operations commute with rotations and
    reflections; they keep the layers' products bounded at any depth and molecule size."""
    s = (s - jnp.mean(s, -1, keepdims=True)) / jnp.sqrt(jnp.var(s, -1, keepdims=True) + 1e-5)
    rms = jnp.sqrt(jnp.mean(jnp.sum(v**2, 1), -1) + 1.0)
    return s, v / rms[:, None, None]


class _VectorLayer(eqx.Module):
    sender: Float[Array, "F H"]
    receiver: Float[Array, "F H"]
    pair_in: Float[Array, "RE H"]
    pair_bias: Float[Array, " H"]
    scalar_out: Float[Array, "H F"]
    gates_out: Float[Array, "H V2"]
    edge_out: Float[Array, "H E"]
    mix_u: Float[Array, "V V"]
    mix_w: Float[Array, "V V"]
    update: MLP

    def __init__(self, scalars: int, vectors: int, edge_size: int, radial: int, pair_width: int, *, key):
        k = jax.random.split(key, 8)
        self.sender, self.receiver = _dense(k[0], scalars, pair_width), _dense(k[1], scalars, pair_width)
        self.pair_in = _dense(k[2], radial + edge_size, pair_width)
        self.pair_bias = jnp.zeros(pair_width)
        self.scalar_out = _dense(k[3], pair_width, scalars)
        self.gates_out = _dense(k[4], pair_width, 2 * vectors, scale=0.1)
        self.edge_out = _dense(k[5], pair_width, edge_size, scale=0.1)
        self.mix_u, self.mix_w = _dense(k[6], vectors, vectors), _dense(k[7], vectors, vectors)
        self.update = MLP(2 * scalars + vectors, scalars + vectors, scalars, 1, key=jax.random.fold_in(key, 1),
                          activation="silu", zero_last=True)

    def __call__(self, s, v, e, rbf, direction, pair_mask, maskf, norm):
        v_count = self.mix_u.shape[0]
        s_in, v_in = _normalized(s, v)
        h = jax.nn.silu((s_in @ self.receiver)[:, None] + (s_in @ self.sender)[None]
                        + jnp.concatenate([rbf, e], -1) @ self.pair_in + self.pair_bias)
        # h is read once, by one product for the gates and the edge update together, and masked
        # in what it produces (the edges are masked by the caller): a masked copy of h, or two
        # products, would each be another pass over the largest array of the layer (7% of a step)
        ds = (jnp.sum(h * pair_mask[..., None], 1) / norm) @ self.scalar_out
        out = h @ jnp.concatenate([self.gates_out, self.edge_out], 1)
        gates = out[..., : 2 * v_count] * pair_mask[..., None]
        g_v, g_x = gates[..., :v_count], gates[..., v_count:]
        dv = (jnp.einsum("ijc,jdc->idc", g_v, v_in) + jnp.einsum("ijc,ijd->idc", g_x, direction)) / norm
        e = e + out[..., 2 * v_count:]
        # PaiNN's update: invariant norms of mixed vectors steer both kinds of channel
        s_mid, v_mid = _normalized(s_in + ds, v_in + dv)
        u, w = v_mid @ self.mix_u, v_mid @ self.mix_w
        # the molecule's mean scalars: one step from every atom to the whole (which molecule is forming)
        whole = jnp.sum(s_mid * maskf[:, None], 0) / jnp.maximum(jnp.sum(maskf), 1)
        a = jax.vmap(self.update)(jnp.concatenate([s_mid, jnp.broadcast_to(whole, s_mid.shape),
                                                   jnp.sqrt(jnp.sum(u**2, 1) + 1e-8)], -1))
        return s + ds + a[:, : s.shape[-1]], v + dv + a[:, None, s.shape[-1]:] * w, e


# the bond-length head's Gaussians span every covalent bond of QM9 and GEOM's common elements
BOND_RANGE = (0.8, 2.0)


class BondLengthHead(eqx.Module):
    """A last position correction resolved at bond lengths: ``Δxᵢ = Σⱼ φᵢⱼ (xᵢ − xⱼ)/dᵢⱼ`` with
    ``φᵢⱼ = MLP([(eᵢⱼ + eⱼᵢ)/2, sᵢ + sⱼ, b(dᵢⱼ), dᵢⱼ])`` (EGNN's coordinate update, Satorras et
    al. 2021), ``b`` ``count`` Gaussians on :data:`BOND_RANGE` Å (5 pm apart for 24) and the raw
    distance, so a pair can be moved by a linear function of how far it is from its bond length.
    The trunk's radial basis is 0.6 Å wide at its defaults; bond lengths need pm. ``φ`` is
    symmetric, so the update is translation invariant and keeps the centre of mass; it starts at
    zero (the network's prediction is unchanged until the head learns)."""

    pair: MLP
    count: int = eqx.field(static=True)

    def __init__(self, edges: int, scalars: int, count: int, width: int, *, key):
        self.count = int(count)
        self.pair = MLP(edges + scalars + count + 1, 1, width, 1, key=key, activation="silu", zero_last=True)

    def __call__(self, positions, s, e, pair_mask):
        rel = positions[:, None] - positions[None, :]  # x_i − x_j at [i, j]
        dist = jnp.sqrt(jnp.sum(rel**2, -1) + 1e-12)
        low, high = BOND_RANGE
        width = (high - low) / self.count
        basis = jnp.exp(-(((dist[..., None] - jnp.linspace(low, high, self.count)) / width) ** 2))
        features = jnp.concatenate([(e + jnp.swapaxes(e, 0, 1)) / 2, s[:, None] + s[None], basis, dist[..., None]], -1)
        phi = self.pair.on_rows(features)[..., 0] * pair_mask
        return jnp.sum((phi / dist)[..., None] * rel, 1)


class VectorNetwork(eqx.Module):
    """``network(positions, atom_types, charges, bonds, mask, t, previous=None) -> dict`` with
    ``atom_logits (N, A)``, ``charge_logits (N, C)``, ``bond_logits (N, N, B)`` and ``velocity
    (N, 3)`` (zero at padding, zero centre of mass), as :class:`~molecules.network.EquivariantNetwork`.

    **Arguments:** `num_atom_types`, `num_charges`, `num_bond_orders` (input classes, with the
    mask), `key`, `scalars` ``F``, `vectors` ``V``, `layers`, `edges` ``E`` (edge channels),
    `pair_width` ``H``, `radial` (basis size), `cutoff` (Å), `time_embedding`, `out_sizes`,
    `self_conditioning` (read the previous prediction, as the e3nn network does), `bond_basis`
    (Gaussians of a :class:`BondLengthHead` after the layers; 0: none).
    """

    atom_embed: Float[Array, "A F"]
    charge_embed: Float[Array, "C F"]
    bond_embed: Float[Array, "B E"]
    time_mlp: MLP
    layers: _VectorLayer  # stacked along a leading axis, run with lax.scan
    atom_head: MLP
    charge_head: MLP
    bond_head: MLP
    velocity_out: Float[Array, " V"]
    self_condition_scalars: MLP | None
    self_condition_edges: MLP | None
    length_head: BondLengthHead | None
    vectors: int = eqx.field(static=True)
    radial: int = eqx.field(static=True)
    cutoff: float = eqx.field(static=True)
    time_embedding: int = eqx.field(static=True)
    out_sizes: tuple[int, int, int] = eqx.field(static=True)

    def __init__(self, num_atom_types: int, num_charges: int, num_bond_orders: int, *, key, scalars: int = 64,
                 vectors: int = 16, layers: int = 4, edges: int = 16, pair_width: int = 64, radial: int = 16,
                 cutoff: float = 10.0, time_embedding: int = 16, out_sizes: tuple[int, int, int] | None = None,
                 self_conditioning: bool = False, bond_basis: int = 0):
        k = jax.random.split(key, 10)
        self.vectors, self.radial, self.cutoff, self.time_embedding = vectors, radial, float(cutoff), time_embedding
        self.out_sizes = out_sizes or (num_atom_types, num_charges, num_bond_orders)
        self.atom_embed = jax.random.normal(k[0], (num_atom_types, scalars))
        self.charge_embed = jax.random.normal(k[1], (num_charges, scalars))
        self.bond_embed = jax.random.normal(k[2], (num_bond_orders, edges))
        self.time_mlp = MLP(time_embedding, scalars, scalars, 1, key=k[3], activation="silu")
        self.layers = eqx.filter_vmap(lambda kk: _VectorLayer(scalars, vectors, edges, radial, pair_width, key=kk))(
            jax.random.split(k[4], layers))
        self.atom_head = MLP(scalars, self.out_sizes[0], scalars, 1, key=k[5], activation="silu")
        self.charge_head = MLP(scalars, self.out_sizes[1], scalars, 1, key=k[6], activation="silu")
        self.bond_head = MLP(edges + radial, self.out_sizes[2], pair_width, 1, key=k[7], activation="silu")
        self.velocity_out = jax.random.normal(k[8], (vectors,)) / math.sqrt(vectors)
        self.self_condition_scalars = self.self_condition_edges = None
        if self_conditioning:
            a, c, b = self.out_sizes
            k9, k10 = jax.random.split(k[9])
            self.self_condition_scalars = MLP(a + c, scalars, scalars, 1, key=k9, activation="silu")
            self.self_condition_edges = MLP(radial + b, edges, pair_width, 1, key=k10, activation="silu")
        if int(bond_basis) < 0:
            raise ValueError(f"bond_basis must be a number of Gaussians ≥ 0; got {bond_basis}")
        self.length_head = (BondLengthHead(edges, scalars, bond_basis, pair_width, key=jax.random.fold_in(key, 11))
                                   if bond_basis else None)

    @property
    def self_conditioning(self) -> bool:
        return self.self_condition_scalars is not None

    def __call__(self, positions: Float[Array, "N 3"], atom_types: Int[Array, " N"], charges: Int[Array, " N"],
                 bonds: Int[Array, "N N"], mask: Bool[Array, " N"], t, previous=None) -> dict:
        n = positions.shape[0]
        maskf = mask.astype(positions.dtype)
        rel = positions[None, :] - positions[:, None]  # x_j − x_i at [i, j]
        dist = jnp.sqrt(jnp.sum(rel**2, -1) + 1e-12)
        pair_mask = maskf[:, None] * maskf[None] * (1 - jnp.eye(n, dtype=positions.dtype)) * (dist < self.cutoff)
        rbf = radial_basis(dist, self.radial, self.cutoff)
        direction = rel / (1 + dist[..., None])  # bounded: long pairs do not dominate the vector messages
        s = (self.atom_embed[atom_types] + self.charge_embed[charges]
             + self.time_mlp(time_features(t, self.time_embedding))) * maskf[:, None]
        v = jnp.zeros((n, 3, self.vectors), positions.dtype)
        e = self.bond_embed[bonds]
        if self.self_conditioning:
            s, v, e = self._read_previous(previous, positions, s, v, e, maskf)
        e = e * pair_mask[..., None]
        norm = math.sqrt(n)

        def apply(layer, carry, _):
            s, v, e = layer(*carry, rbf, direction, pair_mask, maskf, norm)
            return s * maskf[:, None], v * maskf[:, None, None], e * pair_mask[..., None]

        s, v, e = scan_layers(self.layers, apply, (s, v, e))
        velocity = (v @ self.velocity_out) * maskf[:, None]
        if self.length_head is not None:  # pairs read from the positions the trunk predicts
            velocity = velocity + self.length_head(positions + velocity, s, e, pair_mask)
        velocity = velocity - jnp.sum(velocity, 0) / jnp.maximum(jnp.sum(maskf), 1)  # zero centre of mass
        pair = jnp.concatenate([(e + jnp.swapaxes(e, 0, 1)) / 2, rbf], -1)
        return {"atom_logits": jax.vmap(self.atom_head)(s), "charge_logits": jax.vmap(self.charge_head)(s),
                "bond_logits": self.bond_head.on_rows(pair), "velocity": velocity * maskf[:, None]}

    def no_prediction(self, positions):
        """The self-conditioning input before any prediction: ``x̂₁ = x`` and zero probabilities."""
        return zero_prediction(positions, self.out_sizes)

    def _read_previous(self, previous, positions, s, v, e, maskf):
        """Add the previous prediction to the initial scalars, vectors and edge features."""
        if previous is None:
            previous = self.no_prediction(positions)
        x1, atom_probs, charge_probs, bond_probs = previous
        s = s + jax.vmap(self.self_condition_scalars)(jnp.concatenate([atom_probs, charge_probs], -1)) * maskf[:, None]
        v = v.at[:, :, 0].set((x1 - positions) * maskf[:, None])  # the first vector channel
        dist = jnp.sqrt(jnp.sum((x1[None, :] - x1[:, None]) ** 2, -1) + 1e-12)
        pair = jnp.concatenate([radial_basis(dist, self.radial, self.cutoff), bond_probs], -1)
        return s, v, e + self.self_condition_edges.on_rows(pair)


# files written before the bond-length head existed hold networks without one
register_migration("molecules.vector_network.VectorNetwork", lambda fields: {"length_head": None, **fields})
