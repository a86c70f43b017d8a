"""Molecules: graphs with positions, atom types, charges and bonds; RDKit in and out; QM9;
stability, validity, uniqueness and novelty metrics."""

from geoflow.extras import require_extra

require_extra("molecules", "molecules", "rdkit")

from .chemistry import (graph_from_rdkit, graph_from_smiles, graph_to_mol, mol_from_smiles, mol_from_xyz,
                        mol_to_smiles, read_sdf, read_xyz, write_sdf)
from .graph import BOND_ORDERS, MolecularGraph, Vocabulary, check_graph, stack_graphs, unstack_graphs
from .metrics import atom_stability, edm_bond_order, edm_bonds, molecule_metrics, stability, stability_modes
from .qm9 import QM9_HEAVY_VOCABULARY, QM9_VOCABULARY, MoleculeDataset, load_qm9, qm9_vocabulary

__all__ = ["BOND_ORDERS", "MolecularGraph", "MoleculeDataset", "QM9_HEAVY_VOCABULARY", "QM9_VOCABULARY", "Vocabulary",
           "atom_stability", "check_graph", "edm_bond_order", "edm_bonds", "graph_from_rdkit", "graph_from_smiles",
           "graph_to_mol", "load_qm9", "mol_from_smiles", "mol_from_xyz", "mol_to_smiles", "molecule_metrics",
           "qm9_vocabulary", "read_sdf", "read_xyz", "stack_graphs", "stability", "stability_modes", "unstack_graphs",
           "write_sdf"]
