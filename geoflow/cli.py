"""The ``geoflow`` command: the core's ``fit``, ``sample`` and ``eval``, and the commands and
``fit`` models other packages register (:mod:`geoflow.commands`).

Bad input (an unknown name, a missing run, data with NaN or of the wrong dimension) prints
one line starting with ``geoflow: error:`` and exits with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .commands import (COMMAND_GROUP, FIT_MODEL_GROUP, FitModels, Parser, TrainingRun, UsageError,
                       add_training_arguments, choice, count_parameters, existing_run, fit_options, points_on_manifold,
                       read_points, registered, run_info, training_summary)
from .datasets import DATASETS, IMAGE_DATASETS, random_split
from .flows import MODELS as DISCRETE_TIME_MODELS
from .image_flows import IMAGE_MODELS
from .train_devices import split_cpu

# continuous-time models: a CNF trained by likelihood and flow matching in four flavours
CONTINUOUS_MODELS = ("cnf", "fm", "ot-fm", "sb-fm", "rectified")
CORE_MODELS = tuple(dict.fromkeys(DISCRETE_TIME_MODELS + CONTINUOUS_MODELS + IMAGE_MODELS))


def fit_plugins() -> tuple[FitModels, ...]:
    """The models other packages add to ``geoflow fit`` (entry-point group ``geoflow.fit_models``)."""
    return registered(FIT_MODEL_GROUP)


def _owner(plugins, model: str) -> FitModels | None:
    return next((p for p in plugins if model in p.models), None)


def build_parser(plugins: Sequence[FitModels] | None = None, commands: Sequence | None = None) -> argparse.ArgumentParser:
    """The ``geoflow`` parser: the core's ``fit``, ``sample`` and ``eval``, with the models of
    ``plugins`` added to ``fit`` and the subcommands of ``commands`` (default: what is registered)."""
    plugins = fit_plugins() if plugins is None else plugins
    commands = registered(COMMAND_GROUP) if commands is None else commands
    models = tuple(dict.fromkeys(CORE_MODELS + tuple(m for p in plugins for m in p.models)))
    data = tuple(dict.fromkeys((*DATASETS, *IMAGE_DATASETS, *(d for p in plugins for d in p.data))))
    sources = tuple(dict.fromkeys((*DATASETS, *(s for p in plugins for s in p.sources))))
    p = Parser(prog="geoflow", description="Normalizing flows in JAX.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    f = sub.add_parser("fit", help="train a flow and write metrics, model and plots")
    f.add_argument("--model", type=choice(models, "model"), default="nsf", help=f"one of {', '.join(models)}")
    f.add_argument("--data", type=choice(data, "data set"), default="checkerboard",
                   help=f"vectors: {', '.join(DATASETS)}; images ({', '.join(IMAGE_MODELS)}): {', '.join(IMAGE_DATASETS)}"
                        + "".join(f"; {'/'.join(q.models)}: {', '.join(q.data)}" for q in plugins))
    f.add_argument("--data-path", type=Path, help="train on points from a .npy/.csv file (n, dim) instead; "
                                                 "--data mnist: a local mnist.npz or folder of IDX files")
    f.add_argument("--source", type=choice(sources, "source"),
                   help="flow-matching models: transport this data set onto --data instead of noise"
                        + "".join(f"; {'/'.join(q.models)}: {', '.join(q.sources)}" for q in plugins if q.sources))
    f.add_argument("--sigma", type=float, help="flow-matching smoothing σ (default 0; 0.1 for sb-fm)")
    f.add_argument("--eval-points", type=int,
                   help="NLL on at most this many points per split (default: all; 10,000 for continuous models)")
    add_training_arguments(f, steps=6000, batch_size=256)
    f.add_argument("--layers", type=int, help="number of flow layers (model default if omitted)")
    f.add_argument("--width", type=int, default=64, help="hidden width of the conditioners")
    f.add_argument("--levels", type=int, help="image models: squeeze levels of the multi-scale flow (default: up to 3)")
    for plugin in plugins:
        if plugin.add_arguments is not None:
            plugin.add_arguments(f)

    s = sub.add_parser("sample", help="draw samples from a trained run")
    s.add_argument("--run", type=Path, required=True)
    s.add_argument("-n", type=int, default=1000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", type=Path, required=True, help="output .npy file")

    e = sub.add_parser("eval", help="test NLL of a trained run on a data set or file")
    e.add_argument("--run", type=Path, required=True)
    e.add_argument("--data", type=choice(tuple(dict.fromkeys(DATASETS + IMAGE_DATASETS)), "data set"),
                   help="named data set (its test split); an image run defaults to the set it was trained on")
    e.add_argument("--data-path", type=Path, help=".npy/.csv file of points (n, dim)")
    e.add_argument("--seed", type=int, default=0)

    for command in commands:
        command.add_parser(sub)
    return p


def _plugin_options(plugin: FitModels) -> list[str]:
    """The ``fit`` options ``plugin`` adds, as ``(dest, flag)`` pairs."""
    if plugin.add_arguments is None:
        return []
    scratch = argparse.ArgumentParser(add_help=False)
    plugin.add_arguments(scratch)
    return [(a.dest, a.option_strings[0]) for a in scratch._actions]


def _refuse_other_models_input(args, plugins: Sequence[FitModels]) -> None:
    """An option, data set or source that belongs to another package's models, named as such."""
    for plugin in plugins:
        if args.model in plugin.models:
            continue
        use = " or ".join(plugin.models)
        for dest, flag in _plugin_options(plugin):
            if getattr(args, dest, None) is not None:
                raise ValueError(f"{flag} goes with --model {use}")
        if args.source in plugin.sources and args.source not in DATASETS:
            raise ValueError(f"--source {args.source} goes with --model {use}")
        if args.data in plugin.data and args.data not in DATASETS and args.data not in IMAGE_DATASETS:
            raise ValueError(f"{args.data} is {plugin.data_kind}: use --model {use}")


def _dataset(args):
    from .datasets import Dataset, load_dataset

    if getattr(args, "data_path", None) is not None:
        return Dataset(args.data_path.stem, *random_split(read_points(args.data_path), args.seed))
    return load_dataset(args.data, seed=args.seed)


def _build_continuous(name, data, args, key):
    """A continuous-time model and its loss (``None``: maximum likelihood)."""
    from . import continuous as ct

    if name == "cnf":
        if args.source is not None:
            raise ValueError("--source (data-to-data transport) needs a flow-matching model, not cnf")
        trace = "exact" if data.dim <= 16 else "hutchinson"
        return ct.cnf(key, data.dim, width=args.width, trace=trace), None
    source = None
    if args.source is not None:
        from .datasets import load_dataset

        source = load_dataset(args.source, seed=args.seed + 1).train
        if source.shape[1:] != (data.dim,):
            raise ValueError(f"source {args.source} has dimension {source.shape[1]}; --data has {data.dim}")
    model = ct.flow_matching(key, data.dim, source=source, width=args.width)
    sigma = args.sigma if args.sigma is not None else (0.1 if name == "sb-fm" else 0.0)
    variant = {"fm": "i-cfm", "rectified": "i-cfm", "ot-fm": "ot-cfm", "sb-fm": "sb-cfm"}[name]
    return model, ct.cfm(variant, sigma=sigma)


def _build_model(name, data, args, key):
    from .bijections import Chain, Logit, Standardize
    from .flows import make_flow

    if name in CONTINUOUS_MODELS:
        return _build_continuous(name, data, args, key)
    if args.source is not None:
        raise ValueError("--source (data-to-data transport) needs a flow-matching model: fm, ot-fm, sb-fm or rectified")
    kw = {"width": args.width}
    if args.layers is not None:
        kw["layers"] = args.layers
    if data.levels is not None:  # dequantised images in [0, 1): logit, then standardise
        logit = Logit(data.dim, alpha=1e-6)
        kw["preprocess"] = Chain([Standardize.fit(logit.inverse(np.asarray(data.train).T).T), logit])
    return make_flow(name, key, data.dim, **kw), None


def cmd_fit(args) -> dict:
    import jax

    if args.width < 1:
        raise ValueError(f"--width must be a positive number of hidden units, got {args.width}")
    plugins = fit_plugins()
    _refuse_other_models_input(args, plugins)
    plugin = _owner(plugins, args.model)
    if plugin is not None:
        return plugin.fit(args)
    if args.model in IMAGE_MODELS and (args.model not in DISCRETE_TIME_MODELS or args.data in IMAGE_DATASETS):
        from .cli_images import cmd_fit_images

        return cmd_fit_images(args)
    if args.data in IMAGE_DATASETS and args.data not in DATASETS:
        raise ValueError(f"{args.data} is an image set: use --model {' or '.join(IMAGE_MODELS)}")

    from . import metrics
    from .plots import plot_2d, plot_images
    from .train import fit

    data = _dataset(args)
    run = TrainingRun.start(args, Path("runs") / f"{args.model}-{data.name}")
    key_model, key_fit, key_sample = run.keys(3)
    model, loss = _build_model(args.model, data, args, key_model)
    train_kw = dict(val_data=data.val, **fit_options(args))
    model, history = fit(model, data.train, key=key_fit, loss=loss, **train_kw)
    res = {"model": args.model, "data": data.name, "dim": data.dim, "seed": args.seed,
           "parameters": count_parameters(model), **training_summary(history, args)}
    if args.model == "rectified":
        res.update(_reflow(model, data, jax.random.fold_in(key_fit, 1), train_kw))
        model = res.pop("model_after_reflow")
    density = args.source is None
    # an ODE solve per point makes continuous likelihoods costly: evaluate them on 10,000 points
    cap = args.eval_points or (10_000 if args.model in CONTINUOUS_MODELS else None)
    if density:
        for split in ("train", "val", "test"):
            res[f"{split}_nll"] = metrics.nll(model, getattr(data, split)[:cap],
                                              key=jax.random.fold_in(key_sample, 1) if model.needs_key else None)
        if cap is not None:
            res["nll_points"] = min(cap, len(data.test))
        if data.levels is not None:
            res["test_bits_per_dim"] = metrics.bits_per_dim(res["test_nll"], data.dim, data.levels)
        if data.true_nll is not None:
            res["true_nll"] = data.true_nll
            res["kl"] = metrics.kl_from_truth(res["test_nll"], data.true_nll)
    samples = np.asarray(model.sample(key_sample, (min(len(data.test), 20_000),)))
    if not density:
        n = min(len(samples), 5_000)
        res["test_w2"] = metrics.wasserstein(samples[:n], data.test[:n])
    if data.dim == 2:
        plot_2d(run.out / "samples.png", data.test[:20_000], samples,
                (lambda pts: metrics.log_prob_batched(model, pts)) if density else None,
                f"{args.model} on {data.name}" + ("" if density else f" from {args.source}"),
                grid=100 if args.model in CONTINUOUS_MODELS else 200)
    elif data.levels is not None:
        plot_images(run.out / "samples.png", samples[:64], int(np.sqrt(data.dim)), f"{args.model} samples")
    info = {"model": args.model, "data": data.name, "dim": data.dim, "levels": data.levels}
    return run.finish(model, info, res, run.out / "samples.png")


def _reflow(model, data, key, train_kw):
    """One reflow round after the first training (``--model rectified``)."""
    import jax

    from .continuous import reflow, straightness

    key_x0, key_reflow = jax.random.split(key)  # both from --seed, through the caller's key
    x0 = model.base.sample(key_x0, 2_000)
    before = float(straightness(model, x0))
    train_kw = {k: v for k, v in train_kw.items() if k != "val_data"}
    model, _ = reflow(model, key_reflow, pairs=20_000, val_fraction=0.0, **train_kw)
    return {"straightness_before_reflow": before, "straightness_after_reflow": float(straightness(model, x0)),
            "model_after_reflow": model}


def cmd_sample(args):
    import jax

    from .serialization import load

    model = load(existing_run(args.run) / "model.eqx")
    if args.n < 1:
        raise ValueError(f"-n must be positive, got {args.n}")
    x = np.asarray(model.sample(jax.random.key(args.seed), (args.n,)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, x)
    print(f"wrote {args.n} samples of shape {x.shape[1:]} to {args.out}")


def cmd_eval(args):
    from . import metrics
    from .datasets import load_dataset
    from .serialization import load

    run = existing_run(args.run)
    model = load(run / "model.eqx")
    info = run_info(run)
    if len(info.get("shape", ())) == 3:  # an image run: the dequantization bound in bits/dim
        from .cli_images import cmd_eval_images

        return cmd_eval_images(args, model, info)
    plugin = _owner(fit_plugins(), info.get("model"))
    if plugin is not None and plugin.evaluate is not None:
        return plugin.evaluate(args, model, info)
    manifold = getattr(getattr(model, "bijection", None), "manifold", None)
    if args.data_path is not None:
        x = read_points(args.data_path, tuple(model.shape) if manifold is not None else None)
        levels = None
    elif args.data is not None:
        d = load_dataset(args.data, seed=args.seed)
        x, levels = d.test, d.levels
    else:
        raise ValueError("eval needs --data NAME or --data-path FILE")
    if x.shape[1:] != tuple(model.shape):
        raise ValueError(f"data has dimension {x.shape[1]} but the model in {run} expects {model.shape[0]}")
    import jax

    if manifold is not None:
        x = points_on_manifold(manifold, x, f"model's {type(manifold).__name__}")

    res = {"n": len(x), "nll": metrics.nll(model, x, key=jax.random.key(args.seed) if model.needs_key else None)}
    if levels is not None:
        res["bits_per_dim"] = metrics.bits_per_dim(res["nll"], x.shape[1], levels)
    print(json.dumps(res))
    return res


def main(argv=None) -> int:
    try:
        commands = registered(COMMAND_GROUP)
        args = build_parser(commands=commands).parse_args(argv)
        if getattr(args, "devices", 1) != 1:  # before any JAX operation: the split is fixed at the backend's start
            split_cpu(args.devices)
        core = {"fit": cmd_fit, "sample": cmd_sample, "eval": cmd_eval}
        if args.command in core:
            core[args.command](args)
        else:
            next(c for c in commands if c.NAME == args.command).run(args)
    except (UsageError, ValueError, FileNotFoundError) as e:
        print(f"geoflow: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
