"""Training fragments/s of a frame network at L = 16 (or ``--length``) by ``fit``'s own step clock (which leaves out
the compiling first chunk), the way issue 24 measured its baseline (787 fragments/s, commit
7a4d36d, width 96 and 3 layers). It runs against whichever ``geoflow`` and ``molecules`` are first
on the path, so a network of an older commit is measured on the same machine beside today's:

    git worktree add OLD 7a4d36d
    PYTHONPATH=OLD python benchmarks/protein_fit_rate.py --width 96 --layers 3   # that commit's network
    python benchmarks/protein_fit_rate.py --width 64 --layers 2 --pair 16 --devices 2

The recipe is the one both commits share: FrameFlowMatching with minibatch OT and the auxiliary
losses (weight 1), batch 64, 400 steps in chunks of 100 (``--chunk``; the clock leaves out the first).

Usage: python benchmarks/protein_fit_rate.py [--quick] [--length L] [--chunk C] [--width W] [--layers N] [--pair P]
       [--heads H] [--num-points P] [--self-conditioning] [--devices N]
       [--steps N] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
from datetime import date
from pathlib import Path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="two chunks (one timed), and the results file is left alone")
    ap.add_argument("--length", type=int, default=16, help="residues per fragment")
    ap.add_argument("--chunk", type=int, default=100, help="steps per jitted chunk; the first chunk is not timed")
    ap.add_argument("--width", type=int, default=96)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--pair", type=int, help="pair channels (commits after 7a4d36d; default: the network's)")
    ap.add_argument("--heads", type=int, help="attention heads (default: the network's)")
    ap.add_argument("--num-points", type=int, help="points per head (default: the network's)")
    ap.add_argument("--self-conditioning", action="store_true")
    ap.add_argument("--devices", type=int, default=1, help="train over the CPU split into this many devices")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--out", type=Path, help="results file; each run adds its row (default: results/protein_fit_rate.json)")
    args = ap.parse_args()
    if args.quick:
        args.steps = 2 * args.chunk  # the clock leaves out the first chunk: one timed chunk
    if args.steps < 2 * args.chunk:
        ap.error(f"--steps {args.steps} leaves no timed chunk of {args.chunk} after the first; give at least {2 * args.chunk}")
    out = args.out or (None if args.quick else Path(__file__).parent / "results" / "protein_fit_rate.json")
    if args.devices > 1:
        from geoflow.train_devices import split_cpu

        split_cpu(args.devices)  # before JAX's first operation
    import jax

    import geoflow as gf
    from geoflow.continuous.paths import Exponential
    from molecules.proteins import FrameFlowMatching, frameflow, load_fragments, points_from_backbones

    network = dict(width=args.width, layers=args.layers)
    if args.pair is not None:
        network["pair"] = args.pair
    for name in ("heads", "num_points"):
        if getattr(args, name) is not None:
            network[name] = getattr(args, name)
    if args.self_conditioning:
        network["self_conditioning"] = True
    train = points_from_backbones(load_fragments(args.length, stride=4).train)
    model = frameflow(jax.random.key(0), args.length, **network)
    loss = FrameFlowMatching(rotation_scheduler=Exponential(3.0), ot=True, auxiliary_weight=1.0)
    _, history = gf.fit(model, train, key=jax.random.key(1), loss=loss, steps=args.steps, batch_size=64,
                        eval_every=args.chunk, val_fraction=0.0, progress=False,
                        devices=None if args.devices == 1 else args.devices)
    code = Path(gf.__file__).parents[1]
    commit = subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    row = {"date": str(date.today()), "machine": platform.processor() or platform.machine(), "commit": commit,
           "length": args.length, "network": network, "devices": args.devices, "steps": args.steps,
           "train_fragments_per_s": round(history.steps_per_second * 64, 1)}
    print(json.dumps(row), flush=True)
    if out is not None:
        rows = json.loads(out.read_text()) if out.is_file() else []
        out.write_text(json.dumps(rows + [row], indent=2))


if __name__ == "__main__":
    main()
