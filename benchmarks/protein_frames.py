"""Protein backbone fragments on SE(3)ᴺ (``molecules.proteins``): for fragments of 16 and 32
residues, sample quality against held-out chains — consecutive CA–CA distances, clashes, radius
of gyration, secondary-structure content (biotite P-SEA), Ramachandran Jensen–Shannon divergence
— beside the same metrics of the training fragments themselves (what a perfect model would
score), and the exact held-out NLL per residue for the shorter length (translations in nm,
against the prior's). No peer library runs here (FrameFlow is a PyTorch code base with a
structure-prediction stack behind it); the CPU budget is part of the result.

Usage: python benchmarks/protein_frames.py [--quick] [--lengths L …] [--steps S] [--prediction frames|velocity]
       [--curve K] [--samples K] [--nll K] [--tag NAME]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import equinox as eqx
import jax
import numpy as np

import geoflow as gf
from geoflow.metrics import nll
from molecules.proteins import (FrameFlowMatching, backbone_metrics, frameflow, load_fragments,
                                points_from_backbones, sample_backbones)
from molecules.proteins.model import PREDICTIONS, rotation_schedule


def brief(metrics: dict) -> dict:
    """The figures the targets are stated in, from :func:`backbone_metrics` with a reference."""
    m, r = metrics["samples"], metrics["reference"]
    return {"ca_ca_within_0.1": m["ca_ca_within_0.1"], "ca_ca_std": m["ca_ca_std"],
            "clash_free": 1 - m["fragments_with_clash"], "helix": m["ss_helix"], "strand": m["ss_strand"],
            "helix_reference": r["ss_helix"], "strand_reference": r["ss_strand"],
            "ramachandran_js": metrics["ramachandran_js"], "rg": m["radius_of_gyration_mean"],
            "rg_reference": r["radius_of_gyration_mean"], "rg_reference_std": r["radius_of_gyration_std"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--lengths", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--width", type=int, default=96)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--prediction", choices=PREDICTIONS, default="frames",
                    help="the network predicts the clean frames (FrameFlow) or the velocity")
    ap.add_argument("--train-rotation-rate", type=float, default=0.0,
                    help="rotations' training path: exponential at this rate, 0 linear")
    ap.add_argument("--sample-rotation-rate", type=float, default=3.0,
                    help="with --prediction frames, rotations' sampling schedule: exponential at this rate, 0 linear")
    ap.add_argument("--auxiliary-weight", type=float, default=0.0,
                    help="FrameFlow's backbone-atom and distance losses for t > 0.75 (0: off)")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--sampling-steps", type=int, default=100)
    ap.add_argument("--curve", type=int, default=5, help="metric evaluations during training (the last at the end)")
    ap.add_argument("--nll", type=int, default=64, help="held-out fragments for the exact NLL (shortest length)")
    ap.add_argument("--tag", default="", help="suffix of the results file (a variant keeps the default run's)")
    args = ap.parse_args()
    if args.quick:
        args.lengths, args.steps, args.samples, args.sampling_steps, args.nll, args.curve = [16], 40, 16, 20, 0, 2
        args.width, args.layers = 32, 1
    out = {"args": vars(args), "lengths": {}}
    for length in args.lengths:
        data = load_fragments(length, stride=4)
        train = points_from_backbones(data.train)
        model = frameflow(jax.random.key(0), length, width=args.width, layers=args.layers, prediction=args.prediction,
                          rotation_scheduler=rotation_schedule(args.sample_rotation_rate))
        loss = FrameFlowMatching(rotation_scheduler=rotation_schedule(args.train_rotation_rate), ot=True,
                                 auxiliary_weight=args.auxiliary_weight)
        curve, every = [], max(args.steps // args.curve, 1)
        clock = {"eval": 0.0, "start": time.process_time()}

        def evaluate(step, model, history):
            if step % every and step < args.steps:
                return False
            t0 = time.process_time()
            samples = sample_backbones(model, jax.random.key(2), args.samples, steps=args.sampling_steps)
            point = {"step": step, "train_cpu_s": t0 - clock["start"] - clock["eval"],
                     **brief(backbone_metrics(samples, data.test))}
            clock["eval"] += time.process_time() - t0
            curve.append(point)
            print(f"  L={length} step {step:6d} cpu {point['train_cpu_s']:7.0f} s  CA-CA within 0.1 Å "
                  f"{point['ca_ca_within_0.1']:.2f}  clash-free {point['clash_free']:.2f}  helix {point['helix']:.2f} "
                  f"strand {point['strand']:.2f}  Rama JS {point['ramachandran_js']:.3f}  Rg {point['rg']:.1f}",
                  flush=True)
            return False

        model, hist = gf.fit(model, train, key=jax.random.key(1), loss=loss, steps=args.steps,
                             batch_size=args.batch_size, learning_rate=args.lr, eval_every=min(every, 500),
                             progress=False, callback=evaluate)
        samples = sample_backbones(model, jax.random.key(2), args.samples, steps=args.sampling_steps)
        t0 = time.perf_counter()  # timed on a second call of the same shape: compiled
        sample_backbones(model, jax.random.key(3), args.samples, steps=args.sampling_steps)
        sample_s = time.perf_counter() - t0
        row = {"train_fragments": len(data.train), "test_fragments": len(data.test), "fit_s": hist.wall_time,
               "train_fragments_per_s": hist.steps_per_second * args.batch_size,
               "sample_fragments_per_s": args.samples / sample_s, "final_train_loss": hist.train_loss[-1],
               "curve": curve, "model": backbone_metrics(samples, data.test),
               "training_data": backbone_metrics(data.train, data.test)}
        if args.prediction == "frames":  # the same model sampled with other rotation schedules
            row["sampling_rates"] = {}
            for rate in (0.0, 3.0, 10.0):
                other = eqx.tree_at(lambda m: m.bijection.field.rotation_scheduler, model, rotation_schedule(rate))
                row["sampling_rates"][str(rate)] = brief(row["model"]) if rate == args.sample_rotation_rate else brief(
                    backbone_metrics(sample_backbones(other, jax.random.key(2), args.samples, steps=args.sampling_steps),
                                     data.test))
                print(f"  sampled at rotation rate {rate:4.1f}:", json.dumps(
                    {k: round(v, 3) for k, v in row["sampling_rates"][str(rate)].items() if "reference" not in k}))
        if length == min(args.lengths) and args.nll > 0:
            test, seen = points_from_backbones(data.test[: args.nll]), train[: args.nll]
            t0 = time.perf_counter()
            row["heldout_nll_per_residue_nm"] = nll(model, test, batch_size=16) / length
            row["train_nll_per_residue_nm"] = nll(model, seen, batch_size=16) / length
            row["nll_solver"] = model.bijection.solver.description
            row["prior_nll_per_residue_nm"] = float(-np.mean(np.asarray(model.base.log_prob(test)))) / length
            row["nll_s"] = time.perf_counter() - t0
        out["lengths"][str(length)] = row
        summary = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if not isinstance(v, (dict, list))}
        print(f"L={length}", json.dumps(summary))
        for name in ("model", "training_data"):
            print(f"  {name:14s}", json.dumps({k: round(v, 3) for k, v in brief(row[name]).items()}))
    path = Path(__file__).parent / "results" / f"protein_frames{'_' + args.tag if args.tag else ''}.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
