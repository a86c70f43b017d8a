"""``geoflow fit --model {realnvp-ms,glow,residual} --data {mnist,digits}``: image flows trained on
the uniform-dequantisation bound, with test bits/dim in pixel space and a grid of samples."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .cli import count_parameters, report, training_summary
from .cli_training import fit_options


def _images(args):
    from .datasets import IMAGE_DATASETS, load_images

    if args.data not in IMAGE_DATASETS:
        raise ValueError(f"--model {args.model} trains on images: --data {' or '.join(IMAGE_DATASETS)}; got {args.data}")
    # MNIST without --data-path comes from the cache, downloaded there (with checksums) the first time
    return load_images(args.data, args.data_path, download=args.data_path is None)


def cmd_fit_images(args) -> dict:
    import jax

    from .dequantization import UniformDequantization, uniform_bound_batched
    from .metrics import bits_per_dim
    from .image_flows import clip_to_pixels, make_image_flow, sample_at_temperature
    from .plots import plot_images
    from .serialization import save
    from .train import fit

    if args.source is not None or args.manifold is not None:
        raise ValueError(f"--model {args.model} takes neither --source nor --manifold")
    t_start = time.perf_counter()
    data = _images(args)
    out = args.out or Path("runs") / f"{args.model}-{data.name}"
    out.mkdir(parents=True, exist_ok=True)
    key_model, key_fit, key_eval, key_sample = jax.random.split(jax.random.key(args.seed), 4)
    kw = {"width": args.width, "pixel_levels": data.levels, "levels": args.levels}
    if args.layers is not None:
        kw["couplings" if args.model == "realnvp-ms" else "depth"] = args.layers
    model = make_image_flow(args.model, key_model, data.shape, **kw)
    model, history = fit(model, data.train, key=key_fit, loss=UniformDequantization(), val_data=data.val,
                         **fit_options(args))
    test = data.test[: args.eval_points]
    bound = uniform_bound_batched(model, test, key_eval)
    res = {"model": args.model, "data": data.name, "shape": list(data.shape), "levels": data.levels,
           "seed": args.seed, "steps": history.steps[-1] if history.steps else 0,
           "parameters": count_parameters(model), **training_summary(history, args.batch_size),
           "test_images": len(test), "test_bits_per_dim": bits_per_dim(float(-bound.mean()), data.dim),
           "test_nll": float(-bound.mean())}
    save(out / "model.eqx", model)
    (out / "run.json").write_text(json.dumps({"model": args.model, "data": data.name, "shape": list(data.shape),
                                               "levels": data.levels, "seed": args.seed}, indent=2))
    for temperature, name in ((1.0, "samples.png"), (0.7, "samples_t0.7.png")):
        images = clip_to_pixels(sample_at_temperature(model, key_sample, 64, temperature), data.levels)
        plot_images(out / name, np.asarray(images) / (data.levels - 1), title=f"{args.model} on {data.name}, T={temperature}")
    res["wall_seconds"] = time.perf_counter() - t_start
    return report(out / "metrics.json", res, out / "model.eqx", out / "samples.png", out / "samples_t0.7.png")


def cmd_eval_images(args, model, info: dict) -> dict:
    """``geoflow eval`` of an image run: test bits/dim (uniform-dequantization bound) on the test
    split of ``--data`` (default: the run's own set) or of the MNIST file at ``--data-path``."""
    import jax

    from .datasets import load_images
    from .dequantization import uniform_bound_batched
    from .metrics import bits_per_dim

    name = args.data or info["data"]
    data = load_images(name, args.data_path, download=args.data_path is None) if name == "mnist" else load_images(name)
    if data.shape != tuple(model.shape):
        raise ValueError(f"{name} images have shape {data.shape}; the model in {args.run} expects {tuple(model.shape)}")
    bound = uniform_bound_batched(model, data.test, jax.random.key(args.seed))
    res = {"n": len(bound), "nll": float(-bound.mean()), "bits_per_dim": bits_per_dim(float(-bound.mean()), data.dim)}
    print(json.dumps(res))
    return res
