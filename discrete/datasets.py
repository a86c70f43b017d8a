"""Token data: the discretized 2-D checkerboard, the "sorted ones" toy, and QM9 SMILES strings.

The two toys have exact answers: the checkerboard is uniform on 8192 of 128 × 128 cells (true
NLL ``ln 8192 ≈ 9.011`` nats), a sorted-ones sequence is ``k`` ones then zeros with ``k``
uniform on ``0 … L`` (true NLL ``ln(L + 1)``). QM9 SMILES come from the files the ``qm9pack``
package installs (read directly; nothing downloads) or from any local file.
"""

from __future__ import annotations

import csv
import math
import re
import dataclasses
from pathlib import Path

import numpy as np

from geoflow.datasets import Dataset, random_split
from geoflow.datasets.locations import qm9_files

CHECKERBOARD_CELLS = 8192


@dataclasses.dataclass(frozen=True)
class TokenDataset(Dataset):
    """Integer sequences ``(n, L)`` split into train/val/test (a :class:`geoflow.datasets.Dataset`
    whose ``true_nll`` is the true NLL per sequence in nats for the toys), with the vocabulary
    size and, for text, the tokenizer that decodes samples back to strings."""

    vocab_size: int = dataclasses.field(default=0, kw_only=True)
    tokenizer: object | None = dataclasses.field(default=None, kw_only=True)

    @property
    def length(self) -> int:
        return self.train.shape[1]


def checkerboard_tokens(n: int, seed: int = 0, bins: int = 128) -> np.ndarray:
    """``(n, 2)`` tokens of the 4 × 4 checkerboard on ``[-4, 4]²`` (8 dark squares) discretized
    to ``bins`` per axis; uniform over its ``bins²/2`` dark cells."""
    if bins % 4:
        raise ValueError(f"bins must be a multiple of 4 (so squares align with cells), got {bins}")
    rng = np.random.default_rng(seed)
    side = bins // 4
    i = rng.integers(4, size=n)
    j = 2 * rng.integers(2, size=n) + (i % 2)  # dark squares: i + j even
    return (np.stack([i, j], 1) * side + rng.integers(side, size=(n, 2))).astype(np.int32)


def checkerboard_tokens_log_prob(x: np.ndarray, bins: int = 128) -> np.ndarray:
    """Exact log-probability of :func:`checkerboard_tokens` (``−inf`` off the dark cells)."""
    squares = np.asarray(x) // (bins // 4)
    dark = squares.sum(-1) % 2 == 0
    return np.where(dark, -math.log(bins * bins / 2), -np.inf)


def sorted_ones(n: int, seed: int = 0, length: int = 10) -> np.ndarray:
    """``(n, length)`` binary sequences: ``k`` ones then zeros, ``k`` uniform on ``0 … length``."""
    k = np.random.default_rng(seed).integers(length + 1, size=n)
    return (np.arange(length) < k[:, None]).astype(np.int32)


def sorted_ones_counts(x: np.ndarray) -> tuple[float, np.ndarray]:
    """``(fraction of exactly valid sequences, histogram of k over 0 … L among the valid)``."""
    x = np.asarray(x)
    k = x.sum(1)
    valid = np.all(x == (np.arange(x.shape[1]) < k[:, None]), axis=1)
    return float(valid.mean()), np.bincount(k[valid], minlength=x.shape[1] + 1)


def _splits(name, x, vocab_size, true_nll, seed, tokenizer=None):
    return TokenDataset(name, *random_split(x, seed), true_nll=true_nll, vocab_size=vocab_size, tokenizer=tokenizer)


# ---- SMILES ---------------------------------------------------------------------------------

# atoms in brackets, two-letter elements, ring-bond numbers above 9, then single characters
SMILES_TOKEN = re.compile(r"(\[[^\]]+\]|Br|Cl|%\d{2}|.)")


class SmilesTokenizer:
    """SMILES ↔ token ids. ``level="char"`` splits into characters, ``"atom"`` keeps bracket
    atoms, ``Cl``, ``Br`` and ``%nn`` whole. Id 0 is padding, which also ends a string."""

    PAD = "<pad>"

    def __init__(self, vocabulary: list[str], level: str = "atom"):
        if level not in ("char", "atom"):
            raise ValueError(f"unknown tokenizer level {level!r}; expected 'char' or 'atom'")
        self.level = level
        self.vocabulary = [self.PAD] + [t for t in vocabulary if t != self.PAD]
        self.index = {t: i for i, t in enumerate(self.vocabulary)}

    @classmethod
    def fit(cls, smiles: list[str], level: str = "atom") -> "SmilesTokenizer":
        tok = cls([], level)
        return cls(sorted({t for s in smiles for t in tok.split(s)}), level)

    def split(self, smiles: str) -> list[str]:
        return list(smiles) if self.level == "char" else SMILES_TOKEN.findall(smiles)

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary)

    def encode(self, smiles: list[str], length: int) -> np.ndarray:
        """``(n, length)`` ids, padded; a string with more tokens or an unknown token is an error."""
        out = np.zeros((len(smiles), length), np.int32)
        for row, s in enumerate(smiles):
            tokens = self.split(s)
            if len(tokens) > length:
                raise ValueError(f"SMILES {s!r} has {len(tokens)} tokens; expected at most {length}")
            unknown = [t for t in tokens if t not in self.index]
            if unknown:
                raise ValueError(f"SMILES {s!r} has tokens outside the vocabulary: {unknown}")
            out[row, : len(tokens)] = [self.index[t] for t in tokens]
        return out

    def decode(self, ids: np.ndarray) -> list[str]:
        """Strings from ``(n, L)`` ids, each cut at its first padding token."""
        strings = []
        for row in np.asarray(ids):
            end = np.flatnonzero(row == 0)
            row = row[: end[0]] if len(end) else row
            strings.append("".join(self.vocabulary[i] for i in row))
        return strings


def read_smiles(path) -> list[str]:
    """SMILES from a ``.txt`` file (one per line), a CSV with a ``SMILES`` column, or a folder
    of such CSVs (e.g. qm9pack's ``data``)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.csv"))
        if not files:
            raise FileNotFoundError(f"{path} holds no .csv files of SMILES")
        return [s for f in files for s in read_smiles(f)]
    if not path.is_file():
        raise FileNotFoundError(f"SMILES file {path} does not exist")
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            reader = csv.reader(f)
            header = next(reader, [])
            if "SMILES" not in header:
                raise ValueError(f"{path} has no SMILES column; its columns are {header[:8]}")
            column = header.index("SMILES")
            return [row[column] for row in reader if len(row) > column and row[column]]
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def load_qm9_smiles(path=None, seed: int = 0, level: str = "atom", max_molecules: int | None = None) -> TokenDataset:
    """QM9's SMILES as tokens (length: the longest string), with the tokenizer attached; the
    default source is qm9pack's installed files, ``path`` any file :func:`read_smiles` reads."""
    smiles = read_smiles(path) if path is not None else [s for f in qm9_files() for s in read_smiles(f)]
    if not smiles:
        raise ValueError("no SMILES strings found; expected at least one molecule")
    if max_molecules is not None:
        smiles = [smiles[i] for i in np.random.default_rng(seed).permutation(len(smiles))[:max_molecules]]
    tokenizer = SmilesTokenizer.fit(smiles, level)
    length = max(len(tokenizer.split(s)) for s in smiles)
    return _splits("qm9-smiles", tokenizer.encode(smiles, length), tokenizer.vocab_size, None, seed, tokenizer)


def smiles_metrics(generated: list[str], training: list[str]) -> dict:
    """EDM/GuacaMol-style scores: validity (RDKit parses and sanitizes a non-empty string),
    uniqueness (distinct canonical SMILES among the valid), novelty (distinct valid ones not in
    the training set). Invalid strings are counted, never raised on."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    canonical = []
    for s in generated:
        mol = Chem.MolFromSmiles(s) if s else None
        if mol is not None and mol.GetNumAtoms() > 0:
            canonical.append(Chem.MolToSmiles(mol))
    train_set = set()
    for s in training:
        mol = Chem.MolFromSmiles(s)
        if mol is not None:
            train_set.add(Chem.MolToSmiles(mol))
    unique = set(canonical)
    n = max(len(generated), 1)
    return {"n": len(generated), "valid": len(canonical), "validity": len(canonical) / n,
            "uniqueness": len(unique) / max(len(canonical), 1),
            "novelty": len(unique - train_set) / max(len(unique), 1)}


def load_token_data(name: str, seed: int = 0, n: int = 100_000, path=None) -> TokenDataset:
    """A built-in set by name: ``checkerboard`` (V = 128, L = 2), ``sorted-ones`` (V = 2, L = 10)
    or ``qm9-smiles`` (from qm9pack, or ``path``)."""
    if name == "checkerboard":
        return _splits(name, checkerboard_tokens(n, seed), 128, math.log(CHECKERBOARD_CELLS), seed)
    if name == "sorted-ones":
        return _splits(name, sorted_ones(n, seed), 2, math.log(11), seed)
    if name == "qm9-smiles":
        return load_qm9_smiles(path, seed)
    raise ValueError(f"unknown token data set {name!r}; expected one of {', '.join(TOKEN_DATA)}")


TOKEN_DATA = ("checkerboard", "sorted-ones", "qm9-smiles")
