"""MNIST in the MAF paper's setup: MAF (5) and RealNVP (5) against the published figures, and
against flowjax's MAF and coupling flow side by side for the cost of a training step.

Setup (Papamakarios et al. 2017, §4.3): flattened 784-D images, dequantised with uniform noise,
scaled to [0, 1] and logit-transformed with λ = 1e-6; 50,000 training, 10,000 validation, 10,000
test images. Every layer's MADE or coupling network has one hidden layer of 1,024 units. The
reported figure is the average test log-likelihood *in logit space* (nats), as in the paper's
Table 2: MAF (5) −1300.5 ± 1.7, RealNVP (5) −1323.2 ± 6.6, Gaussian −1366.9 ± 1.4. Pixel-space
bits/dim of the same models are reported too.

Differences from the paper, stated: the models see pixel values in [0, 256) and end in
``Logit(levels=256)`` followed by a fixed ``Standardize`` fitted on the logit-space training data
(the paper used batch normalisation between layers); training draws fresh dequantisation noise
every step (the paper fixed it once); Adam with cosine decay for a fixed number of steps and the
best validation checkpoint (the paper early-stopped). The test set is dequantised once (seed 0).

Usage: python benchmarks/mnist_maf.py [--quick] [--steps N] [--data-path mnist.npz]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import geoflow as gf
from geoflow.bijections import Chain, Logit, Standardize, TriangularAffine
from geoflow.datasets import load_images
from geoflow.datasets.locations import shared_data
from geoflow.dequantization import UniformDequantization
from geoflow.distributions import StandardNormal, Transformed
from geoflow.metrics import log_prob_batched

from _timing import adam_step_timing
from _results import RESULTS, write_results

PUBLISHED = {"gaussian": -1366.9, "maf-5": -1300.5, "realnvp-5": -1323.2}
LAMBDA, WIDTH, LAYERS, BATCH = 1e-6, 1024, 5, 100
SHARED = shared_data("mnist.npz")


def flat_mnist(path):
    data = load_images("mnist", path)
    return [a.reshape(len(a), -1) for a in (data.train, data.val, data.test)]


def logit_space(logit, pixels):
    """``(z, log|dz/dy|)`` of pixel-space points ``(n, 784)``."""
    return jax.vmap(logit.inverse_and_log_det)(jnp.asarray(pixels))


def evaluate(model, logit, test):
    """Test log-likelihood in logit space (mean and standard error) and pixel-space bits/dim."""
    pixel = np.asarray(log_prob_batched(model, test, batch_size=1000))
    _, jac = logit_space(logit, test)
    in_logit = pixel - np.asarray(jac, np.float64)
    return {"test_ll_logit": float(in_logit.mean()), "test_ll_logit_stderr": float(in_logit.std() / math.sqrt(len(test))),
            "test_bits_per_dim": float(-pixel.mean() / (784 * math.log(2)))}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, help="training steps per model (default 10,000; quick: 300)")
    ap.add_argument("--data-path", type=Path, default=SHARED if SHARED.is_file() else None)
    args = ap.parse_args()
    steps = args.steps or (300 if args.quick else 10_000)
    train, val, test = flat_mnist(args.data_path)
    if args.quick:
        train, val, test = train[:10_000], val[:2_000], test[:2_000]
    rng = np.random.default_rng(0)
    test = (test + rng.uniform(size=test.shape)).astype(np.float32)
    logit = Logit(784, alpha=LAMBDA, levels=256)
    z_train = np.asarray(logit_space(logit, train + rng.uniform(size=train.shape))[0])
    preprocess = Chain([Standardize.fit(z_train), logit])
    out = {"quick": args.quick, "steps": steps, "batch": BATCH, "width": WIDTH, "published": PUBLISHED,
           "train_images": len(train), "test_images": len(test), "models": {}}

    gaussian = Transformed(StandardNormal(784), Chain([TriangularAffine.fit(z_train), logit]))
    out["models"]["gaussian"] = evaluate(gaussian, logit, test)
    print("gaussian", out["models"]["gaussian"], flush=True)

    for name, make in (("maf-5", gf.maf), ("realnvp-5", gf.realnvp)):
        model = make(jax.random.key(0), 784, layers=LAYERS, width=WIDTH, depth=1, preprocess=preprocess)
        model, history = gf.fit(model, train, key=jax.random.key(1), loss=UniformDequantization(), val_data=val,
                                steps=steps, batch_size=BATCH, learning_rate=1e-3, eval_every=min(500, max(steps // 3, 1)),
                                progress=False)
        row = evaluate(model, logit, test)
        row.update({"fit_seconds": history.wall_time, "train_steps_per_s": history.steps_per_second,
                    "best_step": history.best_step, "stop_reason": history.stop_reason,
                    "published_ll_logit": PUBLISHED[name], "gap_to_published": row["test_ll_logit"] - PUBLISHED[name]})
        out["models"][name] = row
        print(name, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)

    # the cost of one training step, geoflow against flowjax on the same architecture
    from flowjax.bijections import Affine as FjAffine
    from flowjax.distributions import Normal
    from flowjax.flows import coupling_flow as fj_coupling, masked_autoregressive_flow as fj_maf

    batch = jnp.asarray(z_train[:BATCH])
    reps = 5 if args.quick else 30
    nll = lambda m, xb: -m.log_prob(xb).mean()
    peers = {}
    for name, ours, theirs in (
        ("maf-5", gf.maf(jax.random.key(0), 784, layers=LAYERS, width=WIDTH, depth=1),
         fj_maf(jax.random.key(0), base_dist=Normal(jnp.zeros(784)), transformer=FjAffine(), flow_layers=LAYERS,
                nn_width=WIDTH, nn_depth=1)),
        ("realnvp-5", gf.realnvp(jax.random.key(0), 784, layers=LAYERS, width=WIDTH, depth=1),
         fj_coupling(jax.random.key(0), base_dist=Normal(jnp.zeros(784)), transformer=FjAffine(), flow_layers=LAYERS,
                     nn_width=WIDTH, nn_depth=1)),
    ):
        (c_ours, us_ours), (c_theirs, us_theirs) = (adam_step_timing(m, nll, batch, reps) for m in (ours, theirs))
        peers[name] = {"geoflow_step_ms": us_ours / 1e3, "flowjax_step_ms": us_theirs / 1e3,
                       "step_speed_geoflow_over_flowjax": us_theirs / us_ours,
                       "geoflow_compile_s": c_ours, "flowjax_compile_s": c_theirs}
        print(name, "step", {k: round(v, 3) for k, v in peers[name].items()}, flush=True)
    out["step_vs_flowjax"] = peers
    write_results(RESULTS / "mnist_maf.json", out, quick=args.quick)


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - t0:.0f} s")
