"""3-D molecule generation on QM9 with explicit hydrogens (``molecules.flow.MoleculeFlow``):
atom and molecule stability (EDM's distance rule and explicit bonds), validity, validity ×
uniqueness and novelty of sampled molecules, beside the published EDM (98.7 / 82.0 / 91.9 / 90.7)
and EquiFM (98.9 / 88.3 / 94.7 / 93.5) rows (atom stab. / mol. stab. / validity / V×U, %);
and throughput: training molecules/s and sampling molecules/s for the stated network size.
The CPU budget is part of the result.

Usage: python benchmarks/qm9_molecules.py [--quick] [--subset N] [--steps S] [--samples K]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np

import geoflow as gf
from molecules import load_qm9, molecule_metrics
from molecules.flow import MoleculeFlow, MoleculeFlowMatching
from molecules.qm9 import QM9_MAX_ATOMS

PUBLISHED = {"EDM": {"atom_stability": 98.7, "molecule_stability": 82.0, "validity": 91.9, "validity_x_uniqueness": 90.7},
             "EquiFM": {"atom_stability": 98.9, "molecule_stability": 88.3, "validity": 94.7, "validity_x_uniqueness": 93.5}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--subset", type=int, default=20_000)
    ap.add_argument("--steps", type=int, default=1_000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--samples", type=int, default=1_000)
    ap.add_argument("--sampling-steps", type=int, default=100)
    ap.add_argument("--scalars", type=int, default=64)
    ap.add_argument("--vectors", type=int, default=16)
    ap.add_argument("--layers", type=int, default=4)
    args = ap.parse_args()
    if args.quick:
        args.subset, args.steps, args.samples, args.sampling_steps = 500, 20, 20, 20
        args.scalars, args.vectors, args.layers = 16, 4, 2
    t0 = time.perf_counter()
    data = load_qm9(subset=args.subset, seed=0)
    load_s = time.perf_counter() - t0
    counts = np.bincount(np.asarray(data.graphs.mask).sum(1), minlength=QM9_MAX_ATOMS + 1)
    model = MoleculeFlow(data.vocabulary, QM9_MAX_ATOMS, counts, key=jax.random.key(0), scalars=args.scalars,
                         vectors=args.vectors, layers=args.layers)
    model, hist = gf.fit(model, data.graphs, key=jax.random.key(1), loss=MoleculeFlowMatching(), steps=args.steps,
                         batch_size=args.batch_size, learning_rate=1e-3, eval_every=max(args.steps // 5, 1),
                         progress=False)
    model.sample(jax.random.key(9), 2, steps=args.sampling_steps)  # compile
    t0 = time.perf_counter()
    graphs = model.sample(jax.random.key(2), args.samples, steps=args.sampling_steps)
    sample_s = time.perf_counter() - t0
    scores = molecule_metrics(graphs, data.vocabulary, data.smiles)
    out = {"args": vars(args), "train_molecules": len(data), "perception_failures": data.failures, "load_s": load_s,
           "fit_s": hist.wall_time, "train_molecules_per_s": hist.steps_per_second * args.batch_size,
           "sample_molecules_per_s": args.samples / sample_s, "final_train_loss": hist.train_loss[-1],
           "published": PUBLISHED, **scores}
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items() if k != "published"}))
    path = Path(__file__).parent / "results" / "qm9_molecules.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
