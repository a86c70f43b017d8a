"""Protein backbone fragments on SE(3)ᴺ (``molecules.proteins``): for fragments of 16 and 32
residues, sample quality against held-out chains — consecutive CA–CA distances, clashes, radius
of gyration, secondary-structure content (biotite P-SEA), Ramachandran Jensen–Shannon divergence
— beside the same metrics of the training fragments themselves (what a perfect model would
score), of the same samples after the steric relaxations (``relax_backbones``, turning torsions and
moving CA positions) and of samples
drawn with steric guidance (``steric_guided``, a clean-frame model only), and the
exact held-out NLL per residue for the shorter length (translations in nm, against the prior's).
No peer library runs here (FrameFlow is a PyTorch code base with a structure-prediction stack
behind it); the CPU budget is part of the result.

Usage: python benchmarks/protein_frames.py [--quick] [--lengths L …] [--steps S] [--prediction frames|velocity]
       [--ema DECAY] [--auxiliary-weight W] [--distance-pairs true|either] [--bond-weight W] [--clash-weight W]
       [--denoise-from S] [--curve K] [--samples K] [--draws K] [--nll K] [--save DIR] [--tag NAME]
       [--devices N]   (training data-parallel over the CPU split into N devices)
       [--checkpoint DIR [--resume]]   (a long run: fit's checkpoint and the curve per length, continued by --resume)
       [--load DIR]   (models written by --save, sampled and scored without training)
       [--init DIR]   (fine-tuning: train a model written by --save or --checkpoint on this run's schedule)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import diffrax
import jax
import numpy as np

import geoflow as gf
from geoflow.continuous import ODESolver
from geoflow.metrics import nll
from geoflow.serialization import classes_in, load, save
from molecules.proteins import (FrameFlowMatching, backbone_metrics, frameflow, load_fragments,
                                points_from_backbones, relax_backbones, sample_backbones)
from molecules.proteins.matching import DISTANCE_PAIRS
from molecules.proteins.model import PREDICTIONS, rotation_schedule, sampled_at_rate, steric_guided
from molecules.proteins.relax import relaxation_moves

from _curve import PersistedCurve
from _results import RESULTS, write_results


def brief(metrics: dict) -> dict:
    """The figures the targets are stated in, from :func:`backbone_metrics` with a reference."""
    m, r = metrics["samples"], metrics["reference"]
    return {"ca_ca_within_0.1": m["ca_ca_within_0.1"], "ca_ca_std": m["ca_ca_std"],
            "clash_free": 1 - m["fragments_with_clash"], "helix": m["ss_helix"], "strand": m["ss_strand"],
            "helix_reference": r["ss_helix"], "strand_reference": r["ss_strand"],
            "ramachandran_js": metrics["ramachandran_js"], "rg": m["radius_of_gyration_mean"],
            "rg_reference": r["radius_of_gyration_mean"], "rg_reference_std": r["radius_of_gyration_std"]}


def initial_model(folder: Path, length: int, like):
    """The trained model a fine-tuning starts from (see ``--init``), its network checked against
    ``like``'s (this run's network options) by the fit that trains it."""
    saved, checkpoint = folder / f"model_L{length}.eqx", folder / f"model_L{length}_fit.eqx"
    if saved.is_file():
        return load(saved, trust=classes_in(like))
    if checkpoint.is_file():
        return load(checkpoint, trust=classes_in(like))["model"]
    raise SystemExit(f"--init {folder}: neither {saved.name} nor {checkpoint.name} is there")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--lengths", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ema", type=float, default=0.0,
                    help="decay of the parameter average that is evaluated, selected and sampled (0: none)")
    ap.add_argument("--width", type=int, default=96)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--heads", type=int, default=4, help="attention heads of each layer")
    ap.add_argument("--num-points", type=int, default=4, help="query, key and value points of each head")
    ap.add_argument("--pair", type=int, default=64, help="pair-feature channels of the frame network")
    ap.add_argument("--self-conditioning", action="store_true",
                    help="the network reads its own first prediction at each step (two passes a field evaluation)")
    ap.add_argument("--prediction", choices=PREDICTIONS, default="frames",
                    help="the network predicts the clean frames (FrameFlow) or the velocity")
    ap.add_argument("--train-rotation-rate", type=float, default=0.0,
                    help="rotations' training path: exponential at this rate, 0 linear")
    ap.add_argument("--sample-rotation-rate", type=float, default=3.0,
                    help="with --prediction frames, rotations' sampling schedule: exponential at this rate, 0 linear")
    ap.add_argument("--auxiliary-weight", type=float, default=0.0,
                    help="FrameFlow's backbone-atom and distance losses for t > 0.75 (0: off)")
    ap.add_argument("--distance-pairs", choices=DISTANCE_PAIRS, default="true",
                    help="the auxiliary distance loss's pairs: within 6 Å in the data (FrameFlow's) or in either structure")
    ap.add_argument("--bond-weight", type=float, default=0.0,
                    help="weight of the late-time loss on the four distances across each peptide bond (0: off)")
    ap.add_argument("--clash-weight", type=float, default=0.0,
                    help="weight of the late-time penalty on predicted non-local CA pairs closer than 3.5 Å")
    ap.add_argument("--compare-rates", type=float, nargs="+", default=[0.0, 3.0, 10.0],
                    help="rotation rates the trained model is also sampled at (0: linear)")
    ap.add_argument("--draws", type=int, default=1,
                    help="independent draws of --samples each that the rows of --compare-rates average (mean and std)")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--sampling-steps", type=int, default=100)
    ap.add_argument("--denoise-from", type=float, default=0.95,
                    help="take the clean-frame prediction at this t after the Euler steps (1: integrate to t = 1)")
    ap.add_argument("--save", type=Path, help="directory for the trained models (model_L<length>.eqx)")
    ap.add_argument("--load", type=Path,
                    help="directory of a trained model, as for --init: sample and score it (at --sample-rotation-rate), "
                         "no training")
    ap.add_argument("--init", type=Path,
                    help="directory of a trained model to train on (fine-tuning, with a fresh optimiser and this run's "
                         "schedule): model_L<length>.eqx written by --save, else the last model of the fit "
                         "checkpoint model_L<length>_fit.eqx written by --checkpoint")
    ap.add_argument("--curve", type=int, default=5, help="metric evaluations during training (the last at the end)")
    ap.add_argument("--nll", type=int, default=16,
                    help="held-out and training fragments for the exact NLL (shortest length; 0: none)")
    ap.add_argument("--nll-tolerance", type=float, default=1e-3,
                    help="Tsit5's rtol = atol for the NLL (its error is measured against a ten times tighter one)")
    ap.add_argument("--tag", default="", help="suffix of the results file (a variant keeps the default run's)")
    ap.add_argument("--checkpoint", type=Path, help="folder for each length's checkpoint and curve (a long run)")
    ap.add_argument("--resume", action="store_true", help="continue the runs checkpointed in --checkpoint")
    ap.add_argument("--devices", type=int, default=1,
                    help="train over the CPU split into this many devices (the steps are those of one device)")
    args = ap.parse_args()
    if args.draws < 1:
        ap.error(f"--draws must be at least 1, got {args.draws}")
    if args.load is not None and (args.checkpoint is not None or args.save is not None):
        ap.error("--load samples saved models without training: it takes neither --checkpoint nor --save")
    if args.init is not None and (args.load is not None or args.resume):
        ap.error("--init starts a training from a trained model: it takes neither --load nor --resume")
    if args.devices > 1:
        from geoflow.train_devices import split_cpu

        split_cpu(args.devices)  # before JAX's first operation
    if args.quick:
        args.lengths, args.steps, args.samples, args.sampling_steps, args.nll, args.curve = [16], 40, 16, 20, 0, 2
        args.width, args.layers = 32, 1
    out = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "lengths": {}}
    if args.checkpoint is not None:
        args.checkpoint.mkdir(parents=True, exist_ok=True)
    for length in args.lengths:
        data = load_fragments(length, stride=4)
        train = points_from_backbones(data.train)
        model = frameflow(jax.random.key(0), length, width=args.width, layers=args.layers, pair=args.pair,
                          heads=args.heads, num_points=args.num_points, prediction=args.prediction,
                          self_conditioning=args.self_conditioning, rotation_scheduler=rotation_schedule(args.sample_rotation_rate))
        loss = FrameFlowMatching(rotation_scheduler=rotation_schedule(args.train_rotation_rate), ot=True,
                                 auxiliary_weight=args.auxiliary_weight, distance_pairs=args.distance_pairs,
                                 bond_weight=args.bond_weight, clash_weight=args.clash_weight)
        if args.init is not None:
            model = initial_model(args.init, length, model)
        every = max(args.steps // args.curve, 1)
        curve = PersistedCurve(None if args.checkpoint is None else args.checkpoint / f"L{length}_curve.json",
                               args.resume)

        def draw(model, key, denoise_from=args.denoise_from):
            return sample_backbones(model, key, args.samples, steps=args.sampling_steps,
                                    denoise_from=None if denoise_from >= 1 or args.prediction != "frames" else denoise_from)

        def scored(model):
            """:func:`brief` of ``--draws`` draws of the model (keys 2, 3, …): their mean, and
            with more than one draw each figure's standard deviation over them."""
            rows = [brief(backbone_metrics(draw(model, jax.random.key(2 + k)), data.test))
                    for k in range(args.draws)]
            mean = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}
            if args.draws == 1:
                return mean
            return {**mean, "draws": args.draws, "std": {key: float(np.std([r[key] for r in rows])) for key in rows[0]}}

        def evaluate(step, model, history):  # fit's training clock leaves the callback out
            if (step % every and step < args.steps) or curve.recorded(step):
                return False
            metrics = brief(backbone_metrics(draw(model, jax.random.key(2)), data.test))
            point = curve.add(step, history, **metrics)
            print(f"  L={length} step {step:6d} cpu {point['train_cpu_s']:7.0f} s  CA-CA within 0.1 Å "
                  f"{point['ca_ca_within_0.1']:.2f}  clash-free {point['clash_free']:.2f}  helix {point['helix']:.2f} "
                  f"strand {point['strand']:.2f}  Rama JS {point['ramachandran_js']:.3f}  Rg {point['rg']:.1f}",
                  flush=True)
            return False

        if args.load is None:
            model, hist = gf.fit(model, train, key=jax.random.key(1), loss=loss, steps=args.steps,
                                 batch_size=args.batch_size, learning_rate=args.lr, ema_decay=args.ema or None,
                                 eval_every=min(every, 500), progress=False, callback=evaluate, resume=args.resume,
                                 devices=None if args.devices == 1 else args.devices,
                                 checkpoint=None if args.checkpoint is None else args.checkpoint / f"model_L{length}_fit.eqx")
        else:  # the saved model with this run's sampling schedule
            model, hist = sampled_at_rate(initial_model(args.load, length, model), args.sample_rotation_rate), None
        if args.save:
            args.save.mkdir(parents=True, exist_ok=True)
            save(args.save / f"model_L{length}.eqx", model)
        samples = draw(model, jax.random.key(2))
        t0 = time.perf_counter()  # timed on a second call of the same shape: compiled
        draw(model, jax.random.key(3))
        sample_s = time.perf_counter() - t0
        row = {"train_fragments": len(data.train), "test_fragments": len(data.test),
               "sample_fragments_per_s": args.samples / sample_s, "model": backbone_metrics(samples, data.test),
               "training_data": backbone_metrics(data.train, data.test)}
        if hist is not None:
            row.update(fit_s=hist.wall_time, train_cpu_s=hist.cpu_time,
                       train_fragments_per_s=hist.steps_per_second * args.batch_size,
                       final_train_loss=hist.train_loss[-1], curve=curve.points)
        for moves, key in (("torsions", "relaxed"), ("positions", "relaxed_positions")):  # the same samples relaxed
            relaxed = relax_backbones(samples, moves=moves)
            row[key] = {**brief(backbone_metrics(relaxed, data.test)), **relaxation_moves(samples, relaxed)}
            print(f"  relaxed ({moves}):", json.dumps({k: round(v, 3) for k, v in row[key].items() if "reference" not in k}))
        if args.prediction == "frames":  # the same model with the clashes of its predictions pushed apart while it samples
            for moves, key in (("torsions", "steric_guidance"), ("positions", "steric_guidance_positions")):
                row[key] = scored(steric_guided(model, moves=moves))
                print(f"  steric guidance ({moves}):", json.dumps({k: round(v, 3) for k, v in row[key].items()
                                                                   if "reference" not in k and isinstance(v, float)}))
            row["sampling_rates"] = {}  # the same model sampled with other rotation schedules
            for rate in args.compare_rates:
                other = sampled_at_rate(model, rate)
                row["sampling_rates"][str(rate)] = (brief(row["model"]) if rate == args.sample_rotation_rate
                                                    and args.draws == 1 else scored(other))
                print(f"  sampled at rotation rate {rate:4.1f}:", json.dumps(
                    {k: round(v, 3) for k, v in row["sampling_rates"][str(rate)].items()
                     if "reference" not in k and isinstance(v, float)}))
            row["denoise_from"] = {}  # the default rate, the Euler steps stopped at s and the clean frames taken there
            for s in (0.9, 0.95, 1.0):
                row["denoise_from"][str(s)] = brief(row["model"]) if s == args.denoise_from else brief(
                    backbone_metrics(draw(model, jax.random.key(2), s), data.test))
                print(f"  denoised from t = {s:4.2f}:", json.dumps(
                    {k: round(v, 3) for k, v in row["denoise_from"][str(s)].items() if "reference" not in k}))
        if length == min(args.lengths) and args.nll > 0:
            test, seen = points_from_backbones(data.test[: args.nll]), train[: args.nll]
            solver = ODESolver(diffrax.Tsit5(), rtol=args.nll_tolerance, atol=args.nll_tolerance)
            t0 = time.perf_counter()
            row["heldout_nll_per_residue_nm"] = nll(model, test, batch_size=16, solver=solver) / length
            row["train_nll_per_residue_nm"] = nll(model, seen, batch_size=16, solver=solver) / length
            row["nll_solver"] = solver.description
            row["prior_nll_per_residue_nm"] = float(-np.mean(np.asarray(model.base.log_prob(test)))) / length
            row["nll_s"] = time.perf_counter() - t0
            # the solver's accuracy: the same four held-out fragments at a tolerance ten times tighter
            finer = ODESolver(diffrax.Tsit5(), rtol=args.nll_tolerance / 10, atol=args.nll_tolerance / 10)
            row["nll_solver_error_per_residue"] = abs(nll(model, test[:4], solver=solver)
                                                      - nll(model, test[:4], solver=finer)) / length
        out["lengths"][str(length)] = row
        summary = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if not isinstance(v, (dict, list))}
        print(f"L={length}", json.dumps(summary))
        for name in ("model", "training_data"):
            print(f"  {name:14s}", json.dumps({k: round(v, 3) for k, v in brief(row[name]).items()}))
    write_results(RESULTS / f"protein_frames{'_' + args.tag if args.tag else ''}.json", out, quick=args.quick)


if __name__ == "__main__":
    main()
