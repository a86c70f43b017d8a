"""One-step and few-step generation on 2-D data: MeanFlow trained from scratch against the
rectified-flow route (OT-CFM, then one reflow, then distillation into one Euler step), by the
exact W2 distance of 2,000 samples to 2,000 held-out data points, beside the W2 between two
data samples of that size (the floor) and the flow-matching teacher sampled with 1 and 100
Euler steps.

Every network is Tong et al.'s MLP (3 × 64, SELU for the flow-matching fields; SiLU for
MeanFlow's, which takes two times), batch 256, Adam 10⁻³ cosine; the training steps of each
stage are counted in ``steps``: MeanFlow gets the sum of the three stages' steps.

Usage: python benchmarks/one_step_2d.py [--quick] [--steps S]
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

import geoflow as gf
from geoflow.continuous import MeanFlow, MeanFlowLoss, cfm, distill, fixed, flow_matching, reflow, with_solver
from geoflow.datasets import sample_toy
from geoflow.metrics import wasserstein
from _results import RESULTS, write_results

TASKS = ("8gaussians", "moons")
EVAL = 2000


def w2(x, test):
    return float(wasserstein(np.asarray(x)[:EVAL], test[:EVAL]))


def run(task, steps, key):
    train = sample_toy(task, 20_000, seed=0).astype(np.float32)
    test = sample_toy(task, EVAL, seed=1)
    floor = w2(sample_toy(task, EVAL, seed=2), test)
    kw = dict(batch_size=256, learning_rate=1e-3, val_fraction=0.0, progress=False, eval_every=min(steps, 1000))
    k_model, k_fit, k_reflow, k_distill, k_sample = jax.random.split(key, 5)
    out = {"floor": floor}
    t0 = time.process_time()
    teacher, _ = gf.fit(flow_matching(k_model, 2), train, key=k_fit, loss=cfm("ot-cfm"), steps=steps, **kw)
    for n in (1, 100):
        out[f"ot_cfm_euler_{n}"] = w2(with_solver(teacher, fixed(n)).sample(k_sample, EVAL), test)
    straight, _ = reflow(teacher, k_reflow, pairs=20_000, steps=steps, **kw)
    out["reflow_euler_1"] = w2(with_solver(straight, fixed(1)).sample(k_sample, EVAL), test)
    one, _ = distill(straight, k_distill, pairs=20_000, steps=steps, **kw)
    out["distilled_1"] = w2(one.sample(k_sample, EVAL), test)
    out["rectified_cpu_s"] = time.process_time() - t0
    t0 = time.process_time()
    mean_flow, _ = gf.fit(MeanFlow(2, key=k_model, width=64, depth=3), train, key=k_fit, loss=MeanFlowLoss(),
                          steps=3 * steps, **kw)
    for n in (1, 2, 4):
        out[f"meanflow_{n}"] = w2(mean_flow.sample(k_sample, EVAL, steps=n), test)
    out["meanflow_cpu_s"] = time.process_time() - t0
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=5000, help="training steps of each rectified-flow stage")
    args = ap.parse_args()
    steps = 100 if args.quick else args.steps
    rows = {}
    for task in TASKS:
        rows[task] = run(task, steps, jax.random.key(0))
        print(task, json.dumps({k: round(v, 3) for k, v in rows[task].items()}), flush=True)
    write_results(RESULTS / "one_step_2d.json", {"steps_per_stage": steps, "eval": EVAL, "rows": rows}, quick=args.quick, indent=1)


if __name__ == "__main__":
    main()
