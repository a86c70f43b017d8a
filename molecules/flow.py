"""Joint continuous/discrete flow matching for 3-D molecules (FlowMol's design).

Positions follow a straight path from a centred Gaussian, the prior sample rotated onto the
molecule by Kabsch alignment (an equivariant optimal-transport step); atom types, formal charges
and bond orders follow masking CTMC paths from ``discrete`` (the bond matrix kept symmetric by
drawing each unordered pair once). One :class:`EquivariantNetwork` predicts the clean molecule
from the noisy one: a displacement to the clean positions and posteriors for the three discrete
parts. Training is ``geoflow.fit(model, graphs, loss=MoleculeFlowMatching())``; sampling
integrates both parts together with the same number of steps.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from discrete import MixturePath, posterior_rates
from geoflow.continuous.paths import Polynomial
from geoflow.continuous.couplings import exact_assignment, squared_distances
from geoflow.precision import exact_matmul
from geoflow.serialization import register_migration
from discrete.model import categorical_from_weights

from .graph import BOND_ORDERS, MolecularGraph, Vocabulary
from .network import EquivariantNetwork
from .vector_network import VectorNetwork

NETWORKS = {"vector": VectorNetwork, "e3nn": EquivariantNetwork}


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


def symmetric_uniform(key, n):
    """``(n, n)`` uniforms with ``u[i, j] = u[j, i]``: one draw per unordered pair."""
    u = jax.random.uniform(key, (n, n))
    upper = jnp.triu(u, 1)
    return upper + upper.T


# spread (Å) of a fake atom's position about the real atom it is placed beside
FAKE_ATOM_SPREAD = 1.0


def fake_atom_limit(n, fraction: float, max_atoms: int):
    """The most fake atoms a molecule of ``n`` real atoms receives: ``⌊fraction · n⌋``, no more
    than the free slots ``max_atoms − n``."""
    return jnp.minimum(jnp.floor(fraction * n).astype(jnp.int32), max_atoms - n)


def slot_counts(atom_counts, fraction: float, max_atoms: int) -> tuple[float, ...]:
    """The distribution of ``n + k`` slots, ``n`` drawn from ``atom_counts`` (probabilities of
    ``0…max_atoms`` real atoms) and ``k`` fake atoms uniform on ``0…fake_atom_limit(n)``."""
    out = np.zeros(max_atoms + 1)
    for n, p in enumerate(atom_counts):
        limit = int(fake_atom_limit(n, fraction, max_atoms))
        out[n : n + limit + 1] += p / (limit + 1)
    return tuple(float(v) for v in out)


def add_fake_atoms(g: MolecularGraph, key, fraction: float, fake_type: int, zero_charge: int) -> MolecularGraph:
    """FlowMol3's fake atoms: ``k`` uniform on ``0…fake_atom_limit(n)`` padding slots become atoms
    of type ``fake_type`` (charge index ``zero_charge``, no bonds), each placed ``FAKE_ATOM_SPREAD``
    Å about a real atom drawn uniformly. A model trained so learns to turn an atom the forming
    molecule has no place for into a fake one, which sampling then removes: the molecule's size
    is decided during generation, not only drawn before it."""
    k_count, k_anchor, k_offset = jax.random.split(key, 3)
    n_slots = g.mask.shape[0]
    n = jnp.sum(g.mask)
    count = jnp.floor(jax.random.uniform(k_count) * (fake_atom_limit(n, fraction, n_slots) + 1)).astype(jnp.int32)
    free_rank = jnp.cumsum(~g.mask) - 1
    fake = ~g.mask & (free_rank < count)
    anchors = jax.random.choice(k_anchor, n_slots, (n_slots,), p=g.mask / jnp.maximum(n, 1))
    beside = g.positions[anchors] + FAKE_ATOM_SPREAD * jax.random.normal(k_offset, (n_slots, 3))
    return MolecularGraph(jnp.where(fake[:, None], beside, g.positions), jnp.where(fake, fake_type, g.atom_types),
                          jnp.where(fake, zero_charge, g.charges), g.bonds, g.mask | fake)


def without_fake_atoms(g: MolecularGraph, fake_type: int) -> MolecularGraph:
    """The molecule left when the atoms of type ``fake_type`` are removed: the real atoms moved
    to the first slots in their order, recentred."""
    real = g.mask & (g.atom_types != fake_type)
    order = jnp.argsort(~real, stable=True)
    mask = real[order]
    keep = lambda v: jnp.where(mask, v[order], 0)
    bonds = jnp.where(mask[:, None] & mask[None], g.bonds[order][:, order], 0)
    return MolecularGraph(centre(g.positions[order], mask.astype(g.positions.dtype)), keep(g.atom_types),
                          keep(g.charges), bonds, mask)


def as_previous(prediction):
    """A prediction ``(x̂₁, logits…)`` as the network's self-conditioning input ``(x̂₁, probs…)``,
    with no gradient flowing back through it."""
    x1, *logits = jax.lax.stop_gradient(prediction)
    return (x1, *(jax.nn.softmax(l, -1) for l in logits))


class MoleculeSampler(eqx.Module):
    """Sampling shared by every clean-molecule predictor: a trained :class:`MoleculeFlow` or the
    exact posterior of a small data set (:class:`molecules.exact.ExactMoleculePosterior`).

    A subclass has the fields ``vocabulary``, ``max_atoms``, ``atom_counts`` (probabilities of each
    atom count ``0…max_atoms``), ``prior_scale`` and ``token_power`` (tokens are unmasked by time
    ``t`` with probability ``κ_t = t^token_power``), and the methods :meth:`predict` and
    :meth:`no_prediction`; a subclass trained with fake atoms overrides :attr:`fake_atoms`. Positions follow Euler steps of the straight-path velocity
    ``(x̂₁ − x)/(1 − t)``; each masked token leaves the mask with probability ``h κ̇/(1 − κ)`` in a
    step of size ``h`` (more with ``eta``, see :meth:`sample`) and draws its value from the
    predicted posterior; the last step takes the
    predicted clean molecule, the posterior's mode for tokens still masked.
    """

    vocabulary: eqx.AbstractVar[Vocabulary]
    max_atoms: eqx.AbstractVar[int]
    atom_counts: eqx.AbstractVar[tuple[float, ...]]
    prior_scale: eqx.AbstractVar[float]
    token_power: eqx.AbstractVar[float]

    @abc.abstractmethod
    def predict(self, x, types, charges, bonds, mask, t, previous=None):
        """``(x̂₁ (N, 3), atom (N, A), charge (N, C), bond (N, N, B) logits)`` for one noisy molecule."""

    @abc.abstractmethod
    def no_prediction(self, positions):
        """The ``previous`` argument of :meth:`predict` before any prediction was made."""

    @property
    def fake_atoms(self) -> float:
        """The most fake atoms per real atom seen in training (:func:`add_fake_atoms`; 0: none)."""
        return 0.0

    @property
    def fake_type(self) -> int | None:
        """The atom-type index of a fake atom, one past the vocabulary's elements; None without."""
        return len(self.vocabulary.elements) if self.fake_atoms > 0 else None

    @property
    def paths(self) -> tuple[MixturePath, MixturePath, MixturePath]:
        """Masking paths for atom types (with the fake type when there is one), charges and bond
        orders (the mask is the last class)."""
        schedule = Polynomial(self.token_power)
        types = len(self.vocabulary.elements) + (self.fake_type is not None)
        return tuple(MixturePath(size, scheduler=schedule)
                     for size in (types, len(self.vocabulary.charges), len(BOND_ORDERS)))

    def sample(self, key, n: int, *, steps: int = 100, num_atoms=None, eta: float = 0.0,
               noise: float = 0.0, refine: int = 0) -> MolecularGraph:
        """``n`` molecules as a batched :class:`MolecularGraph`; sizes drawn from the training
        distribution unless ``num_atoms`` (an int or ``(n,)`` ints) is given. A model trained with
        fake atoms starts from that many slots (sizes drawn from :func:`slot_counts`) and returns
        the atoms it did not predict fake, real atoms first. ``eta`` adds
        detailed-balance noise to the tokens (Campbell et al. 2024): a known token returns to the
        mask at rate η and masked ones leave it faster to match, which leaves every time's
        marginal unchanged and lets a token drawn early, from a vague posterior, be drawn again.
        ``noise`` does the same for positions: they follow the SDE ``dx = [v + η (t x̂₁ − x)/(1 − t)] dt
        + σ √(2η(1 − t)) dW`` (σ the prior scale), whose marginals are the ODE's, and whose score
        term pulls a path that strayed from the data's back towards it.

        ``refine`` more clean predictions at the last step's time follow, each from the previous
        one's positions with the sampled tokens fixed: the last step's prediction comes from the
        sampled path, which has drifted further from a molecule than the training paths at that
        time, and feeding the prediction back settles it on the network's fixed point (bond
        lengths tighten; ``benchmarks/RESULTS.md``)."""
        if int(steps) < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        if int(refine) != refine or refine < 0:
            raise ValueError(f"refine must be a non-negative number of predictions, got {refine}")
        for name, value in (("eta", eta), ("noise", noise)):
            if not (0.0 <= float(value) < float("inf")):
                raise ValueError(f"{name} must be finite and non-negative, got {value}")
        k_size, k_mol = jax.random.split(key)
        if num_atoms is None:
            sizes = slot_counts(self.atom_counts, self.fake_atoms, self.max_atoms) if self.fake_atoms else self.atom_counts
            num_atoms = jax.random.choice(k_size, self.max_atoms + 1, (n,), p=jnp.asarray(sizes))
        num_atoms = jnp.broadcast_to(jnp.asarray(num_atoms, jnp.int32), (n,))
        if int(jnp.max(num_atoms)) > self.max_atoms or int(jnp.min(num_atoms)) < 1:
            raise ValueError(f"num_atoms must be in [1, {self.max_atoms}]")
        return _sample_molecules(self, jax.random.split(k_mol, n), num_atoms, jnp.float32(eta), jnp.float32(noise),
                                 steps=int(steps), refine=int(refine))

    def sample_molecules(self, key, n: int, *, steps: int = 100, num_atoms=None, eta: float = 0.0,
                         noise: float = 0.0, refine: int = 0) -> list:
        """``n`` sampled molecules as ``(rdkit.Chem.Mol, error)`` pairs (:func:`graph_to_mol`:
        ``error`` is None when RDKit sanitizes the molecule, else its message; the molecule is
        returned either way, with its conformer)."""
        from .chemistry import graph_to_mol
        from .graph import unstack_graphs

        graphs = self.sample(key, n, steps=steps, num_atoms=num_atoms, eta=eta, noise=noise, refine=refine)
        return [graph_to_mol(g, self.vocabulary) for g in unstack_graphs(graphs)]

    def _sample_one(self, key, num_atoms, steps, eta, noise, refine=0):
        p_a, p_c, p_b = self.paths
        n = self.max_atoms
        mask = jnp.arange(n) < num_atoms
        maskf = mask.astype(jnp.float32)
        pair = mask[:, None] & mask[None] & ~jnp.eye(n, dtype=bool)
        k0, k_steps = jax.random.split(key)
        x = centre(self.prior_scale * jax.random.normal(k0, (n, 3)), maskf)
        types = jnp.where(mask, p_a.mask_token, 0)
        charges = jnp.where(mask, p_c.mask_token, 0)
        bonds = jnp.where(pair, p_b.mask_token, 0)
        h = 1.0 / steps

        def jump(key, tokens, logits, path, t, where, symmetric=False):
            """One Euler step of the CTMC with the posterior's rates (``discrete.posterior_rates``:
            unmasking, and with ``eta > 0`` remasking at rate η), only at real entries ``where``."""
            k_jump, k_dest = jax.random.split(key)
            flat = tokens.reshape(-1)
            rates = posterior_rates(path, jax.nn.softmax(logits.reshape(flat.shape[0], -1), -1), flat, t, eta)
            rates = rates * where.reshape(-1, 1)
            p_jump = jnp.clip(h * jnp.sum(rates, -1), 0.0, 1.0).reshape(tokens.shape)
            u = symmetric_uniform(k_jump, n) if symmetric else jax.random.uniform(k_jump, tokens.shape)
            draw = categorical_from_weights(k_dest, rates).reshape(tokens.shape)
            if symmetric:  # one draw per unordered pair
                draw = jnp.triu(draw, 1) + jnp.triu(draw, 1).T
            return jnp.where(u < p_jump, draw, tokens)

        def step(state, inputs):
            x, types, charges, bonds, previous = state
            k, key = inputs
            t = k * h
            prediction = self.predict(x, types, charges, bonds, mask, t, previous)
            x1, a_logits, c_logits, b_logits = prediction
            ka, kc, kb, kx = jax.random.split(key, 4)
            # with noise η: the SDE with the same marginals, its drift pulled back by the score
            # (t x̂₁ − x)/((1 − t)² σ²) of the Gaussian path
            drift = ((x1 - x) + noise * (t * x1 - x)) / (1 - t)
            diffusion = jnp.sqrt(2 * noise * (1 - t) * h) * self.prior_scale
            x = centre(x + h * drift + diffusion * jax.random.normal(kx, x.shape), maskf)
            types = jump(ka, types, a_logits, p_a, t, mask)
            charges = jump(kc, charges, c_logits, p_c, t, mask)
            bonds = jump(kb, bonds, b_logits, p_b, t, pair, symmetric=True)
            return (x, types, charges, bonds, as_previous(prediction)), None

        # the first step sees "no prediction yet", as half the training examples do
        first = (x, types, charges, bonds, self.no_prediction(x))
        state, _ = jax.lax.scan(step, first, (jnp.arange(steps - 1, dtype=jnp.float32),
                                              jax.random.split(k_steps, steps - 1)))
        x, types, charges, bonds, previous = state
        t_last = (steps - 1) * h
        x1, a_logits, c_logits, b_logits = self.predict(x, types, charges, bonds, mask, t_last, previous)
        bond_mode = jnp.argmax(b_logits, -1)
        bonds = jnp.where(pair, jnp.triu(bond_mode, 1) + jnp.triu(bond_mode, 1).T, 0)
        types, charges = jnp.where(mask, jnp.argmax(a_logits, -1), 0), jnp.where(mask, jnp.argmax(c_logits, -1), 0)
        tokens = tuple(jax.nn.one_hot(v, logits.shape[-1]) for v, logits in
                       zip((types, charges, bonds), (a_logits, c_logits, b_logits)))

        def again(_, x1):  # the clean prediction from the last one, the molecule's tokens as its own
            return centre(self.predict(x1, types, charges, bonds, mask, t_last, (x1, *tokens))[0], maskf)

        x1 = jax.lax.fori_loop(0, refine, again, centre(x1, maskf))
        molecule = MolecularGraph(x1, types, charges, bonds, mask)
        return molecule if self.fake_type is None else without_fake_atoms(molecule, self.fake_type)


def check_token_power(power) -> float:
    """``power`` as a float, refused unless positive and finite."""
    power = float(power)
    if not (0 < power < float("inf")):
        raise ValueError(f"token_power must be a positive number (κ_t = t^token_power); got {power}")
    return power


def normalized_counts(atom_counts, max_atoms: int) -> tuple[float, ...]:
    """How often each atom count ``0…max_atoms`` occurs, as probabilities (longer input is cut)."""
    counts = np.zeros(max_atoms + 1)
    counts[: len(atom_counts)] = np.asarray(atom_counts, np.float64)[: max_atoms + 1]
    if counts.sum() <= 0:
        raise ValueError("atom_counts must have a positive total (how often each molecule size occurs)")
    return tuple(float(c) for c in counts / counts.sum())


class MoleculeFlow(MoleculeSampler):
    """A generative model of molecules with up to ``max_atoms`` atoms over ``vocabulary``.

    **Arguments:** `vocabulary`, `max_atoms`, `atom_counts` (how often each number of atoms
    occurs in the training data; sampling draws the size from it), `key`, `prior_scale` (Å, the
    standard deviation of the positions' Gaussian prior), `token_power` (``p`` in the tokens'
    schedule ``κ_t = tᵖ``: above 1, atom types, charges and bonds leave the mask later, when the
    positions already say which molecule is forming), `self_conditioning` (the network reads
    its previous prediction: at every sampling step, and in half the training examples),
    `network` (``"vector"``: :class:`~molecules.vector_network.VectorNetwork`, scalar and vector
    channels, the fast default; ``"e3nn"``: :class:`~molecules.network.EquivariantNetwork`,
    spherical-harmonic tensor products up to l = 2), `fake_atoms` (FlowMol3's fake atoms: in
    training each molecule of ``n`` atoms gains up to ``⌊fake_atoms · n⌋`` atoms of an extra
    type, :func:`add_fake_atoms`, which sampling removes; 0: none) and the network's keyword
    arguments.
    """

    network: VectorNetwork | EquivariantNetwork
    vocabulary: Vocabulary = eqx.field(static=True)
    max_atoms: int = eqx.field(static=True)
    atom_counts: tuple[float, ...] = eqx.field(static=True)
    prior_scale: float = eqx.field(static=True)
    token_power: float = eqx.field(static=True)
    _fake_atoms: float = eqx.field(static=True)  # read through the fake_atoms property

    def __init__(self, vocabulary: Vocabulary, max_atoms: int, atom_counts, *, key, prior_scale: float = 1.0,
                 token_power: float = 1.0, self_conditioning: bool = True, network: str = "vector",
                 fake_atoms: float = 0.0, **network_kwargs):
        self.vocabulary, self.max_atoms, self.prior_scale = vocabulary, int(max_atoms), float(prior_scale)
        self.token_power = check_token_power(token_power)
        self.atom_counts = normalized_counts(atom_counts, self.max_atoms)
        if not (0.0 <= float(fake_atoms) < float("inf")):
            raise ValueError(f"fake_atoms must be a non-negative fraction of the real atoms; got {fake_atoms}")
        self._fake_atoms = float(fake_atoms)
        a, c, b = self.paths[0].vocab_size, len(vocabulary.charges), len(BOND_ORDERS)
        # inputs have one more class each, the mask token; outputs predict the clean classes only
        if network not in NETWORKS:
            raise ValueError(f"unknown network {network!r}; expected one of {sorted(NETWORKS)}")
        self.network = NETWORKS[network](a + 1, c + 1, b + 1, key=key, out_sizes=(a, c, b),
                                         self_conditioning=self_conditioning, **network_kwargs)

    def predict(self, x, types, charges, bonds, mask, t, previous=None):
        """The network's clean-molecule prediction: ``(x̂₁, atom, charge, bond logits)`` with
        known (unmasked) tokens carried over as certain. ``previous`` is an earlier prediction in
        the form :func:`as_previous` gives (read only with self-conditioning)."""
        out = self.network(x, types, charges, bonds, mask, t, previous)
        p_a, p_c, p_b = self.paths
        return (x + out["velocity"], p_a.carry_known(out["atom_logits"], types),
                p_c.carry_known(out["charge_logits"], charges), p_b.carry_known(out["bond_logits"], bonds))

    def no_prediction(self, positions):
        return self.network.no_prediction(positions)

    @property
    def fake_atoms(self) -> float:
        return self._fake_atoms

    @property
    def self_conditioning(self) -> bool:
        return self.network.self_conditioning


# files written before fake atoms existed hold models without them
register_migration("molecules.flow.MoleculeFlow", lambda fields: {"_fake_atoms": 0.0, **fields})


@eqx.filter_jit
def _sample_molecules(model, keys, num_atoms, eta, noise, *, steps, refine):
    return jax.vmap(lambda k, n: model._sample_one(k, n, steps, eta, noise, refine))(keys, num_atoms)


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
