"""``geoflow fit --model dfm``: discrete flow matching on token sequences (the discretized
checkerboard, sorted ones, QM9 SMILES), with the test ELBO, samples and their scores."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .cli import DISCRETE_SOURCES, TOKEN_DATA, count_parameters
from .cli_training import fit_options


def _token_data(args):
    from discrete.datasets import load_token_data

    if args.data not in TOKEN_DATA:
        raise ValueError(f"--model dfm trains on {', '.join(TOKEN_DATA)}; got --data {args.data}")
    if args.data_path is not None and args.data != "qm9-smiles":
        raise ValueError("--data-path goes with --data qm9-smiles (a file of SMILES) for --model dfm")
    return load_token_data(args.data, seed=args.seed, path=args.data_path)


def cmd_fit_discrete(args) -> dict:
    import jax

    from .plots import plot_2d
    from .serialization import save
    from .train import fit
    from discrete import DiscreteFlowMatching, dfm
    from discrete.datasets import checkerboard_tokens_log_prob, smiles_metrics, sorted_ones_counts

    source = args.source or "mask"
    if source not in DISCRETE_SOURCES:
        raise ValueError(f"--model dfm takes --source {' or '.join(DISCRETE_SOURCES)}; got {source}")
    t_start = time.perf_counter()
    data = _token_data(args)
    out = args.out or Path("runs") / f"dfm-{source}-{data.name}"
    out.mkdir(parents=True, exist_ok=True)
    key_model, key_fit, key_elbo, key_sample = jax.random.split(jax.random.key(args.seed), 4)
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
    res = {"model": "dfm", "source": source, "data": data.name, "length": data.length, "vocab_size": data.vocab_size,
           "seed": args.seed, "steps": history.steps[-1] if history.steps else 0, "stop_reason": history.stop_reason,
           "parameters": count_parameters(model), "fit_seconds": history.wall_time,
           "test_nll_bound": float(-elbo.mean()), "test_nll_bound_stderr": float(elbo.std() / np.sqrt(elbo.size)),
           "test_bits_per_token_bound": float(-elbo.mean() / (data.length * np.log(2)))}
    if data.true_nll is not None:
        res["true_nll"] = data.true_nll
        res["bound_gap"] = res["test_nll_bound"] - data.true_nll
    save(out / "model.eqx", model)
    (out / "run.json").write_text(json.dumps({"model": "dfm", "source": source, "data": data.name,
                                               "seed": args.seed}, indent=2))
    samples = np.asarray(model.sample(key_sample, (min(len(data.test), 10_000),), steps=100))
    if data.name == "checkerboard":
        res["samples_on_support"] = float(np.mean(np.isfinite(checkerboard_tokens_log_prob(samples))))
        plot_2d(out / "samples.png", data.test.astype(np.float32), samples.astype(np.float32), None,
                f"dfm ({source}) on the discretized checkerboard", bounds=(0, data.vocab_size))
    elif data.name == "sorted-ones":
        res["valid_fraction"], hist = sorted_ones_counts(samples)
        res["k_histogram"] = hist.tolist()
    else:
        strings = data.tokenizer.decode(samples)
        (out / "samples.txt").write_text("\n".join(strings) + "\n")
        res.update({f"smiles_{k}": v for k, v in smiles_metrics(strings, data.tokenizer.decode(data.train)).items()})
    res["wall_seconds"] = time.perf_counter() - t_start
    (out / "metrics.json").write_text(json.dumps(res, indent=2))
    print(f"wrote {out / 'metrics.json'}, {out / 'model.eqx'}")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}))
    return res
