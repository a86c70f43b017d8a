"""Molecule metrics: atom and molecule stability (from explicit bonds with a valence table that
knows formal charges, or from distances by EDM's rule), and RDKit validity, uniqueness, novelty.

EDM's rule (Hoogeboom et al. 2022) infers a bond order from the distance of each atom pair
against tabulated single, double and triple bond lengths (in pm, plus margins of 10, 5 and 3 pm)
and calls an atom stable when the inferred orders sum to its element's one valence; charges are
ignored. The tables are standard covalent bond lengths (wiredchemist.com; chemistry-reference.com).
"""

from __future__ import annotations

import re

import numpy as np

from .graph import MolecularGraph, Vocabulary, unstack_graphs

# typical bond lengths in pm, for the elements of QM9 and GEOM-drugs' common ones
_SINGLE = {("H", "H"): 74, ("H", "C"): 109, ("H", "N"): 101, ("H", "O"): 96, ("H", "F"): 92, ("H", "S"): 134,
           ("H", "Cl"): 127, ("C", "C"): 154, ("C", "N"): 147, ("C", "O"): 143, ("C", "F"): 135, ("C", "S"): 182,
           ("C", "Cl"): 177, ("N", "N"): 145, ("N", "O"): 140, ("N", "F"): 136, ("N", "S"): 168, ("N", "Cl"): 175,
           ("O", "O"): 148, ("O", "F"): 142, ("O", "S"): 151, ("F", "F"): 142, ("S", "S"): 204}
_DOUBLE = {("C", "C"): 134, ("C", "N"): 129, ("C", "O"): 120, ("C", "S"): 160, ("N", "N"): 125, ("N", "O"): 121,
           ("O", "O"): 121, ("O", "S"): 143}
_TRIPLE = {("C", "C"): 120, ("C", "N"): 116, ("C", "O"): 113, ("N", "N"): 110}
_MARGINS = (10, 5, 3)
# EDM's valences (one per element, charges ignored)
EDM_VALENCE = {"H": 1, "C": 4, "N": 3, "O": 2, "F": 1, "S": 2, "Cl": 1}
# allowed valences per (element, formal charge) for explicit bonds
VALENCES = {("H", 0): (1,), ("C", 0): (4,), ("C", 1): (3,), ("C", -1): (3,), ("N", 0): (3,), ("N", 1): (4,),
            ("N", -1): (2,), ("O", 0): (2,), ("O", 1): (3,), ("O", -1): (1,), ("F", 0): (1,), ("S", 0): (2, 4, 6),
            ("S", 1): (3,), ("S", -1): (1,), ("Cl", 0): (1,), ("P", 0): (3, 5), ("P", 1): (4,), ("Br", 0): (1,),
            ("I", 0): (1,)}


def _length(table, a, b):
    return table.get((a, b), table.get((b, a)))


def edm_bond_order(a: str, b: str, distance: float) -> int:
    """EDM's bond order for elements ``a, b`` at ``distance`` Å (0: no bond)."""
    d = 100 * distance
    single = _length(_SINGLE, a, b)
    if single is None or d >= single + _MARGINS[0]:
        return 0
    double = _length(_DOUBLE, a, b)
    if double is None or d >= double + _MARGINS[1]:
        return 1
    triple = _length(_TRIPLE, a, b)
    return 3 if triple is not None and d < triple + _MARGINS[2] else 2


def edm_bonds(elements: list[str], positions: np.ndarray) -> np.ndarray:
    """``(n, n)`` bond orders inferred from distances by :func:`edm_bond_order`."""
    n = len(elements)
    dist = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    bonds = np.zeros((n, n), np.int32)
    for i in range(n):
        for j in range(i + 1, n):
            bonds[i, j] = bonds[j, i] = edm_bond_order(elements[i], elements[j], dist[i, j])
    return bonds


def edm_atom_stability(elements: list[str], positions: np.ndarray) -> np.ndarray:
    """EDM's rule on raw atoms: per atom, whether the distance-inferred bond orders sum to its
    element's valence (usable on molecules whose bonds RDKit cannot perceive)."""
    valence = edm_bonds(elements, np.asarray(positions, np.float64)).sum(1)
    return np.array([EDM_VALENCE.get(e) == v for e, v in zip(elements, valence)], bool)


def stability_modes(vocabulary: Vocabulary) -> tuple[str, ...]:
    """The stability rules that apply to graphs of ``vocabulary``: ``("explicit", "edm")`` with
    hydrogens as atoms, ``("implicit",)`` without (EDM's rule needs every hydrogen's position)."""
    return ("implicit",) if vocabulary.implicit_hydrogens else ("explicit", "edm")


def atom_stability(graph: MolecularGraph, vocabulary: Vocabulary, mode: str = "explicit") -> np.ndarray:
    """Per real atom of one graph, whether its valence is right: ``"explicit"`` sums the graph's
    bond orders and checks them against :data:`VALENCES` for the atom's formal charge; ``"edm"``
    infers bonds from distances and checks :data:`EDM_VALENCE`; ``"implicit"`` (hydrogens left
    implicit) asks that hydrogens can complete the valence: the bond orders sum to at most the
    largest valence :data:`VALENCES` allows for the element and charge, as RDKit's implicit
    hydrogen count does. The modes that apply to a vocabulary are :func:`stability_modes`."""
    if mode not in stability_modes(vocabulary):
        raise ValueError(f"stability mode {mode!r} does not apply to this vocabulary "
                         f"(implicit_hydrogens={vocabulary.implicit_hydrogens}); expected one of "
                         f"{stability_modes(vocabulary)}")
    mask = np.asarray(graph.mask, bool)
    elements = [vocabulary.elements[int(t)] for t in np.asarray(graph.atom_types)[mask]]
    if mode == "edm":
        return edm_atom_stability(elements, np.asarray(graph.positions)[mask])
    valence = np.asarray(graph.bonds)[np.ix_(mask, mask)].sum(1)
    charges = [vocabulary.charges[int(c)] for c in np.asarray(graph.charges)[mask]]
    allowed = [VALENCES.get((e, c), ()) for e, c in zip(elements, charges)]
    if mode == "implicit":
        return np.array([bool(a) and v <= max(a) for a, v in zip(allowed, valence)], bool)
    return np.array([v in a for a, v in zip(allowed, valence)], bool)


def stability(graphs: MolecularGraph | list[MolecularGraph], vocabulary: Vocabulary, mode: str = "explicit") -> dict:
    """``{"atom_stability", "molecule_stability", "molecules", "atoms"}`` over a batch of graphs."""
    graphs = unstack_graphs(graphs) if isinstance(graphs, MolecularGraph) else graphs
    per = [atom_stability(g, vocabulary, mode) for g in graphs]
    atoms = sum(len(p) for p in per)
    return {"atom_stability": float(sum(p.sum() for p in per) / max(atoms, 1)),
            "molecule_stability": float(np.mean([p.all() and len(p) > 0 for p in per])) if per else 0.0,
            "molecules": len(per), "atoms": atoms}


def molecule_metrics(graphs: MolecularGraph | list[MolecularGraph], vocabulary: Vocabulary,
                     train_smiles: list[str] | None = None) -> dict:
    """Stability (each of :func:`stability_modes`); validity as EDM computes it (RDKit sanitizes the molecule; its
    largest fragment is the molecule's SMILES), connectivity (valid and one fragment), uniqueness
    among the valid, ``validity × uniqueness`` and novelty against ``train_smiles`` (any valid
    SMILES spelling; each is canonicalised as the samples are). A molecule
    RDKit rejects is counted under its error in ``failures``, never raised on."""
    from rdkit import Chem

    from .chemistry import graph_to_mol, mol_to_smiles

    graphs = unstack_graphs(graphs) if isinstance(graphs, MolecularGraph) else graphs
    smiles, errors, connected = [], {}, 0
    for g in graphs:
        mol, error = graph_to_mol(g, vocabulary)
        if error is None:
            smiles.append(mol_to_smiles(mol, largest_fragment=True))
            connected += len(Chem.GetMolFrags(mol)) == 1
        else:  # one count per kind of failure: atom indices and valences folded away
            key = re.sub(r"\d+", "N", error)[:80]
            errors[key] = errors.get(key, 0) + 1
    n = max(len(graphs), 1)
    unique = set(smiles)
    out = {"molecules": len(graphs), "validity": len(smiles) / n, "connectivity": connected / n,
           "uniqueness": len(unique) / max(len(smiles), 1), "validity_x_uniqueness": len(unique) / n,
           "failures": errors}
    if train_smiles is not None:  # canonicalised as the samples are, so that spelling cannot make a molecule novel
        known = {mol_to_smiles(m) for m in map(Chem.MolFromSmiles, train_smiles) if m is not None}
        out["novelty"] = len(unique - known) / max(len(unique), 1)
    for mode in stability_modes(vocabulary):
        s = stability(graphs, vocabulary, mode)
        out[f"atom_stability_{mode}"], out[f"molecule_stability_{mode}"] = s["atom_stability"], s["molecule_stability"]
    return out
