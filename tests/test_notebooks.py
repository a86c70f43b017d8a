"""Every notebook runs top to bottom at a small size: its ``parameters`` cell is replaced by
the values below (papermill's convention, without the dependency)."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
QM9_FIXTURE = Path(__file__).parent / "qm9_smiles_sample.txt"  # the suite never needs qm9pack
QM9_MOLECULES = Path(__file__).parent / "qm9_sample.csv"
SMALL = {
    "01-classic-flows.ipynb": "STEPS_2D = 100\nSTEPS_DIGITS = 30\nDATA_2D = 'moons'\nN_TEST = 2000\n"
                             "MODELS = {'RealNVP': 'realnvp', 'NSF': 'nsf'}",
    "02-image-flows.ipynb": "DATA = 'digits'\nMNIST_PATH = None\nSTEPS = 20\nDEPTH, WIDTH = 1, 8\nBATCH = 32\nN_TEST = 64",
    "03-continuous-flows.ipynb": "STEPS_CNF = 20\nSTEPS_FM = 100\nSTEPS_REFLOW = 50\nDATA = '8gaussians'\nN_EVAL = 300\nGRID = 20",
    "04-riemannian-flows.ipynb": "STEPS_EARTH = 30\nSTEPS_SO3 = 30\nWIDTH = 32\nN_EVAL = 200\nMAP = 20\n"
                                 "EARTH_SETS = ('volcano', 'fire')\nTOL = 1e-3",
    "05-discrete-flows.ipynb": f"STEPS_TOY = 30\nSTEPS_SORTED = 30\nSTEPS_QM9 = 20\nQM9_DIM, QM9_DEPTH = 32, 1\n"
                               f"QM9_PATH = {str(QM9_FIXTURE)!r}\nN_SAMPLES = 300\nN_ELBO = 100\nWIDTH, BATCH = 32, 128\n"
                               "SAMPLING_STEPS = 8\nELBO_SAMPLES = 4\nSTEP_COUNTS, ETAS = (4,), (0.0, 5.0)",
    "06-molecules.ipynb": f"QM9_PATH = {str(QM9_MOLECULES)!r}\nHYDROGENS = 'implicit'\nSUBSET = 200\nSTEPS = 10\nBATCH = 16\n"
                          "SCALARS, VECTORS, LAYERS = 8, 2, 1\nN_SAMPLES = 6\nSAMPLING_STEPS = 5",
    "07-protein-backbones.ipynb": "LENGTH = 8\nSTEPS = 10\nWIDTH, LAYERS, PAIR = 16, 1, 8\nN_SAMPLES = 4\nSAMPLING_STEPS = 4\nN_NLL = 2",
}


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    params = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert params, f"{path.name} needs a cell tagged 'parameters'"
    assert path.name in SMALL, f"add small parameters for {path.name}"
    params[0].source = SMALL[path.name]
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
