"""The ``geoflow`` command: ``fit``, ``sample`` and ``eval``.

Bad input (an unknown name, a missing run, data with NaN or of the wrong dimension) prints
one line starting with ``geoflow: error:`` and exits with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from .cli_training import add_training_arguments, fit_options
from .datasets import DATASETS, IMAGE_DATASETS
from .flows import MODELS as DISCRETE_TIME_MODELS
from .image_flows import IMAGE_MODELS

# continuous-time models: a CNF trained by likelihood and flow matching in four flavours
CONTINUOUS_MODELS = ("cnf", "fm", "ot-fm", "sb-fm", "rectified")
MANIFOLD_MODELS = ("rfm",)
DISCRETE_MODELS = ("dfm",)  # CTMC discrete flow matching on token sequences (cli_discrete)
# "residual" is both: a vector flow on vector data, a multi-scale image flow on images
MODELS = tuple(dict.fromkeys(DISCRETE_TIME_MODELS + CONTINUOUS_MODELS + MANIFOLD_MODELS + DISCRETE_MODELS + IMAGE_MODELS))
MANIFOLDS = ("sphere", "torus", "so3", "se3")
# rfm's built-in sets (manifolds.datasets.BUILT_IN): earth events on S², a checkerboard on T², a mixture on SO(3)
MANIFOLD_DATA = ("volcano", "earthquake", "flood", "fire", "torus-checkerboard", "so3-mixture")
# dfm's token sets (discrete.datasets.TOKEN_DATA); "checkerboard" is discretized to 128 × 128 cells
TOKEN_DATA = ("checkerboard", "sorted-ones", "qm9-smiles")
DISCRETE_SOURCES = ("mask", "uniform")
ALL_DATA = tuple(dict.fromkeys((*DATASETS, *IMAGE_DATASETS, *MANIFOLD_DATA, *TOKEN_DATA)))


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + message
        raise UsageError(message)


class UsageError(Exception):
    pass


def _choice(valid, what):
    def check(value):
        if value not in valid:
            raise argparse.ArgumentTypeError(f"unknown {what} {value!r}; expected one of {', '.join(valid)}")
        return value

    return check


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="geoflow", description="Normalizing flows in JAX.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    f = sub.add_parser("fit", help="train a flow and write metrics, model and plots")
    f.add_argument("--model", type=_choice(MODELS, "model"), default="nsf", help=f"one of {', '.join(MODELS)}")
    f.add_argument("--data", type=_choice(ALL_DATA, "data set"), default="checkerboard",
                   help=f"vectors: {', '.join(DATASETS)}; images ({', '.join(IMAGE_MODELS)}): {', '.join(IMAGE_DATASETS)}; rfm: {', '.join(MANIFOLD_DATA)}; dfm: {', '.join(TOKEN_DATA)}")
    f.add_argument("--manifold", type=_choice(MANIFOLDS, "manifold"),
                   help="rfm only: sphere (default for earth data), torus, so3 or se3 (with --data-path)")
    f.add_argument("--data-path", type=Path, help="train on points from a .npy/.csv file (n, dim) instead; "
                                                 "--data mnist: a local mnist.npz or folder of IDX files")
    f.add_argument("--source", type=_choice(tuple(DATASETS) + DISCRETE_SOURCES, "source"),
                   help="flow-matching models: transport this data set onto --data instead of noise; "
                        "dfm: the source of the discrete path, mask (default) or uniform")
    f.add_argument("--sigma", type=float, help="flow-matching smoothing σ (default 0; 0.1 for sb-fm)")
    f.add_argument("--eval-points", type=int,
                   help="NLL on at most this many points per split (default: all; 10,000 for continuous models)")
    add_training_arguments(f, steps=6000, batch_size=256)
    f.add_argument("--layers", type=int, help="number of flow layers (model default if omitted)")
    f.add_argument("--width", type=int, default=64, help="hidden width of the conditioners")
    f.add_argument("--levels", type=int, help="image models: squeeze levels of the multi-scale flow (default: up to 3)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--out", type=Path, help="run directory (default runs/MODEL-DATA)")

    s = sub.add_parser("sample", help="draw samples from a trained run")
    s.add_argument("--run", type=Path, required=True)
    s.add_argument("-n", type=int, default=1000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", type=Path, required=True, help="output .npy file")

    from .cli_molecules import add_parser as add_molecules_parser
    from .cli_proteins import add_parser as add_proteins_parser

    add_molecules_parser(sub, _choice)
    add_proteins_parser(sub, _choice)

    e = sub.add_parser("eval", help="test NLL of a trained run on a data set or file")
    e.add_argument("--run", type=Path, required=True)
    e.add_argument("--data", type=_choice(tuple(dict.fromkeys(DATASETS + IMAGE_DATASETS)), "data set"),
                   help="named data set (its test split); an image run defaults to the set it was trained on")
    e.add_argument("--data-path", type=Path, help=".npy/.csv file of points (n, dim)")
    e.add_argument("--seed", type=int, default=0)
    return p


def _read_points(path: Path, event_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Points ``(n, dim)`` from a ``.npy`` or CSV file; with `event_shape`, points of any layout
    with that many numbers each (rotations as ``(n, 3, 3)`` or ``(n, 9)``) in that shape."""
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    x = np.load(path, allow_pickle=False) if path.suffix == ".npy" else np.loadtxt(path, delimiter=",", ndmin=2)
    x = np.asarray(x, dtype=np.float32)
    if event_shape is not None and x.ndim >= 2 and len(x) and math.prod(x.shape[1:]) == math.prod(event_shape):
        x = x.reshape(len(x), *event_shape)
    elif event_shape is not None and x.ndim >= 2 and len(x):
        raise ValueError(f"{path} holds points of shape {x.shape[1:]}; the model expects points of shape "
                         f"{tuple(event_shape)} ({math.prod(event_shape)} numbers each)")
    elif x.ndim != 2 or len(x) == 0:
        raise ValueError(f"{path} holds an array of shape {x.shape}; expected points (n, dim) with n > 0")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).reshape(len(x), -1).any(1).sum())
        raise ValueError(f"{path} contains NaN or inf in {bad} row(s); expected finite values")
    return x


def points_on_manifold(manifold, x: np.ndarray, name: str, where: str = "") -> np.ndarray:
    """``x`` in the manifold's canonical coordinates (torus angles wrapped), or one clear error
    counting the points off it (tolerance 1e-4)."""
    import jax

    x = np.asarray(jax.vmap(manifold.canonical)(x))
    off = int((~np.asarray(jax.vmap(lambda p: manifold.belongs(p, 1e-4))(x))).sum())
    if off:
        raise ValueError(f"{where}{off} of {len(x)} point(s) are off the {name} manifold (tolerance 1e-4)")
    return x


def _dataset(args):
    from .datasets import Dataset, load_dataset

    if getattr(args, "data_path", None) is not None:
        x = _read_points(args.data_path)
        perm = np.random.default_rng(args.seed).permutation(len(x))
        n_val = n_test = max(1, len(x) // 10)
        x = x[perm]
        return Dataset(args.data_path.stem, x[n_val + n_test :], x[:n_val], x[n_val : n_val + n_test])
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


def training_summary(history, batch_size: int) -> dict:
    """What a training command records of a ``fit``: how it stopped, the last losses, examples
    per second and the time spent."""
    return {"stop_reason": history.stop_reason,
            "final_train_loss": history.train_loss[-1] if history.train_loss else None,
            "final_val_loss": history.val_loss[-1] if history.val_loss else None,
            "examples_per_s": history.steps_per_second * batch_size, "fit_seconds": history.wall_time}


def report(path: Path, res: dict, *also: Path) -> dict:
    """Write ``res`` as JSON to ``path``, say which files were written, print ``res``."""
    path.write_text(json.dumps(res, indent=2))
    print("wrote " + ", ".join(str(p) for p in (*also, path)))
    print(json.dumps(res))
    return res


def _run_dir(path: Path) -> Path:
    if not (path / "model.eqx").is_file():
        raise FileNotFoundError(f"run directory {path} has no model.eqx; expected the --out of a 'geoflow fit'")
    return path


def count_parameters(model) -> int:
    """Trainable scalars (frozen arrays such as an empirical source's samples excluded)."""
    import equinox as eqx
    import jax

    from .nn import trainable

    return int(sum(a.size for a in jax.tree.leaves(eqx.filter(model, trainable(model)))))


def cmd_fit(args) -> dict:
    import jax

    if args.width < 1:
        raise ValueError(f"--width must be a positive number of hidden units, got {args.width}")
    if args.model in MANIFOLD_MODELS:
        from .cli_manifolds import cmd_fit_manifold

        return cmd_fit_manifold(args)
    if args.model in DISCRETE_MODELS:
        from .cli_discrete import cmd_fit_discrete

        return cmd_fit_discrete(args)
    if args.model in IMAGE_MODELS and (args.model not in DISCRETE_TIME_MODELS or args.data in IMAGE_DATASETS):
        from .cli_images import cmd_fit_images

        return cmd_fit_images(args)
    if args.data in IMAGE_DATASETS and args.data not in DATASETS:
        raise ValueError(f"{args.data} is an image set: use --model {' or '.join(IMAGE_MODELS)}")
    if args.source in DISCRETE_SOURCES:
        raise ValueError(f"--source {args.source} is a discrete source: use --model dfm")
    if args.data in TOKEN_DATA and args.data not in DATASETS:
        raise ValueError(f"{args.data} is token data: use --model dfm")
    if args.manifold is not None:
        raise ValueError("--manifold goes with --model rfm")
    if args.data in MANIFOLD_DATA:
        raise ValueError(f"{args.data} lives on a manifold: use --model rfm")

    from . import metrics
    from .plots import plot_2d, plot_images
    from .serialization import save
    from .train import fit

    t_start = time.perf_counter()
    data = _dataset(args)
    out = args.out or Path("runs") / f"{args.model}-{data.name}"
    out.mkdir(parents=True, exist_ok=True)
    key_model, key_fit, key_sample = jax.random.split(jax.random.key(args.seed), 3)
    model, loss = _build_model(args.model, data, args, key_model)
    train_kw = dict(val_data=data.val, **fit_options(args))
    model, history = fit(model, data.train, key=key_fit, loss=loss, **train_kw)
    res = {"model": args.model, "data": data.name, "dim": data.dim, "seed": args.seed, "steps": history.steps[-1] if history.steps else 0,
           "stop_reason": history.stop_reason,
           "parameters": count_parameters(model)}
    res["fit_seconds"] = history.wall_time
    res["steps_per_second"] = history.steps_per_second
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
        if data.entropy is not None:
            res["entropy"] = data.entropy
            res["kl"] = metrics.kl_from_truth(res["test_nll"], data.entropy)
    save(out / "model.eqx", model)
    (out / "run.json").write_text(json.dumps({"model": args.model, "data": data.name, "dim": data.dim,
                                               "levels": data.levels, "seed": args.seed}, indent=2))
    samples = np.asarray(model.sample(key_sample, (min(len(data.test), 20_000),)))
    if not density:
        n = min(len(samples), 5_000)
        res["test_w2"] = metrics.wasserstein(samples[:n], data.test[:n])
    if data.dim == 2:
        plot_2d(out / "samples.png", data.test[:20_000], samples,
                (lambda pts: metrics.log_prob_batched(model, pts)) if density else None,
                f"{args.model} on {data.name}" + ("" if density else f" from {args.source}"),
                grid=100 if args.model in CONTINUOUS_MODELS else 200)
    elif data.levels is not None:
        plot_images(out / "samples.png", samples[:64], int(np.sqrt(data.dim)), f"{args.model} samples")
    res["wall_seconds"] = time.perf_counter() - t_start
    (out / "metrics.json").write_text(json.dumps(res, indent=2))
    print(f"wrote {out / 'metrics.json'}, {out / 'model.eqx'}" + (f", {out / 'samples.png'}" if (out / 'samples.png').exists() else ""))
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}
    print(json.dumps(shown))
    return res


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

    model = load(_run_dir(args.run) / "model.eqx")
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

    run = _run_dir(args.run)
    model = load(run / "model.eqx")
    info = json.loads((run / "run.json").read_text()) if (run / "run.json").is_file() else {}
    if len(info.get("shape", ())) == 3:  # an image run: the dequantization bound in bits/dim
        from .cli_images import cmd_eval_images

        return cmd_eval_images(args, model, info)
    if hasattr(model, "elbo"):  # a CTMC model: a bound, named as one
        if args.data_path is None or args.data_path.suffix != ".npy":
            raise ValueError("eval of a dfm run needs --data-path TOKENS.npy (integer sequences (n, L))")
        if not args.data_path.is_file():
            raise FileNotFoundError(f"token file {args.data_path} does not exist")
        import jax

        elbo = np.asarray(model.elbo(np.load(args.data_path), jax.random.key(args.seed), samples=32))
        res = {"n": len(elbo), "nll_bound": float(-elbo.mean()),
               "bits_per_token_bound": float(-elbo.mean() / (model.length * np.log(2)))}
        print(json.dumps(res))
        return res
    manifold = getattr(getattr(model, "bijection", None), "manifold", None)
    if args.data_path is not None:
        x = _read_points(args.data_path, tuple(model.shape) if manifold is not None else None)
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
        args = build_parser().parse_args(argv)
        if args.command == "molecules":
            from .cli_molecules import COMMANDS

            COMMANDS[args.molecules_command](args)
        elif args.command == "proteins":
            from .cli_proteins import COMMANDS

            COMMANDS[args.proteins_command](args)
        else:
            {"fit": cmd_fit, "sample": cmd_sample, "eval": cmd_eval}[args.command](args)
    except (UsageError, ValueError, FileNotFoundError) as e:
        print(f"geoflow: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
