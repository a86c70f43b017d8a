"""geoflow against flowjax, side by side in one process, on the same flow configurations.

Configurations (the issue's): MAF with a rational-quadratic spline transformer, coupling with
a spline transformer, MAF with an affine transformer; 8 layers, MLP width 50, one hidden layer;
two moons, 2,000 points; batch 256. Both libraries use plain Adam at a constant 1e-3.

Reported per configuration and library:
- ``step_us``: one jitted optimisation step (same optax Adam, same loss, same batch), after
  compilation — the model's own cost.
- ``fit_steps_per_s``: steps per second of each library's training function (geoflow.fit vs
  flowjax.train.fit_to_data) on a second call, i.e. after compilation — what a user waits for.
- ``log_prob_per_s`` and ``sample_per_s`` on 100,000 points; ``compile_s`` of the training step.
- ``test_nll`` on 20,000 fresh moons after the same number of steps from each fit function,
  the mean over ``SEEDS`` initializations and fits (``test_nll_seeds`` holds each): one run's
  NLL moves by a few hundredths with the rounding of a single operation, which is the size of
  the differences between the libraries.
- ``compile_32_over_8``: training-step compile time of 32 layers over 8 layers.
- ``handwritten`` (MAF-affine only): ``log_prob`` of the same model written by hand as
  whole-batch matrix products, checked against geoflow's numbers — the floor for this work.

Usage: python benchmarks/classic_vs_flowjax.py [--quick]
"""

from __future__ import annotations

import argparse
import json

import equinox as eqx
import jax
import jax.numpy as jnp

import geoflow as gf
from geoflow.bijections import Affine, RationalQuadraticSpline
from geoflow.datasets import sample_toy
from geoflow.metrics import nll

import flowjax
from flowjax.bijections import Affine as FjAffine, RationalQuadraticSpline as FjSpline
from flowjax.distributions import Normal
from flowjax.flows import coupling_flow as fj_coupling, masked_autoregressive_flow as fj_maf

from _timing import adam_step_timing, fastest, fit_with_own_trainer
from _results import RESULTS, write_results

LAYERS, WIDTH, DEPTH, BATCH, LR = 8, 50, 1, 256, 1e-3
SEEDS = 5


def build(lib, config, key, layers=LAYERS):
    if lib == "geoflow":
        tr = Affine() if config == "maf-affine" else RationalQuadraticSpline(knots=8, bound=4.0)
        make = gf.coupling_flow if config == "coupling-spline" else gf.masked_autoregressive_flow
        return make(key, 2, transformer=tr, layers=layers, width=WIDTH, depth=DEPTH)
    tr = FjAffine() if config == "maf-affine" else FjSpline(knots=8, interval=4.0)
    make = fj_coupling if config == "coupling-spline" else fj_maf
    return make(key, base_dist=Normal(jnp.zeros(2)), transformer=tr, flow_layers=layers,
                nn_width=WIDTH, nn_depth=DEPTH)


def step_timing(model, x, reps):
    """Compile time and microseconds per jitted Adam step on one batch."""
    return adam_step_timing(model, lambda m, xb: -m.log_prob(xb).mean(), x[:BATCH], reps, LR)


def handwritten_maf_affine(model):
    """The floor for MAF-affine ``log_prob``: the same function written by hand as whole-batch
    matrix products (batch-major, masks applied once, one ``lax.scan`` over the layers), reading
    the geoflow model's own parameters. It does the same arithmetic as both libraries with no
    per-example ``vmap`` and no structure, so it shows what XLA:CPU makes of this work."""
    made = model.bijection.layers.bijections[0].made
    bound = model.bijection.layers.bijections[0].transformer.max_log_scale
    dim = model.shape[0]
    (w1, w2), (b1, b2), (m1, m2) = made.weights, made.biases, made.masks
    w1, w2 = jnp.where(m1, w1, 0.0), jnp.where(m2, w2, 0.0)

    def log_prob(y):  # y: (n, dim)
        def layer(carry, p):
            z, log_det = carry
            v1, c1, v2, c2 = p
            z = z[:, ::-1]                                       # each layer is Chain([MADE, Reverse])
            out = jax.nn.relu(z @ v1.T + c1) @ v2.T + c2         # (n, 2 dim): shifts, then raw scales
            log_sigma = jnp.log(jax.nn.softplus(out[:, dim:] + jnp.log(jnp.e - 1)))
            shift, log_sigma = out[:, :dim], bound * jnp.tanh(log_sigma / bound)
            return (z * jnp.exp(log_sigma) + shift, log_det + log_sigma.sum(1)), None

        # the Stack applies its last layer first on the way to the latent
        (z, log_det), _ = jax.lax.scan(layer, (y, jnp.zeros(y.shape[0])), (w1, b1, w2, b2), reverse=True)
        return -0.5 * (z**2).sum(1) - 0.5 * dim * jnp.log(2 * jnp.pi) + log_det

    return jax.jit(log_prob)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    reps, epochs, big = (20, 30, 20_000) if args.quick else (100, 100, 100_000)
    x = jnp.asarray(sample_toy("moons", 2000, seed=0))
    test = sample_toy("moons", 20_000, seed=99)
    pts = jax.random.normal(jax.random.key(7), (big, 2))
    key = jax.random.key(0)
    out = {"jax": jax.__version__, "flowjax": flowjax.__version__ if hasattr(flowjax, "__version__") else "19.1.2",
           "quick": args.quick, "devices": str(jax.devices()), "configs": {}}
    for config in ("maf-spline", "coupling-spline", "maf-affine"):
        row = {}
        for lib in ("geoflow", "flowjax"):
            model = build(lib, config, key)
            compile_s, step_us = step_timing(model, x, reps)
            lp = eqx.filter_jit(lambda m, p: m.log_prob(p))
            smp = eqx.filter_jit(lambda m, k: m.sample(k, (big,)))
            lp_s = fastest(lambda: lp(model, pts), 5)
            sm_s = fastest(lambda: smp(model, jax.random.key(3)), 5)
            trained, steps, fit_s = fit_with_own_trainer(lib, model, x, epochs, batch_size=BATCH, learning_rate=LR)
            if lib == "geoflow":
                trained_geoflow = trained  # the floor's check needs trained layers, not identities
            nlls = [nll(trained, test)] + [  # further seeds: a fresh model and fit each
                nll(fit_with_own_trainer(lib, build(lib, config, jax.random.key(s)), x, epochs, batch_size=BATCH,
                                         learning_rate=LR, seed=1 + s, warm_up=False)[0], test)
                for s in range(1, SEEDS)]
            row[lib] = {"step_us": step_us, "compile_s": compile_s, "fit_steps_per_s": steps / fit_s,
                        "fit_steps": steps, "log_prob_per_s": big / lp_s, "sample_per_s": big / sm_s,
                        "test_nll": sum(nlls) / len(nlls), "test_nll_seeds": nlls}
        if config == "maf-affine":  # the hand-written floor, checked to compute the same numbers
            floor = handwritten_maf_affine(trained_geoflow)
            gap = float(jnp.max(jnp.abs(floor(pts) - trained_geoflow.log_prob(pts))))
            assert gap < 1e-3, f"the hand-written MAF differs from geoflow's by {gap}"
            row["handwritten"] = {"log_prob_per_s": big / fastest(lambda: floor(pts), 5), "max_abs_difference": gap}
        g, f = row["geoflow"], row["flowjax"]
        row["ratios_geoflow_over_flowjax"] = {
            "step_speed": f["step_us"] / g["step_us"], "fit_speed": g["fit_steps_per_s"] / f["fit_steps_per_s"],
            "log_prob_speed": g["log_prob_per_s"] / f["log_prob_per_s"],
            "sample_speed": g["sample_per_s"] / f["sample_per_s"],
            "nll_difference": g["test_nll"] - f["test_nll"],
        }
        if "handwritten" in row:
            row["handwritten"]["log_prob_speed_over_flowjax"] = row["handwritten"]["log_prob_per_s"] / f["log_prob_per_s"]
        out["configs"][config] = row
        print(config, json.dumps(row["ratios_geoflow_over_flowjax"]), flush=True)
        print("   geoflow", {k: round(v, 4) for k, v in g.items() if k != "test_nll_seeds"}, flush=True)
        print("   flowjax", {k: round(v, 4) for k, v in f.items() if k != "test_nll_seeds"}, flush=True)
        if "handwritten" in row:
            print("   hand-written", {k: round(v, 4) for k, v in row["handwritten"].items()}, flush=True)
    depth = {}
    for lib in ("geoflow", "flowjax"):
        c8 = step_timing(build(lib, "maf-spline", key, 8), x, 1)[0]
        c32 = step_timing(build(lib, "maf-spline", key, 32), x, 1)[0]
        depth[lib] = {"compile_8_s": c8, "compile_32_s": c32, "compile_32_over_8": c32 / c8}
    out["depth"] = depth
    print("compile time 32 vs 8 layers:", json.dumps(depth), flush=True)
    write_results(RESULTS / "classic_vs_flowjax.json", out, quick=args.quick)


if __name__ == "__main__":
    main()
