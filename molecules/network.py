"""An E(3)-equivariant message-passing network on molecular graphs, in Equinox on e3nn-jax.

Node features are irreps arrays (scalars ``0e`` and vectors ``1o``/``1e``). A layer sends, along
every pair of real atoms (fully connected, or within a cutoff), the tensor product of the
sender's features with the spherical harmonics of the relative position, weighted channel by
channel by an MLP of invariants (a radial basis of the distance, the current bond features, the
two atoms' scalars); messages are summed, mixed with the node's own features by an equivariant
linear map and passed through a gated nonlinearity.

Outputs, for one molecule (``vmap`` for batches):
- ``atom_logits (N, A)`` and ``charge_logits (N, C)``: invariant;
- ``bond_logits (N, N, B)``: invariant and symmetric in the pair;
- ``velocity (N, 3)``: equivariant under rotations and reflections, invariant under
  translations; zero at padding and with zero centre of mass.
Permuting the atoms permutes every output the same way.

With ``self_conditioning=True`` the network also reads its own previous prediction of the clean
molecule (FlowMol3, after Chen et al.'s self-conditioning): the predicted displacement ``x̂₁ − x``
enters as the first ``1o`` channel, the predicted atom/charge probabilities as scalars, and the
predicted bond probabilities with a radial basis of the predicted distances as edge features —
all invariant or equivariant as the other inputs, so the symmetries above still hold.
"""

from __future__ import annotations

import math

from geoflow.extras import require_extra

require_extra("the e3nn molecule network", "molecules", "e3nn_jax")

import e3nn_jax as e3nn  # noqa: E402 (after the check that names the extra)
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from geoflow.continuous.fields import time_features
from geoflow.nn import MLP, scan_layers
from geoflow.serialization import SerializationError, register_codec


def radial_basis(distance, count: int, cutoff: float):
    """``count`` Gaussians on ``[0, cutoff]`` Å, times a smooth envelope that reaches 0 at ``cutoff``."""
    centres = jnp.linspace(0.0, cutoff, count)
    width = cutoff / count
    envelope = jnp.where(distance < cutoff, 0.5 * (jnp.cos(jnp.pi * distance / cutoff) + 1), 0.0)
    return jnp.exp(-(((distance[..., None] - centres) / width) ** 2)) * envelope[..., None]


def _encode_linear(linear: e3nn.equinox.Linear) -> dict:
    """An e3nn-jax ``Linear`` as data: the arguments that shape it and its weights."""
    return {"irreps_in": str(linear.irreps_in), "irreps_out": str(linear.irreps_out), "biases": linear.biases,
            "weights": dict(linear._weights)}


def _decode_linear(data: dict) -> e3nn.equinox.Linear:
    linear = e3nn.equinox.Linear(irreps_in=data["irreps_in"], irreps_out=data["irreps_out"], biases=data["biases"],
                                 key=jax.random.key(0))
    weights = data["weights"]  # layers stacked for a scan carry a leading layer axis
    expected = {k: v.shape for k, v in linear._weights.items()}
    if set(weights) != set(expected) or any(weights[k].shape[weights[k].ndim - len(s):] != s for k, s in expected.items()):
        raise SerializationError(f"the saved weights of an e3nn Linear {data['irreps_in']} -> {data['irreps_out']} "
                                 "do not match its layout")
    return eqx.tree_at(lambda l: l._weights, linear, weights)


def zero_prediction(positions, out_sizes: tuple[int, int, int]):
    """The self-conditioning input before any prediction, for a molecule of ``N`` atom slots:
    ``x̂₁ = positions`` and zero atom ``(N, A)``, charge ``(N, C)`` and bond ``(N, N, B)`` probabilities."""
    n, dtype = positions.shape[0], positions.dtype
    a, c, b = out_sizes
    return (positions, jnp.zeros((n, a), dtype), jnp.zeros((n, c), dtype), jnp.zeros((n, n, b), dtype))


register_codec(e3nn.equinox.Linear, "e3nn_jax.equinox.Linear", _encode_linear, _decode_linear)


class _Layer(eqx.Module):
    """One round of messages and a gated update."""

    message_weights: MLP
    self_linear: e3nn.equinox.Linear
    message_linear: e3nn.equinox.Linear
    bond_update: MLP
    irreps: str = eqx.field(static=True)
    hidden_irreps: str = eqx.field(static=True)
    message_irreps: str = eqx.field(static=True)

    def __init__(self, irreps: str, scalars: int, edge_size: int, *, key):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        self.irreps = irreps
        node = e3nn.Irreps(irreps)
        sh = e3nn.Irreps.spherical_harmonics(2)
        self.message_irreps = str(e3nn.tensor_product(node, sh, filter_ir_out=node).regroup())
        channels = e3nn.Irreps(self.message_irreps).num_irreps
        self.message_weights = MLP(edge_size + 2 * scalars, channels, 64, 2, key=k1, activation="silu")
        # the update is gated: extra scalars, one per non-scalar channel, switch the vectors on and off
        gates = sum(mul for mul, ir in node if ir.l > 0)
        self.hidden_irreps = str((node + e3nn.Irreps(f"{gates}x0e")).regroup())
        self.self_linear = e3nn.equinox.Linear(irreps_in=node, irreps_out=self.hidden_irreps, key=k2)
        self.message_linear = e3nn.equinox.Linear(irreps_in=self.message_irreps, irreps_out=self.hidden_irreps, key=k3)
        self.bond_update = MLP(edge_size + 2 * scalars + 1, edge_size, 64, 1, key=k4, activation="silu")

    def __call__(self, h: e3nn.IrrepsArray, edges, rel, dist, pair_mask):
        n = h.shape[0]
        s = h.filter("0e").array
        sh = e3nn.spherical_harmonics("0e+1o+2e", rel, normalize=True, normalization="component")  # (N, N, 9)
        sender = jax.tree.map(lambda a: jnp.broadcast_to(a[None], (n, *a.shape)), h)  # h_j at [i, j]
        messages = e3nn.tensor_product(sender, sh, filter_ir_out=e3nn.Irreps(self.irreps)).regroup()
        invariants = jnp.concatenate([edges, jnp.broadcast_to(s[:, None], (n, n, s.shape[-1])),
                                      jnp.broadcast_to(s[None], (n, n, s.shape[-1]))], -1)
        weights = jax.vmap(jax.vmap(self.message_weights))(invariants) * pair_mask[..., None]
        messages = e3nn.elementwise_tensor_product(messages, e3nn.IrrepsArray(f"{weights.shape[-1]}x0e", weights))
        aggregated = e3nn.sum(messages, axis=1) / math.sqrt(n)
        update = e3nn.gate(jax.vmap(self.self_linear)(h) + jax.vmap(self.message_linear)(aggregated))
        h = h + update  # the gate returns the node irreps: a residual update
        # symmetric bond features: a function of the unordered pair of scalars and the distance
        s = h.filter("0e").array
        pair = jnp.concatenate([edges, s[:, None] + s[None], s[:, None] * s[None], dist[..., None]], -1)
        edges = edges + jax.vmap(jax.vmap(self.bond_update))(pair) * pair_mask[..., None]
        return h, edges


class EquivariantNetwork(eqx.Module):
    """``network(positions, atom_types, charges, bonds, mask, t) -> dict`` of the outputs above.

    **Arguments:** `num_atom_types`, `num_charges`, `num_bond_orders` (input and output classes;
    inputs may include a mask class), `key`, `scalars` and `vectors` (channels of ``0e`` and of
    each of ``1o``, ``1e``), `layers`, `radial` (basis size), `cutoff` (Å; pairs farther apart
    exchange no messages), `time_embedding`.
    """

    atom_embed: Float[Array, "A s"]
    charge_embed: Float[Array, "C s"]
    bond_embed: Float[Array, "B e"]
    time_mlp: MLP
    layers: _Layer  # stacked along a leading axis, run with lax.scan
    atom_head: MLP
    charge_head: MLP
    bond_head: MLP
    velocity_head: e3nn.equinox.Linear
    self_condition_scalars: MLP | None
    self_condition_edges: MLP | None
    irreps: str = eqx.field(static=True)
    radial: int = eqx.field(static=True)
    cutoff: float = eqx.field(static=True)
    time_embedding: int = eqx.field(static=True)
    out_sizes: tuple[int, int, int] = eqx.field(static=True)

    def __init__(self, num_atom_types: int, num_charges: int, num_bond_orders: int, *, key, scalars: int = 64,
                 vectors: int = 16, layers: int = 4, radial: int = 16, cutoff: float = 10.0, time_embedding: int = 16,
                 out_sizes: tuple[int, int, int] | None = None, self_conditioning: bool = False):
        keys = jax.random.split(key, 11)
        self.irreps = f"{scalars}x0e+{vectors}x1o+{vectors}x1e"
        self.radial, self.cutoff, self.time_embedding = radial, float(cutoff), time_embedding
        self.out_sizes = out_sizes or (num_atom_types, num_charges, num_bond_orders)
        edge = radial + 16
        self.atom_embed = jax.random.normal(keys[0], (num_atom_types, scalars))
        self.charge_embed = jax.random.normal(keys[1], (num_charges, scalars))
        self.bond_embed = jax.random.normal(keys[2], (num_bond_orders, 16))
        self.time_mlp = MLP(time_embedding, scalars, scalars, 1, key=keys[3], activation="silu")
        self.layers = eqx.filter_vmap(lambda k: _Layer(self.irreps, scalars, edge, key=k))(jax.random.split(keys[4], layers))
        self.atom_head = MLP(scalars, self.out_sizes[0], scalars, 1, key=keys[5], activation="silu")
        self.charge_head = MLP(scalars, self.out_sizes[1], scalars, 1, key=keys[6], activation="silu")
        self.bond_head = MLP(edge, self.out_sizes[2], 64, 1, key=keys[7], activation="silu")
        self.velocity_head = e3nn.equinox.Linear(irreps_in=self.irreps, irreps_out="1x1o", key=keys[8])
        self.self_condition_scalars = self.self_condition_edges = None
        if self_conditioning:
            a, c, b = self.out_sizes
            self.self_condition_scalars = MLP(a + c, scalars, scalars, 1, key=keys[9], activation="silu")
            self.self_condition_edges = MLP(radial + b, edge, 64, 1, key=keys[10], activation="silu")

    @property
    def self_conditioning(self) -> bool:
        return self.self_condition_scalars is not None

    def __call__(self, positions: Float[Array, "N 3"], atom_types: Int[Array, " N"], charges: Int[Array, " N"],
                 bonds: Int[Array, "N N"], mask: Bool[Array, " N"], t, previous=None) -> dict:
        """``previous``: ``(x̂₁ (N, 3), atom probs (N, A), charge probs (N, C), bond probs (N, N, B))``
        from an earlier call, or None (no prediction yet: read as zeros). Only a network built
        with ``self_conditioning=True`` reads it."""
        n = positions.shape[0]
        maskf = mask.astype(positions.dtype)
        pair_mask = maskf[:, None] * maskf[None] * (1 - jnp.eye(n, dtype=positions.dtype))
        rel = positions[None, :] - positions[:, None]  # x_j − x_i at [i, j]
        dist = jnp.sqrt(jnp.sum(rel**2, -1) + 1e-12)
        pair_mask = pair_mask * (dist < self.cutoff)
        scalars = (self.atom_embed[atom_types] + self.charge_embed[charges]
                   + self.time_mlp(time_features(t, self.time_embedding))) * maskf[:, None]
        vectors = jnp.zeros((n, e3nn.Irreps(self.irreps).dim - scalars.shape[-1]), positions.dtype)
        edges = jnp.concatenate([radial_basis(dist, self.radial, self.cutoff), self.bond_embed[bonds]], -1)
        if self.self_conditioning:
            scalars, vectors, edges = self._read_previous(previous, positions, scalars, vectors, edges, maskf)
        h = e3nn.IrrepsArray(self.irreps, jnp.concatenate([scalars, vectors], -1))
        edges = edges * pair_mask[..., None]
        def apply(layer, carry, _):
            h, edges = layer(*carry, rel, dist, pair_mask)
            return h * maskf[:, None], edges

        h, edges = scan_layers(self.layers, apply, (h, edges))
        s = h.filter("0e").array
        velocity = jax.vmap(self.velocity_head)(h).array * maskf[:, None]
        velocity = velocity - jnp.sum(velocity, 0) / jnp.maximum(jnp.sum(maskf), 1)  # zero centre of mass
        return {"atom_logits": jax.vmap(self.atom_head)(s), "charge_logits": jax.vmap(self.charge_head)(s),
                "bond_logits": jax.vmap(jax.vmap(self.bond_head))(edges),
                "velocity": velocity * maskf[:, None]}

    def no_prediction(self, positions):
        """The self-conditioning input before any prediction: ``x̂₁ = x`` and zero probabilities."""
        return zero_prediction(positions, self.out_sizes)

    def _read_previous(self, previous, positions, scalars, vectors, edges, maskf):
        """Add the previous prediction to the initial node scalars, vectors and edge features."""
        if previous is None:
            previous = self.no_prediction(positions)
        x1, atom_probs, charge_probs, bond_probs = previous
        scalars = scalars + jax.vmap(self.self_condition_scalars)(
            jnp.concatenate([atom_probs, charge_probs], -1)) * maskf[:, None]
        vectors = vectors.at[:, :3].set((x1 - positions) * maskf[:, None])  # the first 1o channel
        rel = x1[None, :] - x1[:, None]
        dist = jnp.sqrt(jnp.sum(rel**2, -1) + 1e-12)
        pair = jnp.concatenate([radial_basis(dist, self.radial, self.cutoff), bond_probs], -1)
        return scalars, vectors, edges + jax.vmap(jax.vmap(self.self_condition_edges))(pair)
