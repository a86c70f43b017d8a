"""Tong et al. (TMLR 2024), Table 2: 2-D transport quality of OT-CFM, I-CFM and rectified flow.

W2 (exact, POT) between generated samples and fresh target samples, mean ± std over seeds, on
the four tasks N→8gaussians, 8gaussians→moons, N→moons, N→scurve. Protocol as in the paper's
runner (github.com/atong01/conditional-flow-matching, ``runner/``): 10,000 training points,
vector field MLP 64-64-64 with SELU and the time as an extra input, AdamW (lr 1e-3, weight decay
1e-5), batch 512, σ = 0.1 for OT-CFM and I-CFM, σ = 0 for rectified flow (1-RF, no reflow, as
in their table); samples by an adaptive ODE solve (Tsit5, rtol = atol = 1e-5).

Data sets, as defined in that runner:
- moons: ``make_moons(noise=0.05) · 2`` with the first coordinate shifted by −1;
- scurve: ``make_s_curve(noise=0.05)``, coordinates (0, 2), · 1.5;
- 8gaussians (target of N→8gaussians): 8 unit-variance Gaussians on a circle of radius 5;
- 8gaussians→moons: source 8 Gaussians of std 0.5 at radius 4, all · 3; target moons with
  noise 0.1 standardised and · 7.

Published OT-CFM W2: 0.303, 0.601, 0.130, 0.144 (the targets to beat).

Usage: python benchmarks/cfm_2d_table.py [--quick] [--steps N] [--seeds K] [--seed-start S] [--n-eval M]
                                         [--tasks T ...] [--methods M ...] [--ema DECAY] [--floor] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np
import optax
import sklearn.datasets

import geoflow as gf
from geoflow.continuous import cfm, flow_matching
from geoflow.metrics import wasserstein

PUBLISHED_OT_CFM = {"N->8gaussians": 0.303, "8gaussians->moons": 0.601, "N->moons": 0.130, "N->scurve": 0.144}
METHODS = {"ot-cfm": ("ot-cfm", 0.1), "i-cfm": ("i-cfm", 0.1), "rectified": ("i-cfm", 0.0)}


def moons(n, rng):
    x, _ = sklearn.datasets.make_moons(n, noise=0.05, random_state=rng.integers(2**31))
    return (x * 2 - np.array([1.0, 0.0])).astype(np.float32)


def scurve(n, rng):
    x, _ = sklearn.datasets.make_s_curve(n, noise=0.05, random_state=rng.integers(2**31))
    return (x[:, [0, 2]] * 1.5).astype(np.float32)


def gaussians8(n, rng, radius=5.0, std=1.0):
    angles = 2 * np.pi * rng.integers(8, size=n) / 8
    centres = radius * np.stack([np.cos(angles), np.sin(angles)], 1)
    return (centres + std * rng.normal(size=(n, 2))).astype(np.float32)


def gaussians8_source(n, rng):
    return gaussians8(n, rng, radius=4.0, std=0.5) * 3


def moons_standardised(n, rng):
    x, _ = sklearn.datasets.make_moons(n, noise=0.1, random_state=rng.integers(2**31))
    return ((x - x.mean()) / x.std() * 7).astype(np.float32)


TASKS = {  # name: (source sampler or None for N(0, I), target sampler)
    "N->8gaussians": (None, gaussians8),
    "8gaussians->moons": (gaussians8_source, moons_standardised),
    "N->moons": (None, moons),
    "N->scurve": (None, scurve),
}


def run_one(task, method, seed, steps, n_eval, ema=None):
    source_fn, target_fn = TASKS[task]
    rng = np.random.default_rng(seed)
    x_train = target_fn(10_000, rng)
    source = None if source_fn is None else source_fn(10_000, rng)
    key = jax.random.key(seed)
    model = flow_matching(key, 2, source=source, width=64, depth=3, activation="selu")
    kind, sigma = METHODS[method]
    t0 = time.perf_counter()
    model, hist = gf.fit(model, x_train, key=jax.random.fold_in(key, 1), loss=cfm(kind, sigma=sigma), steps=steps,
                         batch_size=512, optimizer=optax.adamw(1e-3, weight_decay=1e-5), val_fraction=0.0,
                         eval_every=min(1000, steps), progress=False, ema_decay=ema)
    fit_s = time.perf_counter() - t0
    # generate from fresh source points, compare with fresh target points
    eval_rng = np.random.default_rng(10_000 + seed)
    if source_fn is None:
        samples = model.sample(jax.random.fold_in(key, 2), n_eval)
    else:
        from geoflow.continuous import ode_flow_of

        fresh = source_fn(n_eval, eval_rng)
        samples = jax.jit(jax.vmap(ode_flow_of(model).forward))(fresh)
    target = target_fn(n_eval, eval_rng)
    t1 = time.perf_counter()
    w2 = wasserstein(np.asarray(samples), target)
    return {"w2": w2, "fit_s": fit_s, "w2_s": time.perf_counter() - t1, "steps_per_s": hist.steps_per_second}


def sampling_floor(task, n_eval, seed=0):
    """W2 between two independent ``n_eval``-point samples of the target: no model can be
    expected to score below it with this estimator."""
    rng = np.random.default_rng(20_000 + seed)
    target_fn = TASKS[task][1]
    return wasserstein(target_fn(n_eval, rng), target_fn(n_eval, rng))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=20_000, help="≈ the runner's 1,000 epochs of 19 batches")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--seed-start", type=int, default=0, help="first seed (runs seeds seed-start … seed-start+seeds−1)")
    ap.add_argument("--n-eval", type=int, default=10_000)
    ap.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    ap.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    ap.add_argument("--ema", type=float, metavar="DECAY",
                    help="not in the runner: train with a parameter moving average (fit's ema_decay)")
    ap.add_argument("--floor", action="store_true", help="also report each task's two-sample W2 floor")
    ap.add_argument("--out", type=Path, help="where to write the figures (default: results/cfm_2d_table.json; "
                                             "a subset run can go to its own file)")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.seeds, args.n_eval = 300, 1, 1000
    if args.out is None and not args.quick:  # a smoke run never replaces the recorded one
        args.out = Path(__file__).parent / "results" / "cfm_2d_table.json"
    out = {"args": {**vars(args), "out": str(args.out)}, "published_ot_cfm": PUBLISHED_OT_CFM, "results": {}}
    seeds = range(args.seed_start, args.seed_start + args.seeds)
    for task in args.tasks:
        if args.floor:
            out.setdefault("floor_w2", {})[task] = floor = sampling_floor(task, args.n_eval)
            print(f"{task:18s} two-sample W2 floor at {args.n_eval} points: {floor:.3f}", flush=True)
        for method in args.methods:
            runs = [run_one(task, method, s, args.steps, args.n_eval, args.ema) for s in seeds]
            w2 = np.array([r["w2"] for r in runs])
            row = {"w2_mean": float(w2.mean()), "w2_std": float(w2.std()), "w2": w2.tolist(), "seeds": list(seeds),
                   "fit_s_mean": float(np.mean([r["fit_s"] for r in runs])),
                   "w2_s_mean": float(np.mean([r["w2_s"] for r in runs])),
                   "steps_per_s": float(np.mean([r["steps_per_s"] for r in runs]))}
            out["results"][f"{task} {method}"] = row
            print(f"{task:18s} {method:10s} W2 {row['w2_mean']:.3f} ± {row['w2_std']:.3f}   "
                  f"(published OT-CFM {PUBLISHED_OT_CFM[task]})   fit {row['fit_s_mean']:.0f} s", flush=True)
        if args.out is not None:  # after every task: a long run keeps what it finished
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(out, indent=2))
    if args.out is not None:
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
