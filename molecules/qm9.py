"""QM9 with its DFT coordinates, from the files the ``qm9pack`` package installs (read directly;
nothing downloads), bonds perceived by RDKit's ``rdDetermineBonds`` on all atoms; hydrogens are
then kept as atoms (``hydrogens="explicit"``, up to 29 atoms) or left implicit (``"implicit"``:
the heavy atoms only, up to 9, formal charges kept, so each hydrogen count is implied).

Perception fails for a few percent of QM9 (strained cages whose geometry admits no neutral bond
assignment); those molecules are counted and skipped, never raised on.
"""

from __future__ import annotations

import ast
import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geoflow.datasets.locations import qm9_files

from .chemistry import graph_from_rdkit, mol_from_xyz
from .graph import MolecularGraph, Vocabulary, stack_graphs

QM9_VOCABULARY = Vocabulary(("H", "C", "N", "O", "F"), (-1, 0, 1))
QM9_MAX_ATOMS = 29
QM9_HEAVY_VOCABULARY = Vocabulary(("C", "N", "O", "F"), (-1, 0, 1), implicit_hydrogens=True)
QM9_HEAVY_MAX_ATOMS = 9
HYDROGEN_MODES = {"explicit": (QM9_VOCABULARY, QM9_MAX_ATOMS), "implicit": (QM9_HEAVY_VOCABULARY, QM9_HEAVY_MAX_ATOMS)}


def qm9_vocabulary(hydrogens: str = "explicit") -> tuple[Vocabulary, int]:
    """QM9's ``(vocabulary, max_atoms)`` with hydrogens ``"explicit"`` (atoms) or ``"implicit"``."""
    if hydrogens not in HYDROGEN_MODES:
        raise ValueError(f"hydrogens must be one of {sorted(HYDROGEN_MODES)}; got {hydrogens!r}")
    return HYDROGEN_MODES[hydrogens]


@dataclass
class MoleculeDataset:
    """Graphs stacked ``(n, N, …)``, their canonical SMILES, the vocabulary, and how many input
    molecules were skipped because their bonds could not be perceived."""

    graphs: MolecularGraph
    smiles: list[str]
    vocabulary: Vocabulary
    failures: int = 0

    def __len__(self):
        return len(self.smiles)


def read_qm9_rows(path) -> list[tuple[str, str]]:
    """``(elements, coordinates)`` per molecule from a qm9pack-format CSV (columns ``Elements`` and
    ``XYZ_Ang`` holding Python-style lists), still as text: parsing is left to the rows used."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"QM9 file {path} does not exist")
    csv.field_size_limit(1 << 28)
    rows = []
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        if "Elements" not in header or "XYZ_Ang" not in header:
            raise ValueError(f"{path} is not a qm9pack CSV: expected columns Elements and XYZ_Ang, got {header[:6]}")
        ie, ix = header.index("Elements"), header.index("XYZ_Ang")
        for row in reader:
            rows.append((row[ie], row[ix]))
    return rows


def xyz_block(elements, coordinates) -> str:
    # fixed-point: RDKit's XYZ parser rejects exponents such as 7.7e-05
    return f"{len(elements)}\n\n" + "\n".join(f"{e} {x:.8f} {y:.8f} {z:.8f}" for e, (x, y, z) in zip(elements, coordinates))


def load_qm9(path=None, subset: int | None = None, seed: int = 0, hydrogens: str = "explicit",
             vocabulary: Vocabulary | None = None, max_atoms: int | None = None) -> MoleculeDataset:
    """QM9 molecules as graphs: all of qm9pack's files, or the CSV ``path``; ``subset`` draws that
    many at random (by ``seed``) before bond perception, which is the slow part (~0.2 ms each).
    ``hydrogens`` picks the default ``vocabulary`` and ``max_atoms`` (:func:`qm9_vocabulary`); a
    vocabulary given must agree with it."""
    from .chemistry import mol_to_smiles

    default_vocabulary, default_max_atoms = qm9_vocabulary(hydrogens)
    vocabulary = default_vocabulary if vocabulary is None else vocabulary
    max_atoms = default_max_atoms if max_atoms is None else int(max_atoms)
    if vocabulary.implicit_hydrogens != (hydrogens == "implicit"):
        raise ValueError(f"hydrogens={hydrogens!r} but the vocabulary has implicit_hydrogens="
                         f"{vocabulary.implicit_hydrogens}; give one that agrees")

    files = [Path(path)] if path is not None else qm9_files()
    rows = [r for f in files for r in read_qm9_rows(f)]
    if subset is not None:
        rows = [rows[i] for i in np.random.default_rng(seed).permutation(len(rows))[:subset]]
    graphs, smiles, failures = [], [], 0
    for k, (elements, coords) in enumerate(rows):
        try:
            mol = mol_from_xyz(xyz_block(ast.literal_eval(elements), ast.literal_eval(coords)), name=f"QM9 row {k}")
        except ValueError:  # bond perception failed: counted, not raised
            failures += 1
            continue
        # an element or charge outside the vocabulary is an error in the request, so it raises
        graphs.append(graph_from_rdkit(mol, vocabulary, max_atoms, name=f"QM9 row {k}"))
        smiles.append(mol_to_smiles(mol))
    if not graphs:
        raise ValueError(f"no molecule of {len(rows)} could be read; expected qm9pack-format rows")
    return MoleculeDataset(stack_graphs(graphs), smiles, vocabulary, failures)
