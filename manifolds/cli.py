"""``geoflow fit --model rfm``: Riemannian flow matching on a built-in manifold data set or on
points from a file, with exact test NLL and a picture suited to the manifold. Registered with
the ``geoflow`` command as ``FIT_MODELS`` (entry-point group ``geoflow.fit_models``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from geoflow.commands import (FitModels, TrainingRun, choice, count_parameters, fit_options, points_on_manifold,
                              read_points, training_summary)
from geoflow.datasets import random_split

from .datasets import BUILT_IN

MANIFOLDS = ("sphere", "torus", "so3", "se3")
MANIFOLD_DATA = tuple(BUILT_IN)  # earth events on S², a checkerboard on T², a mixture on SO(3)


def _manifold_data(args):
    """``(manifold, data set, prior)`` for ``--model rfm``: a built-in set, or points from a file."""
    from . import SE3, SO3, Sphere, Torus, se3_prior
    from .datasets import ManifoldDataset

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
    x = np.load(args.data_path, allow_pickle=False) if args.data_path.suffix == ".npy" else read_points(args.data_path)
    x = np.asarray(x, np.float32)
    manifold = {"sphere": Sphere(2), "so3": SO3(), "se3": SE3()}.get(args.manifold) or Torus(x.shape[-1])
    if x.shape[1:] != manifold.shape:
        raise ValueError(f"{args.data_path} holds points of shape {x.shape[1:]}; {args.manifold} expects {manifold.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{args.data_path}: {int((~np.isfinite(x)).any(axis=tuple(range(1, x.ndim))).sum())} point(s) "
                         "hold NaN or inf")
    x = points_on_manifold(manifold, x, args.manifold, where=f"{args.data_path}: ")
    data = ManifoldDataset(args.data_path.stem, *random_split(x, args.seed), manifold=manifold)
    prior = None
    if args.manifold == "se3":  # uniform rotations × a Gaussian matched to the training translations
        t = data.train[:, 9:]
        prior = se3_prior(manifold, translation_loc=t.mean(0), translation_scale=float(t.std()) + 1e-6)
    return manifold, data, prior


def _plot_manifold_samples(path, model, data, samples, title):
    """``samples.png`` for each manifold: a world map (S²), the square [0, 2π)² (T²), or the
    axis-and-turn picture of rotations (SO(3), SE(3)'s rotation part)."""
    from geoflow import metrics
    from geoflow.plots import plot_2d, plot_so3, plot_sphere

    from . import SO3, Product, Sphere, Torus

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
    from geoflow import metrics
    from geoflow.continuous import ODESolver, with_solver
    from geoflow.train import fit

    from . import GeodesicFlowMatching, rfm

    manifold, data, prior = _manifold_data(args)
    run = TrainingRun.start(args, Path("runs") / f"rfm-{data.name}")
    key_model, key_fit, key_sample = run.keys(3)
    # options not on the command line (None) keep rfm's and the loss's own defaults
    field_options = {k: v for k, v in (("fourier_features", args.fourier_features),
                                        ("fourier_scale", args.fourier_scale)) if v is not None}
    model = rfm(key_model, manifold, prior=prior, width=args.width, **field_options)
    loss = GeodesicFlowMatching() if args.time_power is None else GeodesicFlowMatching(time_power=args.time_power)
    model, history = fit(model, data.train, key=key_fit, loss=loss, val_data=data.val, **fit_options(args))
    evaluator = with_solver(model, ODESolver(rtol=1e-5, atol=1e-5))
    cap = args.eval_points
    info = {"model": "rfm", "data": data.name, "manifold": type(manifold).__name__}
    res = {**info, "seed": args.seed, "parameters": count_parameters(model), **training_summary(history, args),
           "uniform_nll": float(-manifold.uniform_log_prob()) if manifold.compact else None}
    for split in ("train", "val", "test"):
        res[f"{split}_nll"] = metrics.nll(evaluator, getattr(data, split)[:cap])
    if data.true_log_prob is not None:  # a synthetic set: the best any model can score
        res["true_test_nll"] = float(-np.mean(data.true_log_prob(data.test[:cap])))
    samples = np.asarray(model.sample(key_sample, (min(len(data.test) * 4, 5_000),)))
    _plot_manifold_samples(run.out / "samples.png", model, data, samples, f"rfm on {data.name}")
    return run.finish(model, info, res, run.out / "samples.png")


def _add_fit_arguments(parser) -> None:
    parser.add_argument("--manifold", type=choice(MANIFOLDS, "manifold"),
                        help="rfm only: sphere (default for earth data), torus, so3 or se3 (with --data-path)")
    parser.add_argument("--fourier-features", type=int,
                        help="rfm only: random Fourier features of the point (even; default 0; the earth benchmark uses 128)")
    parser.add_argument("--fourier-scale", type=float,
                        help="rfm only: the highest Fourier frequency's length (default 100; the lowest is 1)")
    parser.add_argument("--time-power", type=float,
                        help="rfm only: times drawn as 1 − (1 − u)^p (default 1); p > 1 trains more near the data (earth: 2)")


FIT_MODELS = FitModels(models=("rfm",), data=MANIFOLD_DATA, data_kind="data on a manifold", fit=cmd_fit_manifold,
                       add_arguments=_add_fit_arguments)
