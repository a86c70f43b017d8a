"""``geoflow fit --model rfm``: Riemannian flow matching on a built-in manifold data set or on
points from a file, with exact test NLL and a picture suited to the manifold."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .cli import MANIFOLD_DATA, _read_points, count_parameters, points_on_manifold
from .cli_training import fit_options


def _manifold_data(args):
    """``(manifold, data set, prior)`` for ``--model rfm``: a built-in set, or points from a file."""
    import jax

    from manifolds import SE3, SO3, Sphere, Torus, se3_prior
    from manifolds.datasets import BUILT_IN, ManifoldDataset

    if args.data_path is None:
        if args.data not in MANIFOLD_DATA:
            raise ValueError(f"--model rfm trains on {', '.join(MANIFOLD_DATA)} or on --data-path points; got --data {args.data}")
        data = BUILT_IN[args.data](args.seed)
        kind = {Sphere: "sphere", Torus: "torus", SO3: "so3"}[type(data.manifold)]
        if args.manifold not in (None, kind):
            raise ValueError(f"{args.data} lives on the {kind} manifold; got --manifold {args.manifold}")
        return data.manifold, data, None
    if args.manifold is None:
        raise ValueError("--model rfm with --data-path needs --manifold (sphere, torus, so3 or se3)")
    x = np.load(args.data_path) if args.data_path.suffix == ".npy" else _read_points(args.data_path)
    x = np.asarray(x, np.float32)
    manifold = {"sphere": Sphere(2), "so3": SO3(), "se3": SE3()}.get(args.manifold) or Torus(x.shape[-1])
    if x.shape[1:] != manifold.shape:
        raise ValueError(f"{args.data_path} holds points of shape {x.shape[1:]}; {args.manifold} expects {manifold.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{args.data_path}: {int((~np.isfinite(x)).any(axis=tuple(range(1, x.ndim))).sum())} point(s) "
                         "hold NaN or inf")
    x = points_on_manifold(manifold, x, args.manifold, where=f"{args.data_path}: ")
    perm = np.random.default_rng(args.seed).permutation(len(x))
    n_train, n_val = int(0.8 * len(x)), int(0.1 * len(x))
    x = x[perm]
    data = ManifoldDataset(args.data_path.stem, x[:n_train], x[n_train : n_train + n_val], x[n_train + n_val :], manifold)
    prior = None
    if args.manifold == "se3":  # uniform rotations × a Gaussian matched to the training translations
        t = data.train[:, 9:]
        prior = se3_prior(manifold, translation_loc=t.mean(0), translation_scale=float(t.std()) + 1e-6)
    return manifold, data, prior


def _plot_manifold_samples(path, model, data, samples, title):
    """``samples.png`` for each manifold: a world map (S²), the square [0, 2π)² (T²), or the
    axis-and-turn picture of rotations (SO(3), SE(3)'s rotation part)."""
    from . import metrics
    from .plots import plot_2d, plot_so3, plot_sphere
    from manifolds import SO3, Product, Sphere, Torus

    m = data.manifold
    if isinstance(m, Sphere) and m.dim == 2:
        to_ll = lambda p: np.asarray(Sphere.to_lat_lon(p))
        density = lambda ll: metrics.log_prob_batched(model, np.asarray(Sphere.from_lat_lon(ll), np.float32))
        return plot_sphere(path, to_ll(data.test), to_ll(samples), density, title)
    if isinstance(m, Torus) and m.dim == 2:
        density = lambda p: metrics.log_prob_batched(model, np.asarray(p, np.float32))
        return plot_2d(path, data.test, samples, density, title, grid=80, bounds=(0.0, 2 * np.pi))
    if isinstance(m, SO3):
        return plot_so3(path, data.test, samples, title)
    if isinstance(m, Product) and isinstance(m.factors[0], SO3):
        return plot_so3(path, data.test[:, :9].reshape(-1, 3, 3), samples[:, :9].reshape(-1, 3, 3), title)
    return None


def cmd_fit_manifold(args) -> dict:
    """``geoflow fit --model rfm``: Riemannian flow matching, exact test NLL, a world map on S²."""
    import jax

    from . import metrics
    from .continuous import ODESolver, with_solver
    from .serialization import save
    from .train import fit
    from manifolds import GeodesicFlowMatching, rfm

    t_start = time.perf_counter()
    manifold, data, prior = _manifold_data(args)
    out = args.out or Path("runs") / f"rfm-{data.name}"
    out.mkdir(parents=True, exist_ok=True)
    key_model, key_fit, key_sample = jax.random.split(jax.random.key(args.seed), 3)
    model = rfm(key_model, manifold, prior=prior, width=args.width)
    model, history = fit(model, data.train, key=key_fit, loss=GeodesicFlowMatching(), val_data=data.val,
                         **fit_options(args))
    evaluator = with_solver(model, ODESolver(rtol=1e-5, atol=1e-5))
    cap = args.eval_points
    res = {"model": "rfm", "manifold": type(manifold).__name__, "data": data.name, "seed": args.seed,
           "steps": history.steps[-1] if history.steps else 0, "stop_reason": history.stop_reason,
           "parameters": count_parameters(model), "fit_seconds": history.wall_time,
           "steps_per_second": history.steps_per_second,
           "uniform_nll": float(-manifold.uniform_log_prob()) if manifold.compact else None}
    for split in ("train", "val", "test"):
        res[f"{split}_nll"] = metrics.nll(evaluator, getattr(data, split)[:cap])
    if data.true_log_prob is not None:  # a synthetic set: the best any model can score
        res["true_test_nll"] = float(-np.mean(data.true_log_prob(data.test[:cap])))
    save(out / "model.eqx", model)
    (out / "run.json").write_text(json.dumps({"model": "rfm", "data": data.name, "manifold": res["manifold"],
                                               "seed": args.seed}, indent=2))
    samples = np.asarray(model.sample(key_sample, (min(len(data.test) * 4, 5_000),)))
    _plot_manifold_samples(out / "samples.png", model, data, samples, f"rfm on {data.name}")
    res["wall_seconds"] = time.perf_counter() - t_start
    (out / "metrics.json").write_text(json.dumps(res, indent=2))
    print(f"wrote {out / 'metrics.json'}, {out / 'model.eqx'}" + (f", {out / 'samples.png'}" if (out / 'samples.png').exists() else ""))
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}))
    return res
