"""The package structure the ``geoflow`` command rests on: imports run one way (core, then
manifolds and discrete, then molecules), packages add commands and ``fit`` models through entry
points, and a command whose package cannot be imported says which extra is missing."""

import json
import subprocess
import sys

import numpy as np
import pytest

from geoflow.cli import build_parser, main
from geoflow.commands import FitModels, TrainingRun, UnavailableCommand, registered
from geoflow.datasets import random_split
from geoflow.extras import require_extra

ABOVE_THE_CORE = ("manifolds", "discrete", "molecules")


def loaded_after(statement: str) -> set[str]:
    """Top-level packages of ours that ``statement`` loads, in a fresh interpreter."""
    code = (f"import sys; {statement}; "
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules} & {'manifolds', 'discrete', 'molecules'})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


@pytest.mark.slow
def test_imports_run_one_way():
    assert loaded_after("import geoflow, geoflow.cli, geoflow.commands") == set()
    assert loaded_after("import manifolds, manifolds.cli") == {"manifolds"}
    assert loaded_after("import discrete, discrete.cli") == {"discrete"}


def test_the_parser_is_built_from_the_registered_commands_and_models():
    commands = registered("geoflow.commands")
    plugins = registered("geoflow.fit_models")
    assert {c.NAME for c in commands} == {"molecules", "proteins"}
    assert {m for p in plugins for m in p.models} == {"dfm", "rfm"}
    assert all(isinstance(p, FitModels) for p in plugins)
    # without them the core parser knows neither the commands nor the models
    bare = build_parser(plugins=[], commands=[])
    with pytest.raises(Exception, match="unknown model 'rfm'"):
        bare.parse_args(["fit", "--model", "rfm"])
    with pytest.raises(Exception, match="invalid choice: 'molecules'"):
        bare.parse_args(["molecules", "train"])


def test_a_third_party_fit_model_and_its_options(tmp_path, monkeypatch, capsys):
    """A package registers a model the way ours do; its option given to another model is refused."""
    seen = {}

    def fit(args):
        run = TrainingRun.start(args, tmp_path / "default")
        seen["args"] = args
        return run.finish({"w": np.zeros(2)}, {"model": "toy"}, {"loss": 1.0})

    toy = FitModels(models=("toy",), data=("toy-data",), data_kind="toy data", fit=fit,
                    add_arguments=lambda p: p.add_argument("--toy-knob", type=int))
    monkeypatch.setattr("geoflow.cli.fit_plugins", lambda: [toy])
    monkeypatch.setattr("geoflow.cli.registered", lambda group: [] if group == "geoflow.commands" else [toy])
    assert main(["fit", "--model", "toy", "--data", "toy-data", "--toy-knob", "3", "--seed", "7",
                 "--out", str(tmp_path / "r")]) == 0
    assert seen["args"].toy_knob == 3
    assert json.loads((tmp_path / "r" / "run.json").read_text()) == {"model": "toy", "seed": 7}
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["loss"] == 1.0
    capsys.readouterr()
    for argv, message in [(["--model", "maf", "--toy-knob", "1"], "--toy-knob goes with --model toy"),
                          (["--model", "maf", "--data", "toy-data"], "toy-data is toy data: use --model toy")]:
        assert main(["fit", *argv]) == 2
        assert message in capsys.readouterr().err


def test_a_command_whose_extra_is_missing_says_which(capsys, monkeypatch):
    with pytest.raises(ImportError, match=r"pip install 'geoflow\[molecules\]'"):
        require_extra("molecules", "molecules", "a_module_that_is_not_installed")
    missing = UnavailableCommand("molecules", "molecules needs rdkit, which the 'molecules' extra installs")
    monkeypatch.setattr("geoflow.cli.registered", lambda group: [missing] if group == "geoflow.commands" else [])
    assert main(["molecules", "train", "--steps", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "geoflow molecules is unavailable" in err[0] and "'molecules' extra" in err[0]


def test_random_split_is_80_10_10_disjoint_and_seeded():
    x = np.arange(827)
    train, val, test = random_split(x, seed=3)
    assert (len(train), len(val), len(test)) == (661, 82, 84)
    assert sorted(np.concatenate([train, val, test]).tolist()) == x.tolist()
    assert np.array_equal(random_split(x, seed=3)[2], test) and not np.array_equal(random_split(x, seed=4)[2], test)
    with pytest.raises(ValueError, match="at least 10 examples; got 9"):
        random_split(np.arange(9), seed=0)


def test_the_core_installs_without_the_chemistry_stack():
    """``pip install .`` pulls no RDKit, e3nn-jax, biotite or geomstats; the extras do."""
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    names = lambda specs: {s.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip() for s in specs}
    assert not names(project["dependencies"]) & {"rdkit", "e3nn-jax", "biotite", "geomstats"}
    extras = project["optional-dependencies"]
    assert {"rdkit", "e3nn-jax"} <= names(extras["molecules"]) and {"rdkit", "biotite"} <= names(extras["proteins"])
    assert "geomstats" in names(extras["dev"])
