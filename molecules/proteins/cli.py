"""``geoflow proteins train | sample | evaluate``: SE(3)ᴺ frame flow matching on backbone fragments.

- ``train --length L [--data-path FILE|DIR --steps S --out DIR --nll K]`` fits
  :func:`molecules.proteins.frameflow` to fragments of ``L`` residues (default: the embedded 40
  chains; an ``.npz`` of that format, a PDB file or a folder of them) and writes
  ``DIR/model.eqx``, ``DIR/run.json`` and ``DIR/metrics.json`` (with the exact held-out NLL per
  residue on ``K`` fragments when asked);
- ``sample --run DIR -n N [--denoise-from S] --out OUT/`` writes ``OUT/sample_000.pdb`` … and ``OUT/backbones.npy``;
- ``evaluate OUT/ [--data-path …]`` scores every PDB in ``OUT/`` against fragments of the same
  length — every chain of ``--data-path``, or the embedded set's held-out chains — and writes
  ``OUT/metrics.json`` with the reference chains and fragment count under ``reference_set``.

Registered with the ``geoflow`` command (entry-point group ``geoflow.commands``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from geoflow.commands import (TrainingRun, add_training_arguments, existing_run, fit_options, report,
                              training_summary)

NAME = "proteins"

DENOISE_FROM = 0.95  # where a clean-frame model's prediction is taken (molecules.proteins.sample_backbones)


def add_parser(sub):
    p = sub.add_parser(NAME, help="protein backbone fragments on SE(3)^N: train, sample, evaluate")
    psub = p.add_subparsers(dest="proteins_command", required=True)
    t = psub.add_parser("train", help="train a frame flow on backbone fragments")
    t.add_argument("--length", type=int, required=True, help="residues per fragment")
    t.add_argument("--data-path", type=Path, help="backbones .npz (embedded format), a PDB file or a folder of them")
    t.add_argument("--stride", type=int, default=4, help="residues between fragment starts")
    # the defaults are the run behind RESULTS' L = 16 row that meets the targets: 30,000 steps of the
    # self-conditioned light network with rotations trained on Exponential(3) and sampled on
    # Exponential(5), about 30 minutes on one core
    add_training_arguments(t, steps=30_000, batch_size=64, out=Path("runs/proteins"))
    t.add_argument("--width", type=int, default=64)
    t.add_argument("--layers", type=int, default=2)
    t.add_argument("--pair", type=int, default=16, help="pair-feature channels of the frame network")
    t.add_argument("--self-conditioning", action=argparse.BooleanOptionalAction, default=None,
                   help="the network reads its own first prediction (two passes a field evaluation); "
                        "default: on for --prediction frames, off for velocity, which it does not apply to")
    t.add_argument("--prediction", choices=("frames", "velocity"), default="frames",
                   help="the network predicts the clean frames (FrameFlow) or the velocity")
    t.add_argument("--rotation-rate", type=float, default=3.0,
                   help="rotations' training path: exponential at this rate; 0: linear (FrameFlow)")
    t.add_argument("--sample-rotation-rate", type=float, default=5.0,
                   help="with --prediction frames, rotations' sampling schedule: exponential at this rate; "
                        "faster than the training path sharpens the samples towards the commonest structure "
                        "(more helix), the training rate itself samples the model as trained; 0: linear")
    t.add_argument("--ot", action=argparse.BooleanOptionalAction, default=True,
                   help="minibatch OT pairing of prior and data translations (--no-ot: random pairs)")
    t.add_argument("--auxiliary-weight", type=float, default=1.0,
                   help="weight of FrameFlow's backbone-atom and distance losses for t > 0.75 (0: off)")
    t.add_argument("--bond-weight", type=float, default=0.0,
                   help="weight of a late-time loss on the four distances across each peptide bond (0: off)")
    t.add_argument("--nll", type=int, default=0, help="report the exact held-out NLL per residue on this many fragments")
    s = psub.add_parser("sample", help="sample backbones into PDB files")
    s.add_argument("--run", type=Path, required=True)
    s.add_argument("-n", type=int, default=100)
    s.add_argument("--steps", type=int, default=100, help="geodesic Euler steps of the ODE")
    s.add_argument("--denoise-from", type=float, default=None,
                   help="stop the steps at this t and take the predicted clean frames there (a clean-frame "
                        f"model; default {DENOISE_FROM}); 1: integrate to t = 1 (the only choice for a velocity model)")
    s.add_argument("--rotation-rate", type=float, default=None,
                   help="a clean-frame model's rotation schedule for this draw: exponential at this rate (0: "
                        "linear); default: the --sample-rotation-rate it was trained with. Faster gives more helix; "
                        "RESULTS gives the trade at L = 16 and 32")
    s.add_argument("--steric-guidance", action=argparse.BooleanOptionalAction, default=None,
                   help="push the clashes of the predicted clean frames apart at every step from t = 0.5 "
                        "(molecules.proteins.StericGuidance); default: on for a clean-frame model, which it "
                        "takes to RESULTS' clash-free fraction, off for a velocity model, which it does not apply to")
    s.add_argument("--relax", nargs="?", const="torsions", choices=("torsions", "positions"), default=None,
                   help="push clashing CA atoms apart by turning φ and ψ (torsions, the default: bond lengths, "
                        "angles and the φ/ψ distribution kept) or by moving CA atoms under a restraint on their "
                        "next two neighbours' distances (positions: bonds bend) (molecules.proteins.relax_backbones; "
                        "the CA moves are recorded)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", type=Path, required=True, help="output folder")
    e = psub.add_parser("evaluate", help="score a folder of backbone PDB files against held-out data")
    e.add_argument("folder", type=Path)
    e.add_argument("--data-path", type=Path, help="reference backbones, all of them (.npz of the embedded format, a PDB "
                   "file or a folder of them); default: the embedded set's held-out chains")
    return p


def _loss(args):
    from . import FrameFlowMatching
    from .model import rotation_schedule

    return FrameFlowMatching(rotation_scheduler=rotation_schedule(args.rotation_rate), ot=args.ot,
                             auxiliary_weight=args.auxiliary_weight, bond_weight=args.bond_weight)


def heldout_nll_per_residue(model, test_points, length: int) -> float:
    """Mean exact NLL per residue (nats; translations in nm) of held-out fragments."""
    from geoflow.metrics import nll

    return nll(model, test_points, batch_size=16) / length


def cmd_train(args) -> dict:
    from geoflow.train import fit

    from . import frameflow, load_fragments, points_from_backbones
    from .model import rotation_schedule

    run = TrainingRun.start(args, args.out)
    key_model, key_fit = run.keys(2)
    data = load_fragments(args.length, args.data_path, args.stride)
    points = points_from_backbones(data.train)
    self_conditioning = args.prediction == "frames" if args.self_conditioning is None else args.self_conditioning
    model = frameflow(key_model, args.length, width=args.width, layers=args.layers, pair=args.pair,
                      self_conditioning=self_conditioning, prediction=args.prediction,
                      rotation_scheduler=rotation_schedule(args.sample_rotation_rate))
    model, history = fit(model, points, key=key_fit, loss=_loss(args), **fit_options(args))
    info = {"length": args.length, "prediction": args.prediction, "self_conditioning": self_conditioning}
    res = {**info, "train_fragments": len(data.train), "test_fragments": len(data.test),
           "test_chains": data.test_chains, **training_summary(history, args)}
    if args.nll > 0 and len(data.test):
        test = points_from_backbones(data.test[: args.nll])
        res["heldout_nll_per_residue_nm"] = heldout_nll_per_residue(model, test, args.length)
        res["nll_solver"] = model.bijection.solver.description
    return run.finish(model, info, res)


def cmd_sample(args) -> dict:
    import jax

    from geoflow.continuous import ODEFlow
    from geoflow.continuous.paths import Exponential
    from geoflow.serialization import load

    from . import relax_backbones, sample_backbones, steric_guided, write_pdb
    from .model import FrameField, sampled_at_rate
    from .relax import relaxation_moves

    model = load(existing_run(args.run) / "model.eqx")
    if not (isinstance(getattr(model, "bijection", None), ODEFlow) and isinstance(model.bijection.field, FrameField)):
        raise ValueError(f"{args.run} does not hold a protein frame flow (geoflow proteins train)")
    if args.n < 1 or args.steps < 1:
        raise ValueError(f"-n and --steps must be positive, got {args.n} and {args.steps}")
    clean_frames = model.bijection.field.prediction == "frames"
    denoise_from = (DENOISE_FROM if clean_frames else 1.0) if args.denoise_from is None else args.denoise_from
    if not 0.0 < denoise_from <= 1.0:
        raise ValueError(f"--denoise-from must lie in (0, 1], got {denoise_from}")
    if denoise_from < 1.0 and not clean_frames:
        raise ValueError(f"--denoise-from {denoise_from} needs a clean-frame model; {args.run} predicts velocities")
    if args.rotation_rate is not None:
        if not clean_frames:
            raise ValueError(f"--rotation-rate sets a clean-frame model's sampling schedule; {args.run} predicts velocities")
        model = sampled_at_rate(model, args.rotation_rate)
    scheduler = model.bijection.field.rotation_scheduler
    rotation_rate = scheduler.rate if isinstance(scheduler, Exponential) else 0.0
    guidance = clean_frames if args.steric_guidance is None else args.steric_guidance
    if guidance:
        if not clean_frames:
            raise ValueError(f"--steric-guidance moves predicted clean frames; {args.run} predicts velocities")
        model = steric_guided(model)
    t0 = time.perf_counter()
    backbones = sample_backbones(model, jax.random.key(args.seed), args.n, steps=args.steps,
                                 denoise_from=denoise_from if denoise_from < 1.0 else None)
    seconds = time.perf_counter() - t0
    relaxation = None
    if args.relax:
        relaxed = relax_backbones(backbones, moves=args.relax)
        relaxation = {"moves": args.relax, **relaxation_moves(backbones, relaxed)}
        backbones = relaxed
    args.out.mkdir(parents=True, exist_ok=True)
    for i, b in enumerate(backbones):
        write_pdb(args.out / f"sample_{i:03d}.pdb", b)
    np.save(args.out / "backbones.npy", backbones)
    res = {"n": args.n, "steps": args.steps, "denoise_from": denoise_from, "length": int(backbones.shape[1]),
           "rotation_rate": rotation_rate if clean_frames else None, "steric_guidance": guidance,
           "sample_seconds": seconds, "relaxation": relaxation}
    print(f"wrote {args.n} PDB files and backbones.npy to {args.out}")
    print(json.dumps(res))
    return res


def cmd_evaluate(args) -> dict:
    from . import backbone_metrics, cut_fragments, load_chains, load_fragments, read_pdb

    if not args.folder.is_dir():
        raise FileNotFoundError(f"{args.folder} is not a folder of PDB files (geoflow proteins sample --out)")
    files = sorted(args.folder.glob("*.pdb"))
    if not files:
        raise FileNotFoundError(f"{args.folder} holds no .pdb files")
    backbones = [c["backbone"] for f in files for c in read_pdb(f)]
    lengths = {len(b) for b in backbones}
    if len(lengths) != 1:
        raise ValueError(f"the PDB files hold fragments of different lengths {sorted(lengths)}; evaluate one length at a time")
    length = lengths.pop()
    if args.data_path is None:  # the embedded set: the chains training held out
        held_out = load_fragments(length)
        reference, names = held_out.test, held_out.test_chains
        source = "embedded backbones.npz, held-out chains (every 5th)"
    else:  # the user's reference: every chain of it
        chains = load_chains(args.data_path)
        reference, names, source = cut_fragments(chains, length), [c["name"] for c in chains], str(args.data_path)
    res = backbone_metrics(np.asarray(backbones), reference)
    res["length"] = length
    res["reference_set"] = {"source": source, "chains": names, "fragments": int(len(reference))}
    return report(args.folder / "metrics.json", res)


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "evaluate": cmd_evaluate}


def run(args) -> dict:
    """Run ``geoflow proteins SUBCOMMAND``."""
    return COMMANDS[args.proteins_command](args)
