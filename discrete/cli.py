"""``geoflow fit --model dfm``: discrete flow matching on token sequences (the discretized
checkerboard, sorted ones, QM9 SMILES), with the test ELBO, samples and their scores; ``geoflow
eval`` of such a run reports the ELBO bound. Registered with the ``geoflow`` command as
``FIT_MODELS`` (entry-point group ``geoflow.fit_models``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from geoflow.commands import FitModels, TrainingRun, count_parameters, fit_options, training_summary

from .datasets import TOKEN_DATA

SOURCES = ("mask", "uniform")  # the source distribution of the discrete path


def _token_data(args):
    from .datasets import load_token_data

    if args.data not in TOKEN_DATA:
        raise ValueError(f"--model dfm trains on {', '.join(TOKEN_DATA)}; got --data {args.data}")
    if args.data_path is not None and args.data != "qm9-smiles":
        raise ValueError("--data-path goes with --data qm9-smiles (a file of SMILES) for --model dfm")
    return load_token_data(args.data, seed=args.seed, path=args.data_path)


def cmd_fit_discrete(args) -> dict:
    from geoflow.plots import plot_2d
    from geoflow.train import fit

    from . import DiscreteFlowMatching, dfm
    from .datasets import checkerboard_tokens_log_prob, smiles_metrics, sorted_ones_counts

    source = args.source or "mask"
    if source not in SOURCES:
        raise ValueError(f"--model dfm takes --source {' or '.join(SOURCES)}; got {source}")
    data = _token_data(args)
    run = TrainingRun.start(args, Path("runs") / f"dfm-{source}-{data.name}")
    key_model, key_fit, key_elbo, key_sample = run.keys(4)
    depth = args.layers or 4
    if data.length <= 16:
        model = dfm(key_model, data.length, data.vocab_size, source=source, width=args.width, depth=depth)
    else:
        model = dfm(key_model, data.length, data.vocab_size, source=source, denoiser="transformer",
                    dim=args.width, depth=depth)
    model, history = fit(model, data.train, key=key_fit, loss=DiscreteFlowMatching(), val_data=data.val,
                         **fit_options(args))
    test = data.test[: args.eval_points or 5_000]
    elbo = np.asarray(model.elbo(test, key_elbo, samples=32))
    info = {"model": "dfm", "source": source, "data": data.name}
    res = {**info, "length": data.length, "vocab_size": data.vocab_size, "seed": args.seed,
           "parameters": count_parameters(model), **training_summary(history, args),
           "test_nll_bound": float(-elbo.mean()), "test_nll_bound_stderr": float(elbo.std() / np.sqrt(elbo.size)),
           "test_bits_per_token_bound": float(-elbo.mean() / (data.length * np.log(2)))}
    if data.true_nll is not None:
        res["true_nll"] = data.true_nll
        res["bound_gap"] = res["test_nll_bound"] - data.true_nll
    samples = np.asarray(model.sample(key_sample, (min(len(data.test), 10_000),), steps=100))
    if data.name == "checkerboard":
        res["samples_on_support"] = float(np.mean(np.isfinite(checkerboard_tokens_log_prob(samples))))
        plot_2d(run.out / "samples.png", data.test.astype(np.float32), samples.astype(np.float32), None,
                f"dfm ({source}) on the discretized checkerboard", bounds=(0, data.vocab_size))
    elif data.name == "sorted-ones":
        res["valid_fraction"], hist = sorted_ones_counts(samples)
        res["k_histogram"] = hist.tolist()
    else:
        strings = data.tokenizer.decode(samples)
        (run.out / "samples.txt").write_text("\n".join(strings) + "\n")
        res.update({f"smiles_{k}": v for k, v in smiles_metrics(strings, data.tokenizer.decode(data.train)).items()})
    return run.finish(model, info, res, run.out / "samples.png", run.out / "samples.txt")


def cmd_eval_discrete(args, model, info: dict) -> dict:
    """``geoflow eval`` of a dfm run: the ELBO bound on the NLL of ``--data-path TOKENS.npy``."""
    import jax

    if args.data_path is None or args.data_path.suffix != ".npy":
        raise ValueError("eval of a dfm run needs --data-path TOKENS.npy (integer sequences (n, L))")
    if not args.data_path.is_file():
        raise FileNotFoundError(f"token file {args.data_path} does not exist")
    elbo = np.asarray(model.elbo(np.load(args.data_path, allow_pickle=False), jax.random.key(args.seed), samples=32))
    res = {"n": len(elbo), "nll_bound": float(-elbo.mean()),
           "bits_per_token_bound": float(-elbo.mean() / (model.length * np.log(2)))}
    print(json.dumps(res))
    return res


FIT_MODELS = FitModels(models=("dfm",), data=TOKEN_DATA, data_kind="token data", fit=cmd_fit_discrete,
                       sources=SOURCES, evaluate=cmd_eval_discrete)
