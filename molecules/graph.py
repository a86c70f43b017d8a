"""The molecular graph: one pytree for positions, atom types, formal charges and bond orders,
padded to a maximum atom count with a node mask, and the vocabularies that index them.

Bond orders live on every atom pair (``0`` none, ``1`` single, ``2`` double, ``3`` triple) in
Kekulé form, so a symmetric ``(N, N)`` integer matrix says everything; aromaticity is perceived
again by RDKit on the way out.
"""

from __future__ import annotations

from dataclasses import dataclass

import equinox as eqx
import numpy as np
from jaxtyping import Array, Bool, Float, Int

BOND_ORDERS = (0, 1, 2, 3)  # none, single, double, triple (Kekulé)


class MolecularGraph(eqx.Module):
    """One molecule, or a batch with leading axes, padded to ``N`` atoms.

    - `positions` ``(..., N, 3)`` in Å;
    - `atom_types` ``(..., N)`` indices into a :class:`Vocabulary`'s ``elements``;
    - `charges` ``(..., N)`` indices into its ``charges``;
    - `bonds` ``(..., N, N)`` bond orders, symmetric, zero on the diagonal and at padding;
    - `mask` ``(..., N)`` true for real atoms.
    """

    positions: Float[Array, "... N 3"]
    atom_types: Int[Array, "... N"]
    charges: Int[Array, "... N"]
    bonds: Int[Array, "... N N"]
    mask: Bool[Array, "... N"]

    @property
    def max_atoms(self) -> int:
        return self.mask.shape[-1]

    @property
    def num_atoms(self):
        return self.mask.sum(-1)


@dataclass(frozen=True)
class Vocabulary:
    """Element symbols and formal charges, in index order; built from data with :meth:`from_counts`.

    With ``implicit_hydrogens=True`` hydrogens are not atoms of the graph: a graph holds the heavy
    atoms, and RDKit completes each one's valence with hydrogens on the way out (as SMILES does).
    """

    elements: tuple[str, ...]
    charges: tuple[int, ...] = (0,)
    implicit_hydrogens: bool = False

    def __post_init__(self):
        if self.implicit_hydrogens and "H" in self.elements:
            raise ValueError("a vocabulary with implicit hydrogens cannot list H among its elements")

    def element_index(self, symbol: str) -> int:
        try:
            return self.elements.index(symbol)
        except ValueError:
            raise ValueError(f"unknown element {symbol!r}; this vocabulary has {', '.join(self.elements)}") from None

    def charge_index(self, charge: int) -> int:
        try:
            return self.charges.index(int(charge))
        except ValueError:
            raise ValueError(f"formal charge {charge:+d} is outside this vocabulary's {self.charges}") from None

    @classmethod
    def from_counts(cls, elements, charges, implicit_hydrogens: bool = False) -> "Vocabulary":
        """Elements in periodic-table order and charges in increasing order (0 always included)."""
        from rdkit import Chem

        table = Chem.GetPeriodicTable()
        return cls(tuple(sorted(set(elements), key=table.GetAtomicNumber)), tuple(sorted(set(charges) | {0})),
                   implicit_hydrogens)


def stack_graphs(graphs: list[MolecularGraph]) -> MolecularGraph:
    """A batch ``(B, N, …)`` of graphs padded to the same ``N``."""
    return MolecularGraph(*(np.stack([getattr(g, f) for g in graphs]) for f in
                            ("positions", "atom_types", "charges", "bonds", "mask")))


def unstack_graphs(batch: MolecularGraph) -> list[MolecularGraph]:
    return [MolecularGraph(*(np.asarray(getattr(batch, f))[i] for f in
                             ("positions", "atom_types", "charges", "bonds", "mask")))
            for i in range(np.asarray(batch.mask).shape[0])]


def check_graph(graph: MolecularGraph, vocabulary: Vocabulary, name: str = "graph") -> None:
    """A ``ValueError`` naming what is wrong: shapes, indices out of the vocabulary, asymmetric
    bonds, bonds or bond orders at padding."""
    n = np.asarray(graph.mask).shape[-1]
    shapes = {"positions": (n, 3), "atom_types": (n,), "charges": (n,), "bonds": (n, n)}
    for field, shape in shapes.items():
        got = np.asarray(getattr(graph, field)).shape[-len(shape):]
        if got != shape:
            raise ValueError(f"{name}.{field} has trailing shape {got}; expected {shape} for {n} atom slots")
    types, charges, bonds = (np.asarray(getattr(graph, f)) for f in ("atom_types", "charges", "bonds"))
    mask = np.asarray(graph.mask, bool)
    if (types[mask] < 0).any() or (types[mask] >= len(vocabulary.elements)).any():
        raise ValueError(f"{name} has atom types outside [0, {len(vocabulary.elements)})")
    if (charges[mask] < 0).any() or (charges[mask] >= len(vocabulary.charges)).any():
        raise ValueError(f"{name} has charge indices outside [0, {len(vocabulary.charges)})")
    if not np.array_equal(bonds, np.swapaxes(bonds, -1, -2)):
        raise ValueError(f"{name}.bonds is not symmetric; expected bonds[i, j] == bonds[j, i]")
    pair = mask[..., :, None] & mask[..., None, :]
    if (bonds[~pair] != 0).any():
        raise ValueError(f"{name} has bonds to padding atoms; expected zeros outside the mask")
    if (bonds < 0).any() or (bonds > max(BOND_ORDERS)).any():
        raise ValueError(f"{name}.bonds has orders outside {BOND_ORDERS}")
