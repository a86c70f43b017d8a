"""Discrete flow matching on QM9 SMILES strings (qm9pack's 130,831 molecules, atom-level tokens:
L = 22, V = 21 with padding), masking source, a transformer denoiser; 10,000 samples scored with
RDKit: validity, uniqueness, novelty against the training strings; the test ELBO in bits per
token. The CPU budget (steps, wall time) is part of the result.

Usage: python benchmarks/qm9_smiles.py [--quick] [--steps N] [--dim D] [--depth K]
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

import geoflow as gf
from discrete import DiscreteFlowMatching, dfm
from discrete.datasets import load_qm9_smiles, smiles_metrics
from _results import RESULTS, write_results


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=6_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--sampling-steps", type=int, default=100)
    args = ap.parse_args()
    if args.quick:
        args.steps, args.samples, args.dim, args.depth = 200, 1_000, 64, 2
    data = load_qm9_smiles(seed=0)
    model = dfm(jax.random.key(0), data.length, data.vocab_size, source="mask", denoiser="transformer",
                dim=args.dim, depth=args.depth, heads=4)
    t0 = time.perf_counter()
    model, hist = gf.fit(model, data.train, key=jax.random.key(1), loss=DiscreteFlowMatching(), val_data=data.val[:2000],
                         steps=args.steps, batch_size=args.batch_size, learning_rate=1e-3,
                         eval_every=max(args.steps // 10, 1), progress=False)
    fit_s = time.perf_counter() - t0
    elbo = np.asarray(model.elbo(data.test[:2000], jax.random.key(2), samples=16))
    t0 = time.perf_counter()
    tokens = np.asarray(model.sample(jax.random.key(3), args.samples, steps=args.sampling_steps))
    sample_s = time.perf_counter() - t0
    strings = data.tokenizer.decode(tokens)
    scores = smiles_metrics(strings, data.tokenizer.decode(data.train))
    out = {"args": vars(args), "molecules": len(data.train) + len(data.val) + len(data.test), "length": data.length,
           "vocab_size": data.vocab_size, "fit_s": fit_s, "steps_per_s": hist.steps_per_second,
           "sample_s": sample_s, "test_nll_bound_nats": float(-elbo.mean()),
           "test_bits_per_token_bound": float(-elbo.mean() / (data.length * np.log(2))), **scores,
           "examples": strings[:20]}
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}, indent=1))
    write_results(RESULTS / "qm9_smiles.json", out, quick=args.quick)


if __name__ == "__main__":
    main()
