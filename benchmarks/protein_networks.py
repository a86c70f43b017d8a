"""What a frame network costs per fragment length: training fragments/s and sampled fragments/s
of ``frameflow`` at L = 16, 32 and 64, for the default FrameNetwork (width 96, 3 layers, 64 pair
channels), the same with 16 pair channels (the L² pair features are most of the work at long
lengths), a lighter one (width 64, 2 layers, 16 pair channels), and the light one
self-conditioned (``geoflow proteins train``'s default: two passes a step half the time).

Training: ``geoflow.fit`` with FrameFlowMatching(ot=True, auxiliary_weight=1) (the benchmark's
recipe), batch 64, timed on a second call so compilation is excluded, with the cores the process
kept busy; with ``--devices N`` also data-parallel over the CPU split into N devices (``fit``'s
``devices=N``, the same batches). Sampling: 64 fragments by
100 geodesic Euler steps and the clean-frame jump from t = 0.95, timed after a compiling call.
The data are the embedded chains' fragments (``load_fragments(L, stride=4)``); their count per
length is printed.

Usage: python benchmarks/protein_networks.py [--quick] [--lengths 16 32 64] [--steps N] [--samples K] [--devices N] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import equinox as eqx
import jax
import optax

from _timing import fit_rate

from geoflow.train_devices import split_cpu

from molecules.proteins import FrameFlowMatching, frameflow, load_fragments, points_from_backbones, sample_backbones

BATCH = 64
NETWORKS = {"default (width 96, 3 layers, pair 64)": dict(width=96, layers=3),
            "pair 16 (width 96, 3 layers)": dict(width=96, layers=3, pair=16),
            "light (width 64, 2 layers, pair 16)": dict(width=64, layers=2, pair=16),
            "light, self-conditioned": dict(width=64, layers=2, pair=16, self_conditioning=True)}


def measure(length: int, network: dict, train, steps: int, samples: int, devices: int) -> dict:
    model = frameflow(jax.random.key(0), length, **network)
    loss = FrameFlowMatching(ot=True, auxiliary_weight=1.0)
    rate, trained, cores = fit_rate(model, train, loss, optax.adam(1e-3), steps, BATCH)
    split = {}
    if devices > 1:
        split_rate, _, split_cores = fit_rate(model, train, loss, optax.adam(1e-3), steps, BATCH, devices=devices)
        split = {f"train_fragments_per_s_{devices}_devices": split_rate * BATCH, f"train_cores_{devices}_devices": split_cores}
    draw = lambda k: sample_backbones(trained, k, samples, steps=100, denoise_from=0.95)
    draw(jax.random.key(0))  # compile
    t0 = time.perf_counter()
    draw(jax.random.key(1))
    sample_rate = samples / (time.perf_counter() - t0)
    return {"parameters": sum(a.size for a in jax.tree.leaves(eqx.filter(model, eqx.is_array))),
            "train_fragments_per_s": rate * BATCH, "train_cores": cores, **split, "sample_fragments_per_s": sample_rate}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--lengths", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--steps", type=int, default=100, help="timed training steps per run")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--devices", type=int, default=1, help="also train data-parallel over the CPU split into this many devices")
    ap.add_argument("--out", type=Path, help="results file (default: results/protein_networks.json)")
    args = ap.parse_args()
    if args.quick:
        args.lengths, args.steps, args.samples = [16], 10, 16
    if args.devices > 1:
        split_cpu(args.devices)  # before JAX's first operation
    out = {"date": str(date.today()), "machine": platform.processor() or platform.machine(), "batch": BATCH,
           "steps": args.steps, "devices": args.devices, "lengths": {}}
    for length in args.lengths:
        data = load_fragments(length, stride=4)
        train = points_from_backbones(data.train)
        rows = {"train_fragments": len(train)}
        for name, network in NETWORKS.items():
            rows[name] = measure(length, network, train, args.steps, args.samples, args.devices)
            print(f"L={length} {name}: " + json.dumps({k: round(v, 4) for k, v in rows[name].items()}), flush=True)
        out["lengths"][str(length)] = rows
    path = args.out or Path(__file__).parent / "results" / ("protein_networks_quick.json" if args.quick else "protein_networks.json")
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
