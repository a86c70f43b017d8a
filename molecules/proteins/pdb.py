"""Backbone PDB files: write N, CA, C, O per residue; read them back (any PDB with ATOM records)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .geometry import ATOMS

THREE_LETTER = {"A": "ALA", "R": "ARG", "N": "ASN", "D": "ASP", "C": "CYS", "Q": "GLN", "E": "GLU", "G": "GLY",
                "H": "HIS", "I": "ILE", "L": "LEU", "K": "LYS", "M": "MET", "F": "PHE", "P": "PRO", "S": "SER",
                "T": "THR", "W": "TRP", "Y": "TYR", "V": "VAL"}
ONE_LETTER = {v: k for k, v in THREE_LETTER.items()}


def write_pdb(path, backbone, sequence: str | None = None, chain: str = "A") -> Path:
    """Write ``backbone`` ``(L, 4, 3)`` (N, CA, C, O in Å) as ATOM records; residues are glycine
    unless ``sequence`` (one-letter codes) says otherwise."""
    backbone = np.asarray(backbone, np.float64)
    if backbone.ndim != 3 or backbone.shape[1:] != (4, 3):
        raise ValueError(f"backbone must have shape (L, 4, 3) for N, CA, C, O; got {backbone.shape}")
    if sequence is not None and len(sequence) != len(backbone):
        raise ValueError(f"sequence has {len(sequence)} residues, backbone {len(backbone)}")
    lines, serial = [], 1
    for i, residue in enumerate(backbone):
        name = THREE_LETTER.get(sequence[i], "UNK") if sequence else "GLY"
        for atom, (x, y, z) in zip(ATOMS, residue):
            lines.append(f"ATOM  {serial:5d}  {atom:<3s} {name} {chain}{i + 1:4d}    {x:8.3f}{y:8.3f}{z:8.3f}"
                         f"  1.00  0.00           {atom[0]}")
            serial += 1
    lines += ["TER", "END"]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def read_pdb(path) -> list[dict]:
    """The chains of a PDB file: a list of ``{"name", "backbone" (L, 4, 3), "sequence", "resnum"}``,
    keeping residues (first model, first altloc) that have all of N, CA, C and O."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no PDB file at {path}")
    residues: dict[str, dict] = {}
    order: list[tuple[str, str]] = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("ENDMDL"):
            break
        if not line.startswith("ATOM") or len(line) < 54:
            continue
        atom, altloc, chain, key = line[12:16].strip(), line[16], line[21], line[22:27]
        if atom not in ATOMS or altloc not in (" ", "A"):
            continue
        res = residues.setdefault(chain, {})
        if key not in res:
            res[key] = {"name": line[17:20], "atoms": {}}
            order.append((chain, key))
        res[key]["atoms"].setdefault(atom, [float(line[30:38]), float(line[38:46]), float(line[46:54])])
    chains = []
    for chain in dict.fromkeys(c for c, _ in order):
        keys = [k for c, k in order if c == chain and len(residues[chain][k]["atoms"]) == 4]
        if not keys:
            continue
        chains.append({"name": f"{path.stem}_{chain}",
                       "backbone": np.array([[residues[chain][k]["atoms"][a] for a in ATOMS] for k in keys], np.float32),
                       "sequence": "".join(ONE_LETTER.get(residues[chain][k]["name"], "X") for k in keys),
                       "resnum": np.array([int(k[:4]) for k in keys])})
    if not chains:
        raise ValueError(f"{path} has no residues with all of N, CA, C, O in its ATOM records")
    return chains
