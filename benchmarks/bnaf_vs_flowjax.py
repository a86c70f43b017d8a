"""Block neural autoregressive flows (De Cao et al. 2019): geoflow's ``bnaf`` beside flowjax's
``block_neural_autoregressive_flow``, side by side in one process.

Configuration: two moons, 2,000 points (10% held out for validation by each library's fit), 2
dimensions, ``LAYERS`` BNAF layers of ``DEPTH`` hidden layers with ``BLOCK`` units per coordinate,
leaky-tanh activations in both; plain Adam at a constant ``LR`` (BNAF's weight normalisation
wants a larger step than 10⁻³), batch 256, the same number of steps. The architectures differ in
one way: geoflow's layer is a gated residual (``z = σ(a) f(y) + σ(−a) y``, as in the paper's
experiments), flowjax's is the plain network.

Reported per library: one jitted Adam step (µs, after compilation), fit steps/s (each library's
own training function, second call), ``log_prob`` points/s and sampling points/s (both invert
BNAF by bisection to sample), and the test NLL on 20,000 fresh moons, mean over ``SEEDS`` fits.

Usage: python benchmarks/bnaf_vs_flowjax.py [--quick]
"""

from __future__ import annotations

import argparse
import json

import equinox as eqx
import jax
import jax.numpy as jnp

import geoflow as gf
from geoflow.datasets import sample_toy
from geoflow.metrics import nll

from flowjax.distributions import Normal
from flowjax.flows import block_neural_autoregressive_flow

from _timing import adam_step_timing, fastest, fit_with_own_trainer
from _results import RESULTS, write_results

LAYERS, DEPTH, BLOCK, BATCH, LR = 2, 1, 16, 256, 1e-2
SEEDS = 3


def build(lib, key):
    if lib == "geoflow":
        return gf.bnaf(key, 2, layers=LAYERS, width=BLOCK, depth=DEPTH)
    return block_neural_autoregressive_flow(key, base_dist=Normal(jnp.zeros(2)), nn_depth=DEPTH, nn_block_dim=BLOCK,
                                            flow_layers=LAYERS)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    epochs, reps, points, seeds = (10, 10, 2_000, 1) if args.quick else (150, 100, 20_000, SEEDS)
    x = jnp.asarray(sample_toy("moons", 2000, seed=0))
    test = sample_toy("moons", 20_000, seed=99)
    pts = jax.random.normal(jax.random.key(7), (points, 2))
    out = {"config": {"layers": LAYERS, "depth": DEPTH, "block": BLOCK, "batch": BATCH, "lr": LR, "epochs": epochs},
           "quick": args.quick, "libraries": {}}
    for lib in ("geoflow", "flowjax"):
        model = build(lib, jax.random.key(0))
        compile_s, step_us = adam_step_timing(model, lambda m, xb: -m.log_prob(xb).mean(), x[:BATCH], reps, LR)
        log_prob = eqx.filter_jit(lambda m, p: m.log_prob(p))
        sample = eqx.filter_jit(lambda m, k: m.sample(k, (points,)))
        nlls, rates = [], []
        for seed in range(seeds):
            trained, steps, seconds = fit_with_own_trainer(lib, build(lib, jax.random.key(seed)), x, epochs,
                                                           batch_size=BATCH, learning_rate=LR, seed=seed + 1)
            nlls.append(nll(trained, test))
            rates.append(steps / seconds)
        out["libraries"][lib] = {
            "step_us": step_us, "compile_s": compile_s, "fit_steps_per_s": sum(rates) / len(rates), "fit_steps": steps,
            "log_prob_per_s": points / fastest(lambda: log_prob(trained, pts), 3),
            "sample_per_s": points / fastest(lambda: sample(trained, jax.random.key(3)), 3),
            "test_nll": sum(nlls) / len(nlls), "test_nll_seeds": nlls}
        print(lib, {k: round(v, 4) if isinstance(v, float) else v for k, v in out["libraries"][lib].items()}, flush=True)
    g, f = out["libraries"]["geoflow"], out["libraries"]["flowjax"]
    out["ratios_geoflow_over_flowjax"] = {
        "step_speed": f["step_us"] / g["step_us"], "fit_speed": g["fit_steps_per_s"] / f["fit_steps_per_s"],
        "log_prob_speed": g["log_prob_per_s"] / f["log_prob_per_s"], "sample_speed": g["sample_per_s"] / f["sample_per_s"],
        "nll_difference": g["test_nll"] - f["test_nll"]}
    print("geoflow over flowjax:", json.dumps({k: round(v, 3) for k, v in out["ratios_geoflow_over_flowjax"].items()}))
    write_results(RESULTS / "bnaf_vs_flowjax.json", out, quick=args.quick)


if __name__ == "__main__":
    main()
