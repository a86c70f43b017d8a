"""``geoflow fit --model {realnvp-ms,glow,residual} --data {mnist,digits}``: image flows trained on
the uniform-dequantisation bound, with test bits/dim in pixel space and a grid of samples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .commands import TrainingRun, count_parameters, fit_options, training_summary


def _images(args):
    from .datasets import IMAGE_DATASETS, load_images

    if args.data not in IMAGE_DATASETS:
        raise ValueError(f"--model {args.model} trains on images: --data {' or '.join(IMAGE_DATASETS)}; got {args.data}")
    # MNIST without --data-path: the shared data folder's copy, else the cache (downloaded with checksums once)
    return load_images(args.data, args.data_path, download=args.data_path is None)


def cmd_fit_images(args) -> dict:
    from .dequantization import UniformDequantization, bound_batched
    from .metrics import bits_per_dim
    from .image_flows import clip_to_pixels, make_image_flow, sample_at_temperature
    from .plots import plot_images
    from .train import fit

    if args.source is not None:
        raise ValueError(f"--model {args.model} takes no --source")
    data = _images(args)
    run = TrainingRun.start(args, Path("runs") / f"{args.model}-{data.name}")
    key_model, key_fit, key_eval, key_sample = run.keys(4)
    kw = {"width": args.width, "pixel_levels": data.levels, "levels": args.levels}
    if args.layers is not None:
        kw["couplings" if args.model == "realnvp-ms" else "depth"] = args.layers
    model = make_image_flow(args.model, key_model, data.shape, **kw)
    model, history = fit(model, data.train, key=key_fit, loss=UniformDequantization(), val_data=data.val,
                         **fit_options(args))
    test = data.test[: args.eval_points]
    bound = bound_batched(model, test, key_eval)
    info = {"model": args.model, "data": data.name, "shape": list(data.shape), "levels": data.levels}
    res = {**info, "seed": args.seed, "parameters": count_parameters(model), **training_summary(history, args),
           "test_images": len(test), "test_bits_per_dim": bits_per_dim(float(-bound.mean()), data.dim),
           "test_nll": float(-bound.mean())}
    grids = []
    for temperature, name in ((1.0, "samples.png"), (0.7, "samples_t0.7.png")):
        images = clip_to_pixels(sample_at_temperature(model, key_sample, 64, temperature), data.levels)
        plot_images(run.out / name, np.asarray(images) / (data.levels - 1), title=f"{args.model} on {data.name}, T={temperature}")
        grids.append(run.out / name)
    return run.finish(model, info, res, *grids)


def cmd_eval_images(args, model, info: dict) -> dict:
    """``geoflow eval`` of an image run: test bits/dim (uniform-dequantization bound) on the test
    split of ``--data`` (default: the run's own set) or of the MNIST file at ``--data-path``."""
    import jax

    from .datasets import load_images
    from .dequantization import bound_batched
    from .metrics import bits_per_dim

    name = args.data or info["data"]
    data = load_images(name, args.data_path, download=args.data_path is None) if name == "mnist" else load_images(name)
    if data.shape != tuple(model.shape):
        raise ValueError(f"{name} images have shape {data.shape}; the model in {args.run} expects {tuple(model.shape)}")
    bound = bound_batched(model, data.test, jax.random.key(args.seed))
    res = {"n": len(bound), "nll": float(-bound.mean()), "bits_per_dim": bits_per_dim(float(-bound.mean()), data.dim)}
    print(json.dumps(res))
    return res
