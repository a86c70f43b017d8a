"""FFJORD-style CNF and OT flow matching on checkerboard and 8 gaussians: KL to the known
entropy (KL = test NLL − H, exact log-likelihood by the augmented ODE with the exact
divergence) and the CPU time it took.

CNF: concat-squash MLP 64-64-64 (tanh), exact divergence, Tsit5 at rtol = atol = 1e-4 in
training, maximum likelihood, Adam 3e-3 with warm-up and cosine decay, batch 256.
OT-FM: MLP 64-64-64 (SELU), exact minibatch OT coupling, σ = 0, same optimiser, batch 256.
Test NLL of both on 10,000 fresh points with Tsit5 at rtol = atol = 1e-5.

Usage: python benchmarks/continuous_2d_kl.py [--quick] [--cnf-steps N] [--fm-steps N]
"""

from __future__ import annotations

import argparse
import resource
import time

import jax

import geoflow as gf
from geoflow.continuous import ODESolver, cfm, cnf, flow_matching, with_solver
from geoflow.datasets import load_dataset
from geoflow.metrics import nll
from _results import RESULTS, write_results


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cnf-steps", type=int, default=1500)
    ap.add_argument("--fm-steps", type=int, default=8000)
    args = ap.parse_args()
    n_test = 10_000
    if args.quick:
        args.cnf_steps, args.fm_steps, n_test = 100, 300, 1000
    out = {"args": vars(args), "n_test": n_test, "results": {}}
    for data_name in ("checkerboard", "8gaussians"):
        data = load_dataset(data_name, seed=0, n_train=50_000, n_val=2_000, n_test=n_test)
        models = {
            "cnf": (cnf(jax.random.key(0), 2, width=64, depth=3, solver=ODESolver(rtol=1e-4, atol=1e-4)), None,
                    args.cnf_steps),
            "ot-fm": (flow_matching(jax.random.key(0), 2, width=64, depth=3), cfm("ot-cfm", sigma=0.0), args.fm_steps),
        }
        for name, (model, loss, steps) in models.items():
            wall, cpu = time.perf_counter(), cpu_seconds()
            model, hist = gf.fit(model, data.train, key=jax.random.key(1), loss=loss, steps=steps, batch_size=256,
                                 learning_rate=3e-3, val_fraction=0.0, eval_every=500, progress=False)
            wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
            test_nll = nll(with_solver(model, ODESolver(rtol=1e-5, atol=1e-5)), data.test)
            row = {"steps": steps, "test_nll": test_nll, "entropy": data.true_nll, "kl": test_nll - data.true_nll,
                   "train_wall_s": wall, "train_cpu_s": cpu, "steps_per_s": hist.steps_per_second}
            out["results"][f"{data_name} {name}"] = row
            print(f"{data_name:12s} {name:6s} KL {row['kl']:.4f}  NLL {test_nll:.4f}  "
                  f"train {wall:.0f} s wall / {cpu:.0f} s CPU", flush=True)
    write_results(RESULTS / "continuous_2d_kl.json", out, quick=args.quick)


if __name__ == "__main__":
    main()
