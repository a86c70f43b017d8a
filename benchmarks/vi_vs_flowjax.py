"""Variational inference against flowjax, side by side in one process: a coupling spline flow
(8 layers, MLP width 50, one hidden layer, 8 knots on [−4, 4]) fitted by reverse KL
(ELBO, 64 draws per step, Adam at a constant 10⁻³) to a ring of eight Gaussians (radius 4,
σ = 0.5, a normalised mixture: log Z = 0, so KL(q ‖ p) = −ELBO exactly in expectation).

Reported per library: training steps/s (the second call of each fit function, compiled),
KL(q ‖ p) and the importance-sampling effective sample size from 20,000 draws, the
log-evidence estimate with its standard error (truth 0), and the modes covered (draws within
1.5 of each centre, at least 2% of them).

Usage: python benchmarks/vi_vs_flowjax.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax

import geoflow as gf
from geoflow.bijections import RationalQuadraticSpline
from geoflow.vi import ElboLoss, importance_diagnostics

from flowjax.bijections import RationalQuadraticSpline as FjSpline
from flowjax.distributions import Normal
from flowjax.flows import coupling_flow as fj_coupling
from flowjax.train import fit_to_key_based_loss
from flowjax.train.losses import ElboLoss as FjElboLoss
from _results import RESULTS, write_results

ANGLES = 2 * math.pi * np.arange(8) / 8
CENTRES = 4.0 * np.stack([np.cos(ANGLES), np.sin(ANGLES)], 1)
RING = gf.GaussianMixture(CENTRES, 0.5)
LAYERS, WIDTH, DEPTH, DRAWS, LR = 8, 50, 1, 64, 1e-3


def target(x):
    return RING.log_prob(x)


def quality(sample_and_log_prob, key, n=20_000):
    """KL(q ‖ p), ESS, log-evidence and modes covered from ``n`` draws of q."""
    # the two libraries' models behind one sample_and_log_prob(key, n)
    d = importance_diagnostics(SimpleNamespace(sample_and_log_prob=sample_and_log_prob), target, key, n)
    x = np.asarray(sample_and_log_prob(jax.random.fold_in(key, 1), n)[0])
    near = np.linalg.norm(x[:, None] - CENTRES[None], axis=-1) < 1.5
    return {"kl_q_p": -d["elbo"], "ess_fraction": d["ess_fraction"], "log_evidence": d["log_evidence"],
            "log_evidence_se": d["log_evidence_se"], "modes_covered": int((near.mean(0) > 0.02).sum())}


def run_geoflow(steps, key):
    model = gf.coupling_flow(key, 2, transformer=RationalQuadraticSpline(knots=8, bound=4.0), layers=LAYERS,
                             width=WIDTH, depth=DEPTH)
    kw = dict(key=jax.random.key(1), loss=ElboLoss(target, DRAWS), steps=steps, optimizer=optax.adam(LR),
              eval_every=min(steps, 1000), progress=False)
    gf.fit(model, None, **kw)  # compile
    t0 = time.perf_counter()
    trained, _ = gf.fit(model, None, **kw)
    seconds = time.perf_counter() - t0
    return steps / seconds, quality(lambda k, n: trained.sample_and_log_prob(k, n), jax.random.key(2))


def run_flowjax(steps, key):
    flow = fj_coupling(key, base_dist=Normal(jnp.zeros(2)), transformer=FjSpline(knots=8, interval=4.0),
                       flow_layers=LAYERS, nn_width=WIDTH, nn_depth=DEPTH)
    kw = dict(loss_fn=FjElboLoss(target, DRAWS), steps=steps, optimizer=optax.adam(LR), show_progress=False)
    fit_to_key_based_loss(jax.random.key(1), flow, **kw)  # compile
    t0 = time.perf_counter()
    trained, _ = fit_to_key_based_loss(jax.random.key(1), flow, **kw)
    seconds = time.perf_counter() - t0
    return steps / seconds, quality(lambda k, n: trained.sample_and_log_prob(k, (n,)), jax.random.key(2))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=5000)
    args = ap.parse_args()
    steps = 200 if args.quick else args.steps
    rows = {}
    for name, run in (("geoflow", run_geoflow), ("flowjax", run_flowjax)):
        rate, q = run(steps, jax.random.key(0))
        rows[name] = {"steps_per_s": rate, **q}
        print(name, json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in rows[name].items()}), flush=True)
    ratio = rows["geoflow"]["steps_per_s"] / rows["flowjax"]["steps_per_s"]
    print(f"training speed geoflow / flowjax: {ratio:.2f}×")
    out = {"steps": steps, "draws_per_step": DRAWS, "layers": LAYERS, "width": WIDTH, "rows": rows,
           "speed_ratio": ratio, "jax": jax.__version__}
    write_results(RESULTS / "vi_vs_flowjax.json", out, quick=args.quick, indent=1)


if __name__ == "__main__":
    main()
