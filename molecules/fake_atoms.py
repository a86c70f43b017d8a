"""FlowMol3's fake atoms: padding slots that training turns into atoms of an extra type beside
the real ones, so that a model learns to decide a molecule's size during generation; sampling
removes them (:func:`without_fake_atoms`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .geometry import centre
from .graph import MolecularGraph

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
