"""FlowMol3's training techniques measured one at a time on QM9 with explicit hydrogens: the
same model, data, steps and keys, trained as given (`--variants`) — the default's time weight
alone, with fake atoms (`MoleculeFlow(fake_atoms=…)`), with train-time geometry distortion
(`MoleculeFlowMatching(distortion=…)`), with both — each then sampled and scored by the same
metrics (validity, connectivity, V×U, novelty; molecule stability by the model's bonds and by
EDM's distance rule, plain and refined).

The variants run one after another in one process; their figures go to
``results/qm9_techniques.json`` or ``--out`` (``--quick`` runs the first and the last variant
and only prints them). Bond perception of QM9 is the
slow part of loading: ``--save-graphs FILE.npz`` writes the perceived graphs and their SMILES,
``--graphs FILE.npz`` reads them back (numbers and strings only, no pickled objects), so a
machine without qm9pack can run the comparison.

Usage: python benchmarks/qm9_techniques.py [--quick] [--subset N] [--steps S] [--samples M]
       [--variants time_weight fake_atoms distortion both] [--fake-atoms F] [--distortion P SCALE]
       [--graphs FILE.npz | --save-graphs FILE.npz] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np

import geoflow as gf
from molecules import MolecularGraph, load_qm9, molecule_metrics, qm9_vocabulary
from molecules.flow import MoleculeFlow
from molecules.matching import MoleculeFlowMatching
from _results import write_results

VARIANTS = ("time_weight", "fake_atoms", "distortion", "both")
GRAPH_FIELDS = ("positions", "atom_types", "charges", "bonds", "mask")


def save_graphs(path: Path, data) -> None:
    arrays = {f: np.asarray(getattr(data.graphs, f)) for f in GRAPH_FIELDS}
    arrays["bonds"] = arrays["bonds"].astype(np.int8)
    np.savez_compressed(path, smiles=np.array(data.smiles), failures=data.failures, **arrays)


def read_graphs(path: Path):
    with np.load(path, allow_pickle=False) as f:
        graphs = MolecularGraph(*(f[name].astype(np.int32) if name in ("atom_types", "charges", "bonds") else f[name]
                                  for name in GRAPH_FIELDS))
        return graphs, [str(s) for s in f["smiles"]], int(f["failures"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--subset", type=int, default=200_000)
    ap.add_argument("--steps", type=int, default=6_000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--learning-rate", type=float, default=1e-3)
    ap.add_argument("--samples", type=int, default=1_000)
    ap.add_argument("--sampling-steps", type=int, default=100)
    ap.add_argument("--refine", type=int, default=5)
    ap.add_argument("--time-weight", type=float, default=1.5, help="every variant's position time weight")
    ap.add_argument("--fake-atoms", type=float, default=0.25)
    ap.add_argument("--distortion", type=float, nargs=2, default=(0.5, 0.3), metavar=("FRACTION", "SCALE"))
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--graphs", type=Path, help="graphs written by --save-graphs instead of loading QM9")
    ap.add_argument("--save-graphs", type=Path, help="write the perceived graphs here and stop")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "qm9_techniques.json")
    args = ap.parse_args()
    if args.quick:
        args.subset, args.steps, args.samples, args.sampling_steps, args.refine = 300, 20, 16, 10, 1
        args.variants = [args.variants[0], args.variants[-1]]
    vocabulary, max_atoms = qm9_vocabulary("explicit")
    t0 = time.perf_counter()
    if args.graphs:
        graphs, smiles, failures = read_graphs(args.graphs)
        if args.quick:
            graphs, smiles = jax.tree.map(lambda a: a[: args.subset], graphs), smiles[: args.subset]
    else:
        data = load_qm9(subset=args.subset, seed=0, hydrogens="explicit")
        if args.save_graphs:
            save_graphs(args.save_graphs, data)
            print(f"wrote {args.save_graphs} ({len(data)} molecules)")
            return
        graphs, smiles, failures = data.graphs, data.smiles, data.failures
    load_s = time.perf_counter() - t0
    counts = np.bincount(np.asarray(graphs.mask).sum(1), minlength=max_atoms + 1)
    width = dict(scalars=16, vectors=4, layers=2) if args.quick else {}

    rows = {}
    for variant in args.variants:
        fake = args.fake_atoms if variant in ("fake_atoms", "both") else 0.0
        distortion = tuple(args.distortion) if variant in ("distortion", "both") else (0.0, 0.0)
        model = MoleculeFlow(vocabulary, max_atoms, counts, key=jax.random.key(0), fake_atoms=fake, **width)
        loss = MoleculeFlowMatching(permute=True, time_weight=args.time_weight, distortion=distortion)
        model, hist = gf.fit(model, graphs, key=jax.random.key(1), loss=loss, steps=args.steps,
                             batch_size=args.batch_size, learning_rate=args.learning_rate,
                             eval_every=max(args.steps // 5, 1), progress=False, restore_best=False)
        t1 = time.perf_counter()
        refined = model.sample(jax.random.key(2), args.samples, steps=args.sampling_steps, refine=args.refine)
        plain = model.sample(jax.random.key(2), args.samples, steps=args.sampling_steps)
        sample_s = time.perf_counter() - t1
        m = molecule_metrics(refined, vocabulary, smiles)
        rows[variant] = {"fake_atoms": fake, "distortion": distortion, "fit_s": hist.wall_time,
                         "final_train_loss": hist.train_loss[-1], "sample_s": sample_s,
                         "atoms_per_molecule": float(np.asarray(refined.mask).sum(1).mean()),
                         **{k: m[k] for k in ("validity", "connectivity", "validity_x_uniqueness", "novelty",
                                              "molecule_stability_explicit", "molecule_stability_edm")},
                         "molecule_stability_edm_plain": molecule_metrics(plain, vocabulary)["molecule_stability_edm"]}
        print(variant, json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in rows[variant].items()}),
              flush=True)
    out = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
           "platform": jax.devices()[0].platform, "device_kind": jax.devices()[0].device_kind,
           "train_molecules": len(smiles), "perception_failures": failures, "load_s": load_s,
           "data_atoms_per_molecule": float(np.asarray(graphs.mask).sum(1).mean()), "variants": rows}
    write_results(args.out, out, quick=args.quick, indent=1)


if __name__ == "__main__":
    main()
