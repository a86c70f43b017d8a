"""The training objective of :class:`molecules.flow.MoleculeFlow`: FlowMol's joint loss on the
clean-molecule prediction, with Kabsch alignment and optional atom permutation of the prior,
train-time distortion, time weighting and fake atoms. Training is
``geoflow.fit(model, graphs, loss=MoleculeFlowMatching())``; molecules travel through ``fit``
as packed float rows (:func:`pack_graphs`)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from geoflow.continuous.couplings import exact_assignment, squared_distances
from geoflow.precision import exact_matmul

from .fake_atoms import add_fake_atoms
from .flow import MoleculeFlow, MoleculeSampler, as_previous, symmetric_uniform
from .geometry import centre, kabsch_rotation
from .graph import MolecularGraph


def pack_graphs(graphs: MolecularGraph) -> np.ndarray:
    """A batch of graphs ``(B, N, …)`` as one float32 array ``(B, N·(6 + N))`` (positions, types,
    charges, mask, bonds; the integers are exact in float32), so that ``geoflow.fit`` can shuffle
    and batch molecules like any other data."""
    g = graphs
    b = np.asarray(g.mask).shape[0]
    parts = [np.asarray(g.positions, np.float32).reshape(b, -1), np.asarray(g.atom_types, np.float32),
             np.asarray(g.charges, np.float32), np.asarray(g.mask, np.float32),
             np.asarray(g.bonds, np.float32).reshape(b, -1)]
    return np.concatenate(parts, 1)


def unpack_graph(row, n: int) -> MolecularGraph:
    """One graph from a row of :func:`pack_graphs`."""
    positions = row[: 3 * n].reshape(n, 3)
    types, charges, mask = (row[3 * n + k * n : 4 * n + k * n].astype(jnp.int32) for k in range(3))
    bonds = row[6 * n :].reshape(n, n).astype(jnp.int32)
    return MolecularGraph(positions, types, charges, bonds, mask.astype(bool))


class MoleculeFlowMatching(eqx.Module):
    """The joint loss ``w_x ‖x̂₁ − x₁‖² + w_a CE(types) + w_c CE(charges) + w_b CE(bonds)``, the
    cross-entropies over the masked entries; weights default to FlowMol's (3, 0.4, 1, 2).
    ``distortion = (fraction, scale)`` is FlowMol3's train-time geometry distortion: in that
    fraction of examples the noisy positions ``x_t`` are displaced by centred Gaussian noise of
    ``scale`` Å while the target stays the clean molecule, so the network learns to pull a
    sampling path that has drifted off the training paths back to a molecule. ``permute=True``
    also reorders the prior's atoms to the molecule's by an optimal assignment (exact, on the
    host) before the Kabsch rotation; the assignment depends on no parameter, so
    :meth:`prepare` solves a chunk's assignments ahead of ``fit``'s scan, on one device, as
    OT-CFM does (a host solve inside a sharded step stalls its all-reduce).
    ``time_weight = cap > 0`` multiplies the position term by FlowMol's ``clip(t/(1 − t), 0.05, cap)``:
    early times, where the clean positions cannot be told from the noise, stop dominating the
    gradient, and the late ones that set the final geometry weigh ``cap`` (0: uniform in ``t``).
    Give ``geoflow.fit`` a batched :class:`MolecularGraph`: it is checked and packed into rows
    (:func:`pack_graphs`) before training."""

    weights: tuple[float, float, float, float] = eqx.field(static=True, default=(3.0, 0.4, 1.0, 2.0))
    permute: bool = eqx.field(static=True, default=False)
    align: bool = eqx.field(static=True, default=True)
    distortion: tuple[float, float] = eqx.field(static=True, default=(0.0, 0.0))
    time_weight: float = eqx.field(static=True, default=0.0)

    def __check_init__(self):
        fraction, scale = self.distortion
        if not (0.0 <= fraction <= 1.0 and 0.0 <= scale < float("inf")):
            raise ValueError(f"distortion must be (fraction in [0, 1], scale in Å ≥ 0); got {self.distortion}")
        if not (self.time_weight == 0.0 or 0.05 <= self.time_weight < float("inf")):
            raise ValueError(f"time_weight must be 0 (uniform) or a cap ≥ 0.05 on t/(1 − t); got {self.time_weight}")

    def position_weight(self, t):
        """The position term's weight at time ``t``: ``clip(t/(1 − t), 0.05, time_weight)``, or 1."""
        if self.time_weight == 0.0:
            return jnp.ones_like(t)
        return jnp.clip(t / (1 - t), 0.05, self.time_weight)

    def data_shape(self, model):
        return (model.max_atoms * (6 + model.max_atoms),)

    def check_data(self, model, graphs):
        from .graph import check_graph

        if not isinstance(graphs, MolecularGraph):
            raise ValueError(f"MoleculeFlowMatching trains on a batched MolecularGraph; got {type(graphs).__name__}")
        if np.asarray(graphs.mask).ndim != 2 or np.asarray(graphs.mask).shape[0] == 0:
            raise ValueError("training molecules must be a non-empty batch (B, N) of graphs")
        if np.asarray(graphs.mask).shape[1] != model.max_atoms:
            raise ValueError(f"graphs are padded to {np.asarray(graphs.mask).shape[1]} atoms; the model expects "
                             f"max_atoms={model.max_atoms}")
        check_graph(graphs, model.vocabulary, "training molecules")
        return pack_graphs(graphs)

    def prepare(self, model: MoleculeFlow, rows, condition, key):
        """With ``permute=True``, each molecule's atom assignment ``(B, N)`` for this step (the
        prior draw is re-derived from the same key as :meth:`__call__`); otherwise ``None``."""
        if not self.permute:
            return None
        keys = jax.random.split(key, rows.shape[0])
        return jax.vmap(lambda k, r: self._assignment(model, self.training_graph(model, r, k), k))(keys, rows)

    def __call__(self, model: MoleculeFlow, rows, condition, key, prepared=None):
        keys = jax.random.split(key, rows.shape[0])
        graph = lambda r, k: self.training_graph(model, r, k)
        if prepared is None:
            return jnp.mean(jax.vmap(lambda k, r: self._one(model, graph(r, k), k))(keys, rows))
        return jnp.mean(jax.vmap(lambda k, r, p: self._one(model, graph(r, k), k, p))(keys, rows, prepared))

    @staticmethod
    def training_graph(model: MoleculeSampler, row, key) -> MolecularGraph:
        """One example's molecule from its packed row, with fake atoms (:func:`add_fake_atoms`,
        drawn from the example's key) when the model was built with them."""
        g = unpack_graph(row, model.max_atoms)
        if model.fake_type is None:
            return g
        return add_fake_atoms(g, jax.random.fold_in(key, 11), model.fake_atoms, model.fake_type,
                              model.vocabulary.charge_index(0))

    @staticmethod
    def _endpoints(model, g: MolecularGraph, key):
        """The centred molecule and prior draw ``(x₁, x₀)`` of one example's key."""
        maskf = g.mask.astype(jnp.float32)
        k_x = jax.random.split(key, 6)[0]
        x0 = centre(model.prior_scale * jax.random.normal(k_x, (g.mask.shape[0], 3)), maskf)
        return centre(g.positions, maskf), x0

    def _assignment(self, model, g: MolecularGraph, key):
        """Prior atom for each real atom, minimising the summed squared distances (padding pairs
        with padding): ``x0[π]``. Independent of the parameters (``prior_scale > 0`` only scales
        the cost's cross term)."""
        x1, x0 = self._endpoints(model, g, key)
        mask = g.mask.astype(bool)
        real = mask[:, None] & mask[None]
        cost = jnp.where(real, squared_distances(x1, x0), jnp.where(mask[:, None] | mask[None], 1e6, 0.0))
        return exact_assignment(jax.lax.stop_gradient(cost))

    def terms(self, model: MoleculeSampler, g: MolecularGraph, key, t=None, assignment=None):
        """The four unweighted terms ``(position MSE, atom CE, charge CE, bond CE)`` of one
        molecule's loss at time ``t`` (drawn from ``U(0, 1)`` when None). ``model`` may be any
        :class:`MoleculeSampler`; with ``align=False`` and ``permute=False`` the loss of
        :class:`molecules.exact.ExactMoleculePosterior` is the least any network can reach."""
        p_a, p_c, p_b = model.paths
        n = g.mask.shape[0]
        mask = g.mask.astype(bool)
        maskf = mask.astype(jnp.float32)
        pair = mask[:, None] & mask[None] & ~jnp.eye(n, dtype=bool)
        _, _, k_a, k_c, k_b, k_sc = jax.random.split(key, 6)  # 0: the prior (_endpoints), 1: t (draw_time)
        x1, x0 = self._endpoints(model, g, key)
        if self.permute:  # prior atoms are exchangeable: pair each real atom with its nearest-in-sum partner
            x0 = x0[self._assignment(model, g, key) if assignment is None else assignment]
        if self.align:
            x0 = exact_matmul(x0, kabsch_rotation(x0, x1, maskf).T)  # rotate the noise onto the molecule
        if t is None:
            t = self.draw_time(key)
        xt = (1 - t) * x0 + t * x1
        fraction, scale = self.distortion
        if fraction > 0 and scale > 0:  # static: undistorted losses draw nothing more
            k_d, k_which = jax.random.split(jax.random.fold_in(key, 7))
            shift = centre(scale * jax.random.normal(k_d, xt.shape), maskf)
            xt = xt + jnp.where(jax.random.bernoulli(k_which, fraction), shift, 0.0)
        keep = lambda k, shape: jax.random.uniform(k, shape) < p_a.kappa(t)[0]
        types = jnp.where(keep(k_a, (n,)) | ~mask, g.atom_types, p_a.mask_token)
        charges = jnp.where(keep(k_c, (n,)) | ~mask, g.charges, p_c.mask_token)
        bonds = jnp.where((symmetric_uniform(k_b, n) < p_b.kappa(t)[0]) | ~pair, g.bonds, p_b.mask_token)
        previous = model.no_prediction(xt)
        if getattr(model, "self_conditioning", False):  # half the time, first predict without, then feed that in
            first = as_previous(model.predict(xt, types, charges, bonds, mask, t, previous))
            use = jax.random.bernoulli(k_sc, 0.5)
            previous = jax.tree.map(lambda a, b: jnp.where(use, a, b), first, previous)
        x_hat, a_logits, c_logits, b_logits = model.predict(xt, types, charges, bonds, mask, t, previous)

        def masked_ce(logits, target, where):
            nll = -jnp.take_along_axis(jax.nn.log_softmax(logits, -1), target[..., None], -1)[..., 0]
            return jnp.sum(nll * where) / jnp.maximum(jnp.sum(where), 1)

        position = jnp.sum(jnp.sum((x_hat - x1) ** 2, -1) * maskf) / jnp.maximum(jnp.sum(maskf), 1)
        return jnp.stack([position, masked_ce(a_logits, g.atom_types, types == p_a.mask_token),
                          masked_ce(c_logits, g.charges, charges == p_c.mask_token),
                          masked_ce(b_logits, g.bonds, bonds == p_b.mask_token)])

    @staticmethod
    def draw_time(key):
        """The training time of one example's key, ``U(0, 1 − 10⁻³)``."""
        return jax.random.uniform(jax.random.split(key, 6)[1], maxval=1.0 - 1e-3)

    def _one(self, model, g: MolecularGraph, key, assignment=None):
        t = self.draw_time(key)
        terms = self.terms(model, g, key, t=t, assignment=assignment)
        return jnp.dot(jnp.asarray(self.weights), terms.at[0].multiply(self.position_weight(t)))
