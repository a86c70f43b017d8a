"""Protein backbone fragments: chains from an ``.npz`` file (the format of the embedded
``data/backbones.npz``: 40 single chains from the PDB) or from PDB files, split at chain breaks,
cut into fragments of a fixed length and centred; held-out chains for testing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .pdb import read_pdb

EMBEDDED = Path(__file__).parent / "data" / "backbones.npz"
BREAK = 4.2  # Å: consecutive CA atoms farther apart than this are a chain break


def load_chains(path=None) -> list[dict]:
    """Chains ``{"name", "backbone" (L, 4, 3), "sequence", "resnum"}`` from an ``.npz`` of the
    embedded format (``names``, ``lengths``, ``backbone``, ``sequence``, ``resnum``), a PDB file,
    or a folder of PDB files; default: the embedded set."""
    path = EMBEDDED if path is None else Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".pdb", ".ent"))
        if not files:
            raise FileNotFoundError(f"{path} holds no .pdb files")
        return [c for f in files for c in read_pdb(f)]
    if not path.is_file():
        raise FileNotFoundError(f"no backbone file at {path}; expected an .npz like {EMBEDDED.name} or PDB files")
    if path.suffix.lower() in (".pdb", ".ent"):
        return read_pdb(path)
    with np.load(path, allow_pickle=False) as z:
        missing = {"names", "lengths", "backbone"} - set(z.files)
        if missing:
            raise ValueError(f"{path} lacks {sorted(missing)}; expected names, lengths, backbone (N, 4, 3)[, sequence, resnum]")
        lengths, backbone = z["lengths"], z["backbone"]
        if backbone.ndim != 3 or backbone.shape[1:] != (4, 3) or lengths.sum() != len(backbone):
            raise ValueError(f"{path}: backbone must be (sum(lengths), 4, 3); got {backbone.shape} for "
                             f"{lengths.sum()} residues")
        names = [str(n) for n in z["names"]]
        sequences = [str(s) for s in z["sequence"]] if "sequence" in z.files else ["G" * int(n) for n in lengths]
        resnum = z["resnum"] if "resnum" in z.files else np.concatenate([np.arange(int(n)) for n in lengths])
    starts = np.concatenate([[0], np.cumsum(lengths)])
    return [{"name": names[i], "backbone": backbone[starts[i] : starts[i + 1]].astype(np.float32),
             "sequence": sequences[i], "resnum": resnum[starts[i] : starts[i + 1]]} for i in range(len(names))]


def split_at_breaks(backbone, max_ca_distance: float = BREAK) -> list[np.ndarray]:
    """Pieces of one chain ``(L, 4, 3)`` between chain breaks (consecutive CA > ``max_ca_distance`` Å)."""
    ca = backbone[:, 1]
    gaps = np.flatnonzero(np.linalg.norm(np.diff(ca, axis=0), axis=1) > max_ca_distance) + 1
    return [piece for piece in np.split(backbone, gaps) if len(piece)]


def cut_fragments(chains, length: int, stride: int | None = None) -> np.ndarray:
    """Fragments ``(F, length, 4, 3)``, each centred on its CA mean, cut every ``stride``
    residues (default ``length // 2``) from every unbroken piece of every chain."""
    if length < 2:
        raise ValueError(f"fragment length must be at least 2, got {length}")
    stride = max(1, length // 2) if stride is None else stride
    out = []
    for chain in chains:
        for piece in split_at_breaks(chain["backbone"]):
            for start in range(0, len(piece) - length + 1, stride):
                frag = piece[start : start + length]
                out.append(frag - frag[:, 1].mean(0))
    if not out:
        raise ValueError(f"no unbroken stretch of {length} residues in the chains")
    return np.asarray(out, np.float32)


@dataclass
class Fragments:
    """Centred backbone fragments ``(F, L, 4, 3)`` in Å: ``train`` from most chains, ``test``
    from held-out chains (every ``holdout_every``-th), so test fragments share no residues with
    training ones."""

    train: np.ndarray
    test: np.ndarray
    length: int
    train_chains: list[str]
    test_chains: list[str]


def load_fragments(length: int, path=None, stride: int | None = None, holdout_every: int = 5) -> Fragments:
    chains = load_chains(path)
    test = [c for i, c in enumerate(chains) if i % holdout_every == holdout_every - 1]
    train = [c for i, c in enumerate(chains) if i % holdout_every != holdout_every - 1] or chains
    return Fragments(cut_fragments(train, length, stride), cut_fragments(test, length, stride) if test else
                     np.zeros((0, length, 4, 3), np.float32), length, [c["name"] for c in train],
                     [c["name"] for c in test])
