"""Multi-scale Glow and RealNVP on MNIST (1×28×28): bits/dim after a stated CPU budget, images per
second for training and sampling, and memory for a batch of 64.

Published bits/dim on MNIST (full-size models, GPU days): Glow 1.05, RealNVP 1.06 (as reported
in the FFJORD paper's Table 2), FFJORD 0.99. None of the bench-extra peer libraries (flowjax,
torchcfm, flow_matching) ships a multi-scale image flow, so the comparison is with those
numbers, and the budget is stated next to every figure.

Models (2 squeeze levels, which is all 28×28 allows): Glow with K steps per level and coupling
networks of ``width`` channels; RealNVP with 3 checkerboard + 3 channel couplings per level and
ResNet couplings of ``width`` channels and ``blocks`` residual blocks. The defaults (K = 8,
width 32, 1,000 steps of batch 64, about 1.3 epochs) fit a CPU budget of minutes; the published
models use K = 32 and 512 channels for hundreds of epochs. Trained on the uniform-dequantisation bound with fresh
noise every step, pixels in [0, 256) through ``Logit(alpha=0.05, levels=256)``, a standard-normal
latent with heavy tails beyond 4 (``--tails``, :class:`~geoflow.bijections.HeavyTails`); test
bits/dim are ``−log p(x + u) / (784 · log 2)`` in pixel space (one noise draw per test image).

Memory: XLA's own account of the compiled training step for batch 64 (arguments, outputs and
temporaries), and the process's peak resident set size at the end.

Usage: python benchmarks/mnist_multiscale.py [--quick] [--steps N] [--depth K] [--width W]
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
import optax

from geoflow import fit
from geoflow.datasets import load_images
from geoflow.datasets.locations import shared_data
from geoflow.dequantization import (DEQUANTIZER_BASES, UniformDequantization, VariationalDequantization,
                                    VariationalDequantizer, VariationallyDequantized, bound_batched)
from geoflow.metrics import bits_per_dim
from geoflow.image_flows import make_image_flow, sample_at_temperature
from geoflow.nn import trainable
from geoflow.plots import plot_images
from geoflow.serialization import classes_in, load

from _curve import PersistedCurve
from _results import RESULTS, write_results

PUBLISHED = {"glow": 1.05, "realnvp": 1.06, "ffjord": 0.99}
SHARED = shared_data("mnist.npz")


def step_memory_mb(model, batch, loss) -> float:
    """XLA's memory for one compiled Adam step on ``batch``: arguments + outputs + temporaries."""
    params, static = eqx.partition(model, trainable(model))
    opt = optax.adam(1e-3)
    state = opt.init(params)

    @jax.jit
    def step(params, state, xb, key):
        value, grads = jax.value_and_grad(lambda p: loss(eqx.combine(p, static), xb, None, key))(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    stats = step.lower(params, state, batch, jax.random.key(0)).compile().memory_analysis()
    total = stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
    return total / 2**20


def sampling_rate(model, n: int = 64, reps: int = 3) -> float:
    draw = eqx.filter_jit(lambda m, k: sample_at_temperature(m, k, n, 1.0))
    jax.block_until_ready(draw(model, jax.random.key(0)))
    t0 = time.perf_counter()
    for i in range(reps):
        jax.block_until_ready(draw(model, jax.random.key(i + 1)))
    return n * reps / (time.perf_counter() - t0)


class Curve:
    """Validation bits/dim against epochs and training CPU seconds, one point per ``fit`` chunk,
    persisted beside the checkpoint (:class:`PersistedCurve`). The clock is ``fit``'s training
    CPU time, which includes compilation and the validation passes (2,000 images at each point)."""

    def __init__(self, path: Path | None, batch: int, train_size: int, resume: bool):
        self.batch, self.train_size = batch, train_size
        self.curve = PersistedCurve(path, resume)

    @property
    def points(self) -> list[dict]:
        return self.curve.points

    def __call__(self, step, model, history):
        if self.curve.recorded(step):
            return
        point = self.curve.add(step, history, epoch=step * self.batch / self.train_size,
                               val_bits_per_dim=history.val_loss[-1] / (784 * np.log(2)))
        print("  " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in point.items()),
              flush=True)


def build(name: str, key, args):
    """The image flow ``name`` (:func:`geoflow.image_flows.make_image_flow`) on 1×28×28 pixel
    values, its parameters those of ``args.init`` when given, wrapped with a fresh learned
    dequantiser when ``args.dequantization == "variational"``."""
    k_flow, k_deq = jax.random.split(key)
    shape = (1, 28, 28)
    size = {"blocks": args.blocks} if name == "realnvp-ms" else {"depth": args.depth}
    flow = make_image_flow(name, k_flow, shape, levels=2, width=args.width, tails=args.tails, **size)
    if args.init is not None:
        flow = trained_flow(args.init, flow)
    if args.dequantization == "uniform":
        return flow
    return VariationallyDequantized(flow, VariationalDequantizer(shape, width=args.dequantizer_width,
                                                                 base=args.dequantizer_base, key=k_deq))


def trained_flow(path: Path, like):
    """The flow a run starts from (``--init``): a file of :func:`geoflow.save` holding a flow, or a
    ``fit`` checkpoint, whose best model is taken (a variationally dequantised one gives its flow).
    Refused unless its trainable arrays have ``like``'s (this run's architecture) shapes."""
    saved = load(path, trust=classes_in(like) | {VariationallyDequantized, VariationalDequantizer})
    if isinstance(saved, dict):
        saved = saved["model"] if saved.get("best_model") is None else saved["best_model"]
    if isinstance(saved, VariationallyDequantized):
        saved = saved.flow
    # the static fields differ (ActNorm records that it was initialized); the arrays must not
    shapes = lambda m: [(where, a.shape) for where, a in jax.tree_util.tree_leaves_with_path(eqx.filter(m, trainable(m)))]
    if type(saved) is not type(like) or shapes(saved) != shapes(like):
        raise SystemExit(f"--init {path}: its flow is not this run's architecture (--models, --depth, --width, "
                         "--blocks, --tails must be those it was trained with)")
    return saved


def tails_threshold(text: str) -> float | None:
    """``--tails``: a positive threshold, or ``none`` for a Gaussian latent."""
    if text.lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive threshold or 'none', got {text!r}")
    return value


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, help="training steps per model (default 1,000; quick: 20)")
    ap.add_argument("--depth", type=int, default=8, help="Glow steps per level (K); residual blocks per level")
    ap.add_argument("--width", type=int, default=32, help="channels of the coupling networks")
    ap.add_argument("--blocks", type=int, default=1, help="residual blocks in RealNVP's coupling networks")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--learning-rate", type=float, default=1e-3, help="Adam's, with warm-up and cosine decay")
    ap.add_argument("--models", default="glow,realnvp-ms", help="comma-separated: glow, realnvp-ms, residual")
    ap.add_argument("--tails", type=tails_threshold, default=4.0, metavar="A",
                    help="threshold of the HeavyTails layer next to the base (default 4), or 'none'")
    ap.add_argument("--dequantization", choices=("uniform", "variational"), default="uniform",
                    help="variational: a learned noise flow (Flow++) trained with the model; the figure is its bound")
    ap.add_argument("--dequantizer-width", type=int, default=32, help="channels of the variational dequantizer")
    ap.add_argument("--dequantizer-base", choices=DEQUANTIZER_BASES, default="logistic",
                    help="distribution of the dequantizer's noise before its couplings (logistic: it starts uniform)")
    ap.add_argument("--init", type=Path, help="start from this trained flow (a saved model or a fit checkpoint); "
                                              "with --dequantization variational, a dequantiser is learned for it")
    ap.add_argument("--eval-every", type=int, help="steps between validation points (default min(250, steps/3))")
    ap.add_argument("--skip-nonfinite", type=int, default=0, metavar="N",
                    help="skip up to N consecutive steps with a non-finite loss or gradient (fit's skip_nonfinite)")
    ap.add_argument("--checkpoint", type=Path, help="folder for each model's checkpoint and curve (a long run)")
    ap.add_argument("--resume", action="store_true", help="continue from the checkpoints in --checkpoint")
    ap.add_argument("--out", type=Path, help="results file (default: results/mnist_multiscale_<models>.json)")
    ap.add_argument("--data-path", type=Path, default=SHARED if SHARED.is_file() else None)
    args = ap.parse_args()
    if args.resume and args.checkpoint is None:
        raise SystemExit("--resume continues the run in --checkpoint; give --checkpoint DIR")
    if args.init is not None and "," in args.models:
        raise SystemExit(f"--init gives one trained flow; name its one model in --models, got {args.models!r}")
    steps = args.steps or (20 if args.quick else 1_000)
    eval_every = args.eval_every or min(250, max(steps // 3, 1))
    data = load_images("mnist", args.data_path)
    train, val, test = data.train, data.val[:2_000], data.test
    if args.quick:
        train, val, test = train[:5_000], val[:200], test[:200]
    out = {"quick": args.quick, "steps": steps, "batch": args.batch, "depth": args.depth, "width": args.width,
           "realnvp_blocks": args.blocks, "tails": args.tails, "learning_rate": args.learning_rate,
           "dequantization": args.dequantization, "dequantizer_base": args.dequantizer_base,
           "init": None if args.init is None else args.init.as_posix(),
           "published_bits_per_dim": PUBLISHED, "test_images": len(test), "models": {}}
    loss = UniformDequantization() if args.dequantization == "uniform" else VariationalDequantization()
    path = args.out or RESULTS / f"mnist_multiscale_{args.models.replace(',', '_')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)  # --out may name a new folder
    if args.checkpoint is not None:
        args.checkpoint.mkdir(parents=True, exist_ok=True)
    for name in args.models.split(","):
        model = build(name, jax.random.key(0), args)
        params = sum(a.size for a in jax.tree.leaves(eqx.filter(model, trainable(model))))
        memory = step_memory_mb(model, train[: args.batch], loss)
        curve = Curve(None if args.checkpoint is None else args.checkpoint / f"{name}_curve.json", args.batch,
                      len(train), args.resume)
        model, history = fit(model, train, key=jax.random.key(1), loss=loss, val_data=val, steps=steps,
                             batch_size=args.batch, learning_rate=args.learning_rate, eval_every=eval_every,
                             progress=False, callback=curve, resume=args.resume, skip_nonfinite=args.skip_nonfinite,
                             checkpoint=None if args.checkpoint is None else args.checkpoint / f"{name}.eqx")
        flow = model.flow if isinstance(model, VariationallyDequantized) else model
        bound = bound_batched(model, test, jax.random.key(2))
        per_image = bits_per_dim(-bound, 784)
        worst = np.argsort(per_image)[::-1][:5]
        row = {"parameters": int(params), "test_bits_per_dim": float(per_image.mean()),
               # the mean is one image's when a flow sends an image far out: its median and worst say so
               "test_bits_per_dim_median": float(np.median(per_image)),
               "test_worst_images": [[int(i), float(per_image[i])] for i in worst],
               "train_cpu_s": curve.points[-1]["train_cpu_s"], "epochs": steps * args.batch / len(train),
               "fit_seconds": history.wall_time, "train_images_per_s": history.steps_per_second * args.batch,
               "sample_images_per_s": sampling_rate(flow), "train_step_memory_mb_batch64": memory,
               "best_step": history.best_step, "stop_reason": history.stop_reason,
               "skipped_steps": history.skipped_steps, "curve": curve.points}
        out["models"][name] = row
        if not args.quick:
            images = np.asarray(sample_at_temperature(flow, jax.random.key(3), 64, 0.7))
            # named after --out when it is given, so a variant's run leaves the default run's picture alone
            samples = (RESULTS / f"mnist_{name}_samples.png" if args.out is None
                       else path.with_name(f"{path.stem}_{name}_samples.png"))
            plot_images(samples, np.clip(np.floor(images), 0, 255) / 255,
                        title=f"{name}, {steps} steps, T = 0.7")
        print(name, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items() if k != "curve"},
              flush=True)
        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        # after every model: a long run keeps what it finished; a smoke run writes only to --out
        write_results(path, out, quick=args.quick and args.out is None)


if __name__ == "__main__":
    main()
