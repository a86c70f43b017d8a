"""RDKit in and out: SMILES (with an ETKDG conformer), SDF and XYZ files to molecular graphs,
and graphs back to RDKit molecules, SMILES and SDF with a sanitization result per molecule.

Every failure is a clear ``ValueError`` on the way in (an invalid SMILES, a failed embedding, an
element outside the vocabulary) and a reported, never raised, result on the way out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .graph import MolecularGraph, Vocabulary

_ORDER_OF = {"SINGLE": 1, "DOUBLE": 2, "TRIPLE": 3}


def _chem():
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    return Chem


def graph_from_rdkit(mol, vocabulary: Vocabulary, max_atoms: int | None = None, name: str = "molecule") -> MolecularGraph:
    """A molecule with a 3-D conformer → a :class:`MolecularGraph` (NumPy), bonds in Kekulé form,
    padded to ``max_atoms`` (default: its own size). Its hydrogens become atoms of the graph,
    unless ``vocabulary.implicit_hydrogens``: then they are removed (their count is implied by
    the heavy atoms' valences and charges)."""
    Chem = _chem()
    if mol.GetNumConformers() == 0:
        raise ValueError(f"{name} has no 3-D conformer; expected coordinates (embed it or read an SDF/XYZ)")
    mol = Chem.Mol(mol)
    if vocabulary.implicit_hydrogens:
        mol = Chem.RemoveAllHs(mol, sanitize=False)
    try:
        Chem.Kekulize(mol, clearAromaticFlags=True)
    except Exception as e:  # noqa: BLE001 - RDKit raises its own exception types
        raise ValueError(f"{name} cannot be kekulized: {e}") from None
    n = mol.GetNumAtoms()
    size = n if max_atoms is None else max_atoms
    if n > size:
        raise ValueError(f"{name} has {n} atoms; expected at most max_atoms={size}")
    positions = np.zeros((size, 3), np.float32)
    positions[:n] = mol.GetConformer().GetPositions()
    types, charges = np.zeros(size, np.int32), np.zeros(size, np.int32)
    for atom in mol.GetAtoms():
        i = atom.GetIdx()
        types[i] = vocabulary.element_index(atom.GetSymbol())
        charges[i] = vocabulary.charge_index(atom.GetFormalCharge())
    bonds = np.zeros((size, size), np.int32)
    for bond in mol.GetBonds():
        kind = str(bond.GetBondType())
        if kind not in _ORDER_OF:
            raise ValueError(f"{name} has a {kind.lower()} bond; expected single, double or triple")
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        bonds[i, j] = bonds[j, i] = _ORDER_OF[kind]
    mask = np.arange(size) < n
    return MolecularGraph(positions, types, charges, bonds, mask)


def mol_from_smiles(smiles: str, seed: int = 0):
    """An RDKit molecule with explicit hydrogens and one ETKDG (v3) conformer."""
    Chem = _chem()
    from rdkit.Chem import AllChem

    mol = Chem.MolFromSmiles(smiles) if smiles else None
    if mol is None:
        raise ValueError(f"invalid SMILES {smiles!r}: RDKit cannot parse it")
    mol = Chem.AddHs(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    if AllChem.EmbedMolecule(mol, params) != 0:
        raise ValueError(f"could not embed {smiles!r} in 3-D (ETKDG failed)")
    return mol


def graph_from_smiles(smiles: str, vocabulary: Vocabulary, max_atoms: int | None = None, seed: int = 0) -> MolecularGraph:
    return graph_from_rdkit(mol_from_smiles(smiles, seed), vocabulary, max_atoms, name=repr(smiles))


def mol_from_xyz(xyz: str, charge: int = 0, name: str = "xyz"):
    """An RDKit molecule from an XYZ block, with bonds (and formal charges) perceived by
    ``rdDetermineBonds.DetermineBonds`` for the total ``charge``."""
    Chem = _chem()
    from rdkit.Chem import rdDetermineBonds

    mol = Chem.MolFromXYZBlock(xyz)
    if mol is None:
        raise ValueError(f"{name} is not a valid XYZ block (atom count, comment line, then 'El x y z' rows)")
    try:
        rdDetermineBonds.DetermineBonds(mol, charge=charge)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{name}: bond perception failed ({e})") from None
    return mol


def read_xyz(path, charge: int = 0):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"XYZ file {path} does not exist")
    return mol_from_xyz(path.read_text(), charge, name=str(path))


def read_sdf(path, sanitize: bool = True, require_any: bool = True) -> tuple[list, int]:
    """``(molecules, failures)`` from an SDF file, hydrogens kept; unreadable records are counted.
    ``sanitize=False`` keeps molecules RDKit would reject (to score them as invalid); a file with
    no readable record is an error unless ``require_any=False``."""
    Chem = _chem()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SDF file {path} does not exist")
    try:
        mols = list(Chem.SDMolSupplier(str(path), removeHs=False, sanitize=sanitize))
    except OSError:  # RDKit refuses an empty file outright
        mols = []
    good = [m for m in mols if m is not None]
    if not good and require_any:
        raise ValueError(f"{path} holds no readable SDF records ({len(mols)} failed); expected an SDF file")
    return good, len(mols) - len(good)


def graph_to_mol(graph: MolecularGraph, vocabulary: Vocabulary):
    """``(molecule, error)``: the RDKit molecule of one (unbatched) graph with its conformer, and
    ``None`` if it sanitizes or RDKit's message if not (the molecule is then unsanitized)."""
    Chem = _chem()
    from rdkit.Geometry import Point3D

    mask = np.asarray(graph.mask, bool)
    index = np.flatnonzero(mask)
    types, charges = np.asarray(graph.atom_types), np.asarray(graph.charges)
    bonds, pos = np.asarray(graph.bonds), np.asarray(graph.positions, np.float64)
    mol = Chem.RWMol()
    for i in index:
        atom = Chem.Atom(vocabulary.elements[int(types[i])])
        atom.SetFormalCharge(vocabulary.charges[int(charges[i])])
        atom.SetNoImplicit(not vocabulary.implicit_hydrogens)  # else hydrogens are atoms of the graph
        mol.AddAtom(atom)
    kinds = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE}
    for a, i in enumerate(index):
        for b, j in enumerate(index[a + 1 :], start=a + 1):
            if bonds[i, j] > 0:
                mol.AddBond(a, b, kinds[int(bonds[i, j])])
    conf = Chem.Conformer(len(index))
    for a, i in enumerate(index):
        conf.SetAtomPosition(a, Point3D(*pos[i]))
    mol.AddConformer(conf, assignId=True)
    mol = mol.GetMol()
    try:
        Chem.SanitizeMol(mol)
        return mol, None
    except Exception as e:  # noqa: BLE001
        return mol, str(e).splitlines()[0] if str(e) else type(e).__name__


def mol_to_smiles(mol, largest_fragment: bool = False, isomeric: bool = False) -> str:
    """Canonical SMILES without explicit hydrogens (optionally of the largest fragment); without
    stereochemistry by default, since graphs carry none (it lives in the coordinates)."""
    Chem = _chem()
    mol = Chem.Mol(mol)
    if not isomeric:  # first, or RemoveHs keeps the hydrogens that define a double bond's stereo
        Chem.RemoveStereochemistry(mol)
    mol = Chem.RemoveHs(mol, sanitize=False)
    if largest_fragment:
        frags = Chem.GetMolFrags(mol, asMols=True, sanitizeFrags=False)
        mol = max(frags, key=lambda m: m.GetNumAtoms())
    return Chem.MolToSmiles(mol, isomericSmiles=isomeric)


def write_sdf(mols, path) -> int:
    """Molecules (``None`` entries skipped) to an SDF file with their conformers, sanitized or
    not; returns how many were written."""
    Chem = _chem()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with Chem.SDWriter(str(path)) as writer:
        writer.SetKekulize(False)  # bonds are already Kekulé; an invalid molecule must still be written
        for mol in mols:
            if mol is not None:
                mol.UpdatePropertyCache(strict=False)
                writer.write(mol)
                written += 1
    return written
