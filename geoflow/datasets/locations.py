"""Where data lives on this machine, found in one place: the shared data folder and QM9's files.

The shared data folder (MNIST, the earth-event sets, protein backbones) is the one named by the
environment variable ``GEOFLOW_DATA``; without it, ``shared/data`` beside the checkout (the
folder above the repository). Tests, benchmarks and notebooks look for data only through
:func:`shared_data`.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

DATA_VARIABLE = "GEOFLOW_DATA"


def shared_data(*parts: str) -> Path:
    """The path ``parts`` inside the shared data folder (``$GEOFLOW_DATA``, else
    ``../shared/data`` relative to the checkout); it may not exist."""
    root = os.environ.get(DATA_VARIABLE)
    base = Path(root) if root else Path(__file__).resolve().parents[3] / "shared" / "data"
    return base.joinpath(*parts)


def qm9_files() -> list[Path]:
    """The QM9 CSV files installed by ``qm9pack`` (located without importing the package, whose
    import needs pandas and ``pkg_resources``); used by the SMILES and the 3-D loaders."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("QM9 needs the qm9pack package (pip install qm9pack) or a local file via path=")
    files = sorted((Path(spec.origin).parent / "data").glob("qm9_part*.csv"))
    if not files:
        raise FileNotFoundError(f"qm9pack at {Path(spec.origin).parent} has no data/qm9_part*.csv files")
    return files
