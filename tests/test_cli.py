"""The geoflow command end to end, and its one-line errors."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from geoflow.cli import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["fit", "--model", "maf", "--data", "8gaussians", "--steps", "200", "--layers", "2",
                 "--width", "16", "--ema", "0.99", "--out", str(out), "--quiet"]) == 0
    return out


def test_fit_writes_metrics_model_and_plot(run_dir):
    m = json.loads((run_dir / "metrics.json").read_text())
    for key in ("train_nll", "val_nll", "test_nll", "kl", "true_nll", "fit_seconds", "steps_per_second", "parameters", "wall_seconds"):
        assert key in m, key
    assert m["kl"] == pytest.approx(m["test_nll"] - m["true_nll"])
    assert (run_dir / "model.eqx").is_file() and (run_dir / "samples.png").is_file()


def test_sample_and_eval(run_dir, tmp_path, capsys):
    out = tmp_path / "s.npy"
    assert main(["sample", "--run", str(run_dir), "-n", "50", "--out", str(out)]) == 0
    assert np.load(out).shape == (50, 2)
    capsys.readouterr()
    assert main(["eval", "--run", str(run_dir), "--data-path", str(out)]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["n"] == 50 and np.isfinite(res["nll"])


def test_fit_on_digits_reports_bits_per_dim(tmp_path):
    assert main(["fit", "--model", "realnvp", "--data", "digits", "--steps", "50", "--layers", "2",
                 "--width", "32", "--out", str(tmp_path), "--quiet"]) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert 0 < m["test_bits_per_dim"] < 8 and (tmp_path / "samples.png").is_file()


@pytest.mark.slow
def test_fit_image_flow_on_digits_writes_bits_per_dim_and_sample_grids(tmp_path, capsys):
    assert main(["fit", "--model", "glow", "--data", "digits", "--steps", "30", "--layers", "1", "--levels", "2",
                 "--width", "8", "--batch-size", "32", "--eval-points", "64", "--out", str(tmp_path), "--quiet"]) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    # fit initialized every ActNorm of the multi-scale flow from its first batch
    from geoflow import load
    from geoflow.bijections import ActNorm

    model = load(tmp_path / "model.eqx")
    norms = [n for n in jax.tree.leaves(model, is_leaf=lambda n: isinstance(n, ActNorm)) if isinstance(n, ActNorm)]
    assert len(norms) == 2 and all(n.initialized for n in norms)
    assert m["final_train_loss"] < 64 * np.log(17)  # below the uniform distribution over the pixel levels
    assert m["shape"] == [1, 8, 8] and m["levels"] == 17 and m["test_images"] == 64
    # bits/dim in the 17-level pixel space: below the 4.09 of a uniform distribution over the levels
    assert 0 < m["test_bits_per_dim"] < np.log2(17)
    assert all((tmp_path / f).is_file() for f in ("model.eqx", "samples.png", "samples_t0.7.png"))
    assert main(["sample", "--run", str(tmp_path), "-n", "5", "--out", str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (5, 1, 8, 8)
    capsys.readouterr()
    assert main(["eval", "--run", str(tmp_path)]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["n"] == 271 and 0 < res["bits_per_dim"] < np.log2(17)


@pytest.mark.parametrize("argv, message", [
    (["fit", "--model", "glow", "--data", "mnist", "--data-path", "/nonexistent/mnist.npz"],
     "MNIST path /nonexistent/mnist.npz does not exist"),
    (["fit", "--model", "glow", "--data", "moons"], "--model glow trains on images: --data mnist or digits"),
    (["fit", "--model", "maf", "--data", "mnist"], "mnist is an image set: use --model realnvp-ms or glow or residual"),
    (["fit", "--model", "glow", "--data", "digits", "--levels", "4"], "allows 1..3 squeeze levels, got levels=4"),
    (["fit", "--model", "glow9"], "unknown model 'glow9'; expected one of nice, realnvp, maf, iaf, nsf, nsf-ar"),
    (["fit", "--data", "spiral"], "unknown data set 'spiral'; expected one of moons"),
    (["fit", "--model", "maf", "--data", "moons", "--steps", "5", "--ema", "1.5"], "ema_decay must be in [0, 1), got 1.5"),
    (["fit", "--model", "maf", "--data", "moons", "--steps", "5", "--devices", "0"],
     "devices must be a positive count, got 0"),
    (["fit", "--model", "maf", "--data", "moons", "--steps", "5", "--skip-nonfinite", "-1"],
     "skip_nonfinite must be a non-negative integer"),
    (["sample", "--run", "/nonexistent/run", "--out", "x.npy"], "has no model.eqx"),
    (["eval", "--run", "/nonexistent/run", "--data", "moons"], "has no model.eqx"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("geoflow: error:") and message in err[0], err


def test_fit_over_two_cpu_devices_trains_what_one_device_does(tmp_path):
    """``--devices 2`` splits the CPU into two devices before JAX starts (so it runs in a fresh
    process) and trains data-parallel: the same batches, hence the same losses, as one device."""
    def fit(devices):
        out = tmp_path / f"d{devices}"
        argv = ["fit", "--model", "realnvp", "--data", "moons", "--steps", "300", "--layers", "2", "--width", "16",
                "--devices", str(devices), "--out", str(out), "--quiet"]
        code = "import sys, jax; from geoflow.cli import main; r = main(sys.argv[1:]); print(len(jax.devices())); sys.exit(r)"
        done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "JAX_PLATFORMS": "cpu"})
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip().splitlines()[-1] == str(devices)
        return json.loads((out / "metrics.json").read_text())

    one, two = fit(1), fit(2)
    assert (one["devices"], two["devices"]) == (1, 2)
    np.testing.assert_allclose(two["final_train_loss"], one["final_train_loss"], rtol=1e-3)
    np.testing.assert_allclose(two["final_val_loss"], one["final_val_loss"], rtol=1e-3)


def test_nan_data_and_wrong_dimension(run_dir, tmp_path, capsys):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.array([[0.0, np.nan], [1.0, 2.0]]))
    assert main(["fit", "--data-path", str(bad), "--steps", "5", "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "NaN or inf in 1 row" in capsys.readouterr().err
    wide = tmp_path / "wide.npy"
    np.save(wide, np.zeros((4, 3)))
    assert main(["eval", "--run", str(run_dir), "--data-path", str(wide)]) == 2
    assert "dimension 3 but the model" in capsys.readouterr().err


@pytest.mark.slow
def test_continuous_models_from_the_command_line(tmp_path, capsys):
    small = ["--steps", "100", "--width", "16", "--eval-points", "200", "--quiet"]
    assert main(["fit", "--model", "ot-fm", "--data", "8gaussians", "--out", str(tmp_path / "ot"), *small]) == 0
    m = json.loads((tmp_path / "ot" / "metrics.json").read_text())
    assert np.isfinite(m["kl"]) and m["nll_points"] == 200 and (tmp_path / "ot" / "samples.png").is_file()
    assert main(["fit", "--model", "rectified", "--data", "moons", "--out", str(tmp_path / "rf"), *small]) == 0
    m = json.loads((tmp_path / "rf" / "metrics.json").read_text())
    assert m["straightness_after_reflow"] < m["straightness_before_reflow"]
    assert main(["fit", "--model", "fm", "--source", "8gaussians", "--data", "moons", "--out", str(tmp_path / "d2d"), *small]) == 0
    m = json.loads((tmp_path / "d2d" / "metrics.json").read_text())
    assert "test_w2" in m and "test_nll" not in m and m["parameters"] < 10_000  # source samples are not parameters
    capsys.readouterr()
    assert main(["eval", "--run", str(tmp_path / "d2d"), "--data", "moons"]) == 2
    assert "no density" in capsys.readouterr().err
    assert main(["fit", "--model", "maf", "--source", "moons", "--out", str(tmp_path / "x"), *small]) == 2
    assert "needs a flow-matching model" in capsys.readouterr().err


def test_discrete_flow_matching_from_the_command_line(tmp_path, capsys):
    small = ["--steps", "150", "--width", "64", "--layers", "2", "--eval-points", "200", "--quiet"]
    assert main(["fit", "--model", "dfm", "--data", "sorted-ones", "--source", "uniform",
                 "--out", str(tmp_path / "s"), *small]) == 0
    m = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert m["true_nll"] == pytest.approx(np.log(11)) and m["test_nll_bound"] > m["true_nll"] - 0.05
    assert 0 <= m["valid_fraction"] <= 1 and len(m["k_histogram"]) == 11
    np.save(tmp_path / "tokens.npy", np.array([[1, 1, 0, 0, 0, 0, 0, 0, 0, 0]]))
    capsys.readouterr()
    assert main(["eval", "--run", str(tmp_path / "s"), "--data-path", str(tmp_path / "tokens.npy")]) == 0
    assert json.loads(capsys.readouterr().out)["nll_bound"] > 0
    for argv, message in [
        (["--model", "dfm", "--data", "moons"], "trains on checkerboard, sorted-ones, qm9-smiles"),
        (["--model", "dfm", "--data", "sorted-ones", "--source", "moons"], "takes --source mask or uniform"),
        (["--model", "maf", "--data", "sorted-ones"], "token data: use --model dfm"),
        (["--model", "fm", "--source", "mask"], "--source mask goes with --model dfm"),
    ]:
        assert main(["fit", *argv, "--out", str(tmp_path / "x"), *small]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


@pytest.mark.slow
def test_molecules_train_sample_evaluate_from_the_command_line(tmp_path, capsys):
    from pathlib import Path

    sample_csv = Path(__file__).parent / "qm9_sample.csv"
    run = tmp_path / "mol"
    assert main(["molecules", "train", "--data-path", str(sample_csv), "--subset", "24", "--steps", "4", "--batch-size", "8",
                 "--hydrogens", "implicit", "--scalars", "8", "--vectors", "2", "--layers", "1", "--bond-basis", "4",
                 "--out", str(run), "--quiet"]) == 0
    assert json.loads((run / "metrics.json").read_text())["molecules"] > 20
    assert json.loads((run / "run.json").read_text()) == {"data": "qm9", "hydrogens": "implicit", "time_weight": 0.0, "fake_atoms": 0.0,
                                                          "bond_basis": 4, "seed": 0}
    assert main(["molecules", "sample", "--run", str(run), "-n", "3", "--steps", "4", "--out", str(tmp_path / "s.sdf")]) == 0
    capsys.readouterr()
    for sdf, count in [("s.sdf", 3), ("empty.sdf", 0), ("bad.sdf", 1)]:  # bad input is counted, never a traceback
        (tmp_path / "empty.sdf").write_text("")
        (tmp_path / "bad.sdf").write_text("not an sdf\n")
        assert main(["molecules", "evaluate", str(tmp_path / sdf), "--hydrogens", "implicit",
                     "--train-smiles", str(run / "train_smiles.txt")]) == 0
        m = json.loads((tmp_path / "metrics.json").read_text())
        assert m["molecules"] == count and 0 <= m["validity"] <= 1, m
        assert "atom_stability_implicit" in m and "atom_stability_edm" not in m  # EDM's rule needs hydrogens
    for argv, message in [(["molecules", "evaluate", str(tmp_path / "missing.sdf")], "does not exist"),
                          (["molecules", "sample", "--run", str(tmp_path), "--out", str(tmp_path / "x.sdf")], "no model.eqx")]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_molecule_training_defaults_follow_the_hydrogen_mode():
    """Unless given, the steps, the time weight and the bond-length head are the hydrogen mode's
    (explicit: 8,000, 1.5 and 24, the run behind RESULTS' explicit-hydrogen row); a value given
    is used as given, zero included."""
    from geoflow.cli import build_parser
    from molecules.cli import mode_option

    parse = lambda *a: build_parser().parse_args(["molecules", "train", *a])
    explicit, implicit = parse("--hydrogens", "explicit"), parse()
    names = ("steps", "time_weight", "bond_basis")
    assert [mode_option(explicit, n) for n in names] == [8_000, 1.5, 24]
    assert [mode_option(implicit, n) for n in names] == [20_000, 0.0, 0]
    given = parse("--hydrogens", "explicit", "--steps", "5", "--time-weight", "0", "--bond-basis", "0")
    assert [mode_option(given, n) for n in names] == [5, 0.0, 0]


@pytest.mark.slow
def test_proteins_train_sample_evaluate_from_the_command_line(tmp_path, capsys):
    run, out = tmp_path / "frames", tmp_path / "samples"
    assert main(["proteins", "train", "--length", "6", "--steps", "4", "--batch-size", "8", "--width", "16",
                 "--layers", "1", "--prediction", "velocity", "--rotation-rate", "10", "--ot", "--auxiliary-weight", "0.25", "--nll", "2",
                 "--out", str(run), "--quiet"]) == 0
    res = json.loads((run / "metrics.json").read_text())
    assert not res["self_conditioning"]  # the default for a velocity model, which cannot read its prediction
    assert res["steps"] == 4 and res["train_fragments"] > 100 and np.isfinite(res["heldout_nll_per_residue_nm"])
    assert main(["proteins", "sample", "--run", str(run), "-n", "3", "--steps", "4", "--out", str(out)]) == 0
    assert len(list(out.glob("*.pdb"))) == 3
    sampled = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert sampled["denoise_from"] == 1.0 and not sampled["steric_guidance"]  # a velocity model's defaults
    relaxed_out = tmp_path / "relaxed"
    assert main(["proteins", "sample", "--run", str(run), "-n", "8", "--steps", "4", "--relax", "--out", str(relaxed_out)]) == 0
    relaxation = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["relaxation"]
    from molecules.proteins import clashes
    assert relaxation["moves"] == "torsions"  # the default of a bare --relax
    assert 0 <= relaxation["fragments_moved"] <= 1 and not clashes(np.load(relaxed_out / "backbones.npy")).any()
    assert main(["proteins", "evaluate", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["samples"]["fragments"] == 3 and m["length"] == 6 and 0 <= m["ramachandran_js"] <= np.log(2)
    from molecules.proteins import cut_fragments, load_chains, load_fragments
    from molecules.proteins.data import EMBEDDED
    assert m["reference_set"]["fragments"] == m["reference"]["fragments"] == len(load_fragments(6).test)
    from molecules.proteins import write_pdb
    folder = tmp_path / "reference"
    folder.mkdir()
    for i, c in enumerate(load_chains()[:2]):
        write_pdb(folder / f"chain_{i}.pdb", c["backbone"])
    for reference, chains in [(EMBEDDED, load_chains()), (folder, load_chains(folder))]:  # all of a file, of a folder
        assert main(["proteins", "evaluate", str(out), "--data-path", str(reference)]) == 0
        used = json.loads((out / "metrics.json").read_text())["reference_set"]
        assert used["chains"] == [c["name"] for c in chains] and used["fragments"] == len(cut_fragments(chains, 6))
    assert len(load_chains()) == 40 and len(load_chains(folder)) == 2
    for argv, message in [(["proteins", "evaluate", str(tmp_path / "nothing")], "not a folder"),
                          (["proteins", "evaluate", str(tmp_path)], "no .pdb files"),
                          (["proteins", "train", "--length", "6", "--data-path", str(tmp_path / "x.npz")], "no backbone file"),
                          (["proteins", "train", "--length", "900", "--steps", "1"], "no unbroken stretch of 900"),
                          (["proteins", "sample", "--run", str(tmp_path), "--out", str(out)], "no model.eqx"),
                          (["proteins", "sample", "--run", str(run), "--denoise-from", "0.9", "--out", str(out)],
                           "needs a clean-frame model"),
                          (["proteins", "sample", "--run", str(run), "--steric-guidance", "--out", str(out)],
                           "predicts velocities"),
                          (["proteins", "sample", "--run", str(run), "--rotation-rate", "5", "--out", str(out)],
                           "predicts velocities"),
                          (["proteins", "train", "--length", "6", "--steps", "1", "--prediction", "velocity",
                            "--self-conditioning", "--out", str(tmp_path / "sc")], "needs prediction='frames'")]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_proteins_sample_a_clean_frame_model_guided_and_at_another_rotation_rate(tmp_path, capsys):
    run = tmp_path / "frames"
    assert main(["proteins", "train", "--length", "6", "--steps", "2", "--batch-size", "8", "--width", "16",
                 "--layers", "1", "--pair", "8", "--out", str(run), "--quiet"]) == 0
    drawn = {}
    for name, extra in [("default", []), ("faster", ["--rotation-rate", "8"])]:
        out = tmp_path / name
        assert main(["proteins", "sample", "--run", str(run), "-n", "3", "--steps", "4", "--out", str(out), *extra]) == 0
        drawn[name] = json.loads(capsys.readouterr().out.strip().splitlines()[-1]), np.load(out / "backbones.npy")
    summary = drawn["default"][0]
    # a clean-frame model's defaults: guided, the clean frames taken at t = 0.95, the trained sampling rate
    assert summary["steric_guidance"] and summary["denoise_from"] == 0.95 and summary["rotation_rate"] == 5.0
    assert drawn["faster"][0]["rotation_rate"] == 8.0
    assert np.all(np.isfinite(drawn["faster"][1])) and not np.allclose(drawn["default"][1], drawn["faster"][1])
    assert main(["proteins", "sample", "--run", str(run), "--rotation-rate", "-1", "--out", str(tmp_path / "x")]) == 2
    assert "non-negative" in capsys.readouterr().err


RFM_SMALL = ["--steps", "60", "--width", "16", "--eval-points", "100", "--quiet"]


@pytest.mark.slow
def test_riemannian_flow_matching_on_the_sphere_from_the_command_line(tmp_path, capsys):
    from geoflow.commands import count_parameters
    from manifolds import Sphere, rfm

    assert main(["fit", "--model", "rfm", "--data", "volcano", "--out", str(tmp_path / "v"), "--fourier-features", "8",
                 "--time-power", "2", *RFM_SMALL]) == 0
    m = json.loads((tmp_path / "v" / "metrics.json").read_text())
    # --width 16 and the Fourier features are used as given, never silently replaced
    assert m["parameters"] == count_parameters(rfm(jax.random.key(0), Sphere(2), width=16, fourier_features=8))
    capsys.readouterr()
    assert main(["fit", "--model", "rfm", "--data", "volcano", "--width", "0", "--out", str(tmp_path / "w")]) == 2
    assert "--width must be a positive number" in capsys.readouterr().err
    assert main(["fit", "--model", "rfm", "--data", "volcano", "--fourier-features", "3", "--out", str(tmp_path / "f")]) == 2
    assert "fourier_features must be 0 or a positive even number" in capsys.readouterr().err
    assert np.isfinite(m["test_nll"]) and m["uniform_nll"] == pytest.approx(np.log(4 * np.pi))
    assert (tmp_path / "v" / "samples.png").is_file()


@pytest.mark.slow
def test_riemannian_flow_matching_on_so3_from_the_command_line(tmp_path, capsys):
    from manifolds import SO3

    assert main(["fit", "--model", "rfm", "--data", "so3-mixture", "--out", str(tmp_path / "r"), *RFM_SMALL]) == 0
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["true_test_nll"] < m["test_nll"] < m["uniform_nll"] + 0.5 and (tmp_path / "r" / "samples.png").is_file()
    # eval takes rotations as (n, 3, 3) or flattened (n, 9), with the same NLL; off-manifold points
    # are one line and exit 2, never a traceback
    rotations = np.asarray(SO3().random_uniform(jax.random.key(0), (20,)), np.float32)
    np.save(tmp_path / "r33.npy", rotations)
    np.save(tmp_path / "r9.npy", rotations.reshape(20, 9))
    results = []
    for name in ("r33.npy", "r9.npy"):
        capsys.readouterr()
        assert main(["eval", "--run", str(tmp_path / "r"), "--data-path", str(tmp_path / name)]) == 0
        results.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["nll"])
    assert results[0] == pytest.approx(results[1], abs=1e-5)
    np.save(tmp_path / "bad.npy", 2 * rotations)
    assert main(["eval", "--run", str(tmp_path / "r"), "--data-path", str(tmp_path / "bad.npy")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "20 of 20 point(s) are off the model's SO3 manifold" in err[0], err
    np.save(tmp_path / "wrong.npy", rotations.reshape(20, 9)[:, :4])
    assert main(["eval", "--run", str(tmp_path / "r"), "--data-path", str(tmp_path / "wrong.npy")]) == 2
    assert "expects points of shape (3, 3)" in capsys.readouterr().err


@pytest.mark.slow
def test_riemannian_flow_matching_on_se3_frames_and_its_errors(tmp_path, capsys):
    from manifolds import SO3

    small = RFM_SMALL
    frames = np.concatenate([np.asarray(SO3().random_uniform(jax.random.key(0), (200,))).reshape(200, 9),
                             5 + np.random.default_rng(0).normal(size=(200, 3))], 1).astype(np.float32)
    np.save(tmp_path / "frames.npy", frames)
    assert main(["fit", "--model", "rfm", "--data-path", str(tmp_path / "frames.npy"), "--manifold", "se3",
                 "--out", str(tmp_path / "f"), *small]) == 0
    m = json.loads((tmp_path / "f" / "metrics.json").read_text())
    # uniform rotations (log 8π²) and a unit Gaussian (≈ 4.26 nats) is about what 60 steps reach
    assert np.isfinite(m["test_nll"]) and m["test_nll"] < np.log(8 * np.pi**2) + 4.26 + 1.0
    assert (tmp_path / "f" / "samples.png").is_file()
    rotations = np.broadcast_to(np.eye(3, dtype=np.float32), (50, 3, 3)).copy()
    rotations[:, 0, 0] = 2.0  # not rotations
    bad = tmp_path / "bad.npy"
    np.save(bad, rotations)
    capsys.readouterr()
    for argv, message in [
        (["--model", "rfm", "--data-path", str(bad), "--manifold", "so3"], "off the so3 manifold"),
        (["--model", "rfm", "--data-path", str(bad)], "needs --manifold"),
        (["--model", "maf", "--data", "fire"], "fire is data on a manifold: use --model rfm"),
        (["--model", "maf", "--manifold", "so3"], "--manifold goes with --model rfm"),
        (["--model", "maf", "--time-power", "2"], "--time-power goes with --model rfm"),
        (["--model", "rfm", "--data", "fire", "--manifold", "torus"], "lives on the sphere"),
        (["--model", "rfm", "--data", "moons"], "trains on volcano"),
    ]:
        assert main(["fit", *argv, "--out", str(tmp_path / "x"), *small]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_molecules_evaluate_agrees_with_a_plain_rdkit_recount(tmp_path):
    """``evaluate`` against a chemist's recount of the same SDF: every record counts, validity
    is RDKit sanitization, uniqueness and novelty are on canonical SMILES of the largest fragment,
    the training set canonicalised the same way (here given in other spellings)."""
    from rdkit import Chem

    from molecules import QM9_VOCABULARY, graph_from_smiles, graph_to_mol, write_sdf

    vocab = QM9_VOCABULARY
    mols = [graph_to_mol(graph_from_smiles(s, vocab, seed=k), vocab)[0]
            for k, s in enumerate(["CCO", "OCC", "C[NH3+]", "C=CC#N", "CC.O"])]
    broken = Chem.RWMol(mols[0])
    broken.GetBondBetweenAtoms(0, 1).SetBondType(Chem.BondType.TRIPLE)  # pentavalent carbon
    chlorine = Chem.AddHs(Chem.MolFromSmiles("CCl"))
    Chem.rdDistGeom.EmbedMolecule(chlorine, randomSeed=0)
    sdf = tmp_path / "s.sdf"
    write_sdf(mols + [broken.GetMol(), chlorine], sdf)
    # a record no reader can parse: its counts line promises atoms that are not there
    sdf.write_text(sdf.read_text() + "broken\n  RDKit\n\n  9  8  0  0  0  0  0  0  0  0999 V2000\nM  END\n$$$$\n")
    train = tmp_path / "train.txt"
    train.write_text("OCC\nC(C)#N\n[NH3+]C\n")  # CCO and C[NH3+] in other spellings; C#CC is not C=CC#N
    assert main(["molecules", "evaluate", str(sdf), "--hydrogens", "explicit", "--train-smiles", str(train)]) == 0
    ours = json.loads((tmp_path / "metrics.json").read_text())

    records = list(Chem.SDMolSupplier(str(sdf), removeHs=False, sanitize=False))
    valid = []
    for m in records:
        if m is None or any(a.GetSymbol() not in vocab.elements for a in m.GetAtoms()):
            continue
        m = Chem.Mol(m)
        if Chem.SanitizeMol(m, catchErrors=True) == Chem.SanitizeFlags.SANITIZE_NONE:
            valid.append(max(Chem.GetMolFrags(Chem.RemoveHs(m), asMols=True), key=lambda f: f.GetNumAtoms()))
    smiles = {Chem.MolToSmiles(m) for m in valid}
    known = {Chem.MolToSmiles(Chem.MolFromSmiles(s)) for s in train.read_text().split()}
    assert ours["molecules"] == len(records) == 8
    assert ours["validity"] == pytest.approx(len(valid) / len(records)) and len(valid) == 5
    assert ours["validity_x_uniqueness"] == pytest.approx(len(smiles) / len(records))
    assert ours["uniqueness"] == pytest.approx(len(smiles) / len(valid))
    assert ours["novelty"] == pytest.approx(len(smiles - known) / len(smiles)) == pytest.approx(2 / 4)  # C=CC#N, CC
