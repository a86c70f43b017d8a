"""3-D molecule generation on QM9 (``molecules.flow.MoleculeFlow``), with hydrogens as atoms or
implicit: validity, connectivity, validity × uniqueness, novelty and stability of sampled
molecules, with the curve of these against CPU time, beside the published rows — EDM
(98.7 / 82.0 / 91.9 / 90.7) and EquiFM (98.9 / 88.3 / 94.7 / 93.5) with explicit hydrogens
(atom stab. / mol. stab. / validity / V×U, %); and throughput: training and sampling molecules/s.

A long run is checkpointed after every chunk and resumed with ``--resume`` (same arguments);
the curve is kept in the checkpoint's directory and continues across runs. Figures go to
``results/qm9_molecules_<hydrogens>.json``, ``…_<hydrogens>_e3nn.json`` for the e3nn network,
``…_<hydrogens>_<tag>.json`` with ``--tag``
(``--quick`` only prints them).

Usage: python benchmarks/qm9_molecules.py [--quick] [--hydrogens implicit|explicit] [--subset N]
       [--steps S] [--eval-every K] [--samples M] [--refine K] [--time-weight W] [--fake-atoms F]
       [--bond-basis K] [--init CHECKPOINT] [--checkpoint DIR --resume]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import equinox as eqx
import jax
import numpy as np

import geoflow as gf
from geoflow.serialization import classes_in, load
from molecules import load_qm9, molecule_metrics, qm9_vocabulary
from molecules.flow import MoleculeFlow
from molecules.matching import MoleculeFlowMatching
from _results import RESULTS, write_results

PUBLISHED = {"EDM": {"atom_stability": 98.7, "molecule_stability": 82.0, "validity": 91.9, "validity_x_uniqueness": 90.7},
             "EquiFM": {"atom_stability": 98.9, "molecule_stability": 88.3, "validity": 94.7, "validity_x_uniqueness": 93.5}}
CURVE_KEYS = ("validity", "connectivity", "validity_x_uniqueness", "novelty")


def sampling_rate(model, steps, n=100, refine=0):
    """Sampled molecules/s at batch ``n``, the compile excluded (a first call of the same shape)."""
    jax.block_until_ready(model.sample(jax.random.key(0), n, steps=steps, refine=refine))
    t0 = time.perf_counter()
    jax.block_until_ready(model.sample(jax.random.key(1), n, steps=steps, refine=refine))
    return n / (time.perf_counter() - t0)


def scores(model, data, n, steps, key, refine=0):
    """Metrics of ``n`` molecules sampled with ``steps`` steps and ``refine`` refinements."""
    return molecule_metrics(model.sample(key, n, steps=steps, refine=refine), data.vocabulary, data.smiles)


def initial_model(fresh, path):
    """The model saved in the checkpoint ``path``, given ``fresh``'s bond-length head (at zero)
    when the saved network has none: a fine-tuning run starts as the saved model."""
    saved = load(path, trust=classes_in(fresh))["model"]
    fresh_head = getattr(fresh.network, "length_head", None)
    if fresh_head is not None and saved.network.length_head is None:
        saved = eqx.tree_at(lambda m: m.network.length_head, saved, fresh_head, is_leaf=lambda x: x is None)
    return saved


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--hydrogens", choices=("explicit", "implicit"), default="explicit")
    ap.add_argument("--subset", type=int, default=20_000)
    ap.add_argument("--steps", type=int, default=1_000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--learning-rate", type=float, default=1e-3)
    ap.add_argument("--eval-every", type=int, default=0, help="steps between points of the curve (0: end only)")
    ap.add_argument("--curve-samples", type=int, default=500)
    ap.add_argument("--samples", type=int, default=1_000)
    ap.add_argument("--sampling-steps", type=int, default=100)
    ap.add_argument("--scalars", type=int, default=64)
    ap.add_argument("--vectors", type=int, default=16)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--network", choices=("vector", "e3nn"), default="vector")
    ap.add_argument("--refine", type=int, default=0, help="clean predictions fed back after sampling (MoleculeSampler.sample)")
    ap.add_argument("--time-weight", type=float, default=0.0,
                    help="cap of the position loss's t/(1 − t) weight (MoleculeFlowMatching.time_weight; 0: uniform)")
    ap.add_argument("--fake-atoms", type=float, default=0.0,
                    help="most fake atoms per real atom in training (MoleculeFlow.fake_atoms; 0: none)")
    ap.add_argument("--bond-basis", type=int, default=0,
                    help="Gaussians of the network's bond-length head (VectorNetwork(bond_basis=K); 0: none)")
    ap.add_argument("--init", type=Path,
                    help="start from the model of this checkpoint (fine-tuning); a bond-length head it lacks starts at zero")
    ap.add_argument("--tag", help="appended to the results file's name, so a variant keeps the recorded run")
    ap.add_argument("--checkpoint", type=Path, help="directory for the checkpoint and the curve")
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.subset, args.steps, args.samples, args.sampling_steps = 500, 20, 20, 20
        args.scalars, args.vectors, args.layers, args.eval_every, args.curve_samples = 16, 4, 2, 10, 8
    t0 = time.perf_counter()
    data = load_qm9(subset=args.subset, seed=0, hydrogens=args.hydrogens)
    load_s = time.perf_counter() - t0
    _, max_atoms = qm9_vocabulary(args.hydrogens)
    counts = np.bincount(np.asarray(data.graphs.mask).sum(1), minlength=max_atoms + 1)
    model = MoleculeFlow(data.vocabulary, max_atoms, counts, key=jax.random.key(0), scalars=args.scalars,
                         vectors=args.vectors, layers=args.layers, network=args.network,
                         fake_atoms=args.fake_atoms, **({"bond_basis": args.bond_basis} if args.bond_basis else {}))
    if args.init:
        model = initial_model(model, args.init)

    curve_path = args.checkpoint / "curve.json" if args.checkpoint else None
    curve = json.loads(curve_path.read_text()) if args.resume and curve_path and curve_path.exists() else []
    cpu_before = curve[-1]["cpu_s"] if curve else 0.0
    cpu0 = time.process_time()

    def record(step, model_now, history):
        if not args.eval_every or step % args.eval_every:
            return False
        m = scores(model_now, data, args.curve_samples, args.sampling_steps, jax.random.key(step), args.refine)
        point = {"step": step, "cpu_s": cpu_before + time.process_time() - cpu0,
                 "train_loss": history.train_loss[-1], **{k: m[k] for k in CURVE_KEYS},
                 "molecule_stability": m[f"molecule_stability_{'implicit' if args.hydrogens == 'implicit' else 'explicit'}"]}
        if args.hydrogens == "explicit":  # EDM's distance rule scores the geometry as well
            point["molecule_stability_edm"] = m["molecule_stability_edm"]
        curve.append(point)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in point.items()}), flush=True)
        if curve_path:
            curve_path.write_text(json.dumps(curve, indent=1))
        return False

    checkpoint = None
    if args.checkpoint:
        args.checkpoint.mkdir(parents=True, exist_ok=True)
        checkpoint = args.checkpoint / "checkpoint.eqx"
    model, hist = gf.fit(model, data.graphs, key=jax.random.key(1), loss=MoleculeFlowMatching(permute=True, time_weight=args.time_weight),
                         steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
                         eval_every=args.eval_every or max(args.steps // 5, 1), progress=False, callback=record,
                         checkpoint=checkpoint, resume=args.resume, restore_best=False)
    final = scores(model, data, args.samples, args.sampling_steps, jax.random.key(2), args.refine)
    if args.refine:  # the same molecules' draws without the refinement, for the comparison
        final["without_refine"] = scores(model, data, args.samples, args.sampling_steps, jax.random.key(2))
    rate = sampling_rate(model, args.sampling_steps, min(args.samples, 100), args.refine)
    out = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
           "train_molecules": len(data), "perception_failures": data.failures, "load_s": load_s,
           "cpu_s": cpu_before + time.process_time() - cpu0, "fit_s": hist.wall_time,
           "train_molecules_per_s": hist.steps_per_second * args.batch_size, "sample_molecules_per_s": rate,
           "final_train_loss": hist.train_loss[-1], "published": PUBLISHED, **final, "curve": curve}
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()
                      if k not in ("published", "curve")}))
    suffix = ("" if args.network == "vector" else f"_{args.network}") + (f"_{args.tag}" if args.tag else "")
    write_results(RESULTS / f"qm9_molecules_{args.hydrogens}{suffix}.json", out, quick=args.quick, indent=1)


if __name__ == "__main__":
    main()
