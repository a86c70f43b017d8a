"""Joint continuous/discrete flow matching for 3-D molecules (FlowMol's design).

Positions follow a straight path from a centred Gaussian, the prior sample rotated onto the
molecule by Kabsch alignment (an equivariant optimal-transport step); atom types, formal charges
and bond orders follow masking CTMC paths from ``discrete`` (the bond matrix kept symmetric by
drawing each unordered pair once). One :class:`EquivariantNetwork` predicts the clean molecule
from the noisy one: a displacement to the clean positions and posteriors for the three discrete
parts. Sampling integrates both parts together with the same number of steps; training is
``geoflow.fit(model, graphs, loss=MoleculeFlowMatching())`` (:mod:`molecules.matching`).
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from discrete import MixturePath, posterior_rates
from geoflow.continuous.paths import Polynomial
from geoflow.serialization import register_migration
from discrete.model import categorical_from_weights

from .fake_atoms import slot_counts, without_fake_atoms
from .geometry import centre
from .graph import BOND_ORDERS, MolecularGraph, Vocabulary
from .network import EquivariantNetwork
from .vector_network import VectorNetwork

NETWORKS = {"vector": VectorNetwork, "e3nn": EquivariantNetwork}


def symmetric_uniform(key, n):
    """``(n, n)`` uniforms with ``u[i, j] = u[j, i]``: one draw per unordered pair."""
    u = jax.random.uniform(key, (n, n))
    upper = jnp.triu(u, 1)
    return upper + upper.T


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
