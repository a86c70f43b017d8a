"""2-D density quality: a neural spline flow on checkerboard and 8 gaussians.

KL(data ‖ model) = test NLL − H(data) on 100,000 fresh test points, where H is exact
(checkerboard: log 32) or computed by quadrature (8 gaussians). Target: KL ≤ 0.05 nats.
With ``--peer`` a second column trains flowjax's coupling spline flow of the same size with its own
``fit_to_data`` for the same number of optimisation steps and reports its KL and CPU time.

Usage: python benchmarks/quality_2d.py [--quick] [--peer]
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp

import geoflow as gf
from geoflow.datasets import load_dataset
from geoflow.metrics import kl_from_truth, nll
from _results import RESULTS, write_results

LAYERS, WIDTH, DEPTH, KNOTS, BOUND, BATCH = 8, 64, 2, 8, 5.0, 512


def run_geoflow(data, steps):
    model = gf.nsf(jax.random.key(0), 2, layers=LAYERS, width=WIDTH, depth=DEPTH, knots=KNOTS, bound=BOUND)
    t0, c0 = time.perf_counter(), time.process_time()
    model, hist = gf.fit(model, data.train, key=jax.random.key(1), val_data=data.val, steps=steps,
                         batch_size=BATCH, learning_rate=1e-3, progress=False, eval_every=500)
    return model, time.perf_counter() - t0, time.process_time() - c0


def run_flowjax(data, steps):
    from flowjax.bijections import RationalQuadraticSpline
    from flowjax.distributions import Normal
    from flowjax.flows import coupling_flow
    from flowjax.train import fit_to_data

    model = coupling_flow(jax.random.key(0), base_dist=Normal(jnp.zeros(2)),
                          transformer=RationalQuadraticSpline(knots=KNOTS, interval=BOUND),
                          flow_layers=LAYERS, nn_width=WIDTH, nn_depth=DEPTH)
    x = jnp.concatenate([jnp.asarray(data.train), jnp.asarray(data.val)])
    epochs = max(1, round(steps / (len(data.train) // BATCH)))
    t0, c0 = time.perf_counter(), time.process_time()
    model, _ = fit_to_data(jax.random.key(1), model, x, learning_rate=1e-3, max_epochs=epochs,
                           max_patience=epochs, batch_size=BATCH, val_prop=len(data.val) / len(x),
                           show_progress=False)
    return model, time.perf_counter() - t0, time.process_time() - c0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--peer", action="store_true", help="also train flowjax's spline coupling flow (slow: its fit loop)")
    args = ap.parse_args()
    steps = 1000 if args.quick else 12_000
    out = {"quick": args.quick, "steps": steps, "batch_size": BATCH, "results": {}}
    for name in ("checkerboard", "8gaussians"):
        data = load_dataset(name, seed=0, n_train=100_000, n_val=10_000, n_test=100_000)
        row = {"entropy": data.true_nll}
        runners = {"geoflow": run_geoflow} | ({"flowjax": run_flowjax} if args.peer else {})
        for lib, runner in runners.items():
            model, wall, cpu = runner(data, steps)
            test_nll = nll(model, data.test)
            row[lib] = {"test_nll": test_nll, "kl": kl_from_truth(test_nll, data.true_nll),
                        "wall_s": wall, "cpu_s": cpu}
            print(name, lib, json.dumps(row[lib]), flush=True)
        out["results"][name] = row
    write_results(RESULTS / "quality_2d.json", out, quick=args.quick)


if __name__ == "__main__":
    main()
