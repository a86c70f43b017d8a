"""``geoflow molecules train | sample | evaluate``: 3-D molecule generation on QM9.

- ``train --data qm9 [--hydrogens implicit|explicit] [--data-path CSV] [--subset N --steps S --out DIR]`` fits a
  :class:`molecules.flow.MoleculeFlow` and writes ``DIR/model.eqx``, ``DIR/run.json``,
  ``DIR/metrics.json`` and ``DIR/train_smiles.txt``;
- ``sample --run DIR -n N --out FILE.sdf`` writes every sampled molecule, sanitized or not (so
  that ``evaluate`` scores the invalid ones too), and ``FILE.npz`` with the raw graphs;
- ``evaluate FILE.sdf [--hydrogens implicit|explicit] [--train-smiles FILE]`` writes ``metrics.json``
  beside the SDF; unreadable records, elements outside the vocabulary and an empty file are
  counted as invalid molecules.

Registered with the ``geoflow`` command (entry-point group ``geoflow.commands``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from geoflow.commands import (TrainingRun, add_training_arguments, choice, existing_run, fit_options, report,
                              training_summary)

NAME = "molecules"

# what each hydrogen mode trains with unless told otherwise: the runs behind RESULTS' rows
# (implicit: 97.7% valid after 20,000 steps, 1.5 CPU hours; explicit: the time weight and the
# bond-length head take molecule stability by EDM's distance rule past 50% in 8,000 steps)
MODE_DEFAULTS = {"implicit": {"steps": 20_000, "time_weight": 0.0, "bond_basis": 0},
                 "explicit": {"steps": 8_000, "time_weight": 1.5, "bond_basis": 24}}

REFINE = 5  # EDM-rule molecule stability 25% -> 33% on explicit-hydrogen QM9 for 5% more sampling time (RESULTS)


def add_parser(sub):
    m = sub.add_parser(NAME, help="3-D molecule generation (QM9): train, sample, evaluate")
    msub = m.add_subparsers(dest="molecules_command", required=True)
    t = msub.add_parser("train", help="train a molecule flow")
    t.add_argument("--data", type=choice(("qm9",), "molecule data set"), default="qm9")
    t.add_argument("--data-path", type=Path, help="a qm9pack-format CSV instead of qm9pack's installed files")
    t.add_argument("--subset", type=int, help="train on this many molecules drawn at random")
    t.add_argument("--hydrogens", type=choice(("explicit", "implicit"), "hydrogen mode"), default="implicit",
                   help="implicit (heavy atoms only, up to 9; the default) or hydrogens as atoms (up to 29)")
    add_training_arguments(t, steps=None, batch_size=64, out=Path("runs/molecules-qm9"))
    t.add_argument("--scalars", type=int, default=64, help="scalar channels of the network")
    t.add_argument("--vectors", type=int, default=16, help="vector channels (each parity) of the network")
    t.add_argument("--layers", type=int, default=4)
    t.add_argument("--time-weight", type=float,
                   help="cap of the position loss's clip(t/(1 − t)) weight (MoleculeFlowMatching.time_weight; 0: uniform; "
                        "default: the hydrogen mode's, MODE_DEFAULTS)")
    t.add_argument("--fake-atoms", type=float, default=0.0,
                   help="FlowMol3's fake atoms: up to this fraction of each molecule's atom count added in training as "
                        "atoms of an extra type that sampling removes (MoleculeFlow.fake_atoms; 0: none)")
    t.add_argument("--bond-basis", type=int,
                   help="Gaussians of the network's bond-length head (VectorNetwork(bond_basis=K); 0: none; default: the "
                        "hydrogen mode's, MODE_DEFAULTS)")
    s = msub.add_parser("sample", help="sample molecules from a trained run into an SDF file")
    s.add_argument("--run", type=Path, required=True)
    s.add_argument("-n", type=int, default=100)
    s.add_argument("--steps", type=int, default=100, help="integration steps for positions and tokens together")
    s.add_argument("--refine", type=int, default=REFINE,
                   help="clean predictions fed back after the last step, tokens fixed (MoleculeSampler.sample)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", type=Path, required=True, help="output .sdf file")
    e = msub.add_parser("evaluate", help="score an SDF file: stability, validity, uniqueness, novelty")
    e.add_argument("sdf", type=Path, help="molecules to score (sample's .sdf; records RDKit cannot read count as invalid)")
    e.add_argument("--train-smiles", type=Path, help="a file of training SMILES (one per line) for novelty")
    e.add_argument("--hydrogens", type=choice(("explicit", "implicit"), "hydrogen mode"), default="implicit",
                   help="score with QM9's vocabulary with hydrogens as atoms or implicit (as the run was trained)")
    return m


def mode_option(args, name: str):
    """The value of ``train``'s option ``name`` (``"steps"``, ``"time_weight"``, ``"bond_basis"``):
    as given, or the hydrogen mode's default (:data:`MODE_DEFAULTS`)."""
    given = getattr(args, name)
    return MODE_DEFAULTS[args.hydrogens][name] if given is None else given


def cmd_train(args) -> dict:
    from geoflow.train import fit

    from .flow import MoleculeFlow
    from .matching import MoleculeFlowMatching
    from .qm9 import load_qm9, qm9_vocabulary

    time_weight, bond_basis = (mode_option(args, name) for name in ("time_weight", "bond_basis"))
    run = TrainingRun.start(args, args.out)
    key_model, key_fit = run.keys(2)
    data = load_qm9(args.data_path, subset=args.subset, seed=args.seed, hydrogens=args.hydrogens)
    _, max_atoms = qm9_vocabulary(args.hydrogens)
    counts = np.bincount(np.asarray(data.graphs.mask).sum(1), minlength=max_atoms + 1)
    model = MoleculeFlow(data.vocabulary, max_atoms, counts, key=key_model, scalars=args.scalars,
                         vectors=args.vectors, layers=args.layers, fake_atoms=args.fake_atoms, bond_basis=bond_basis)
    loss = MoleculeFlowMatching(permute=True, time_weight=time_weight)
    model, history = fit(model, data.graphs, key=key_fit, loss=loss, **{**fit_options(args), "steps": mode_option(args, "steps")})
    (run.out / "train_smiles.txt").write_text("\n".join(data.smiles) + "\n")
    info = {"data": args.data, "hydrogens": args.hydrogens, "time_weight": time_weight, "fake_atoms": args.fake_atoms,
            "bond_basis": bond_basis}
    res = {**info, "molecules": len(data), "perception_failures": data.failures,
           **training_summary(history, args)}
    return run.finish(model, info, res, run.out / "train_smiles.txt")


def cmd_sample(args) -> dict:
    import jax

    from geoflow.serialization import load

    from . import graph_to_mol, unstack_graphs, write_sdf
    from .flow import MoleculeFlow

    model = load(existing_run(args.run) / "model.eqx")
    if not isinstance(model, MoleculeFlow):
        raise ValueError(f"{args.run} holds a {type(model).__name__}, not a molecule model (geoflow molecules train)")
    if args.n < 1:
        raise ValueError(f"-n must be positive, got {args.n}")
    t0 = time.perf_counter()
    graphs = model.sample(jax.random.key(args.seed), args.n, steps=args.steps, refine=args.refine)
    seconds = time.perf_counter() - t0
    built = [graph_to_mol(g, model.vocabulary) for g in unstack_graphs(graphs)]
    write_sdf([mol for mol, _ in built], args.out)
    np.savez(args.out.with_suffix(".npz"), **{f: np.asarray(getattr(graphs, f)) for f in
                                              ("positions", "atom_types", "charges", "bonds", "mask")})
    res = {"n": args.n, "steps": args.steps, "refine": args.refine, "sample_seconds": seconds, "molecules_per_s": args.n / seconds,
           "sanitized": sum(err is None for _, err in built)}
    print(f"wrote {args.out} and {args.out.with_suffix('.npz')} (the raw graphs)")
    print(json.dumps(res))
    return res


def cmd_evaluate(args) -> dict:
    from . import graph_from_rdkit, molecule_metrics, read_sdf
    from .qm9 import qm9_vocabulary

    vocabulary, max_atoms = qm9_vocabulary(args.hydrogens)
    # keep invalid molecules: they are scored, not dropped; an empty file scores zero molecules
    mols, unreadable = read_sdf(args.sdf, sanitize=False, require_any=False)
    train = None
    if args.train_smiles is not None:
        if not args.train_smiles.is_file():
            raise FileNotFoundError(f"training SMILES file {args.train_smiles} does not exist")
        train = [s for s in args.train_smiles.read_text().split() if s]
    graphs = []
    for i, m in enumerate(mols):
        try:
            graphs.append(graph_from_rdkit(m, vocabulary, max_atoms, name=f"{args.sdf} record {i}"))
        except ValueError:  # e.g. an element outside QM9's: an invalid molecule, counted below
            unreadable += 1
    res = molecule_metrics(graphs, vocabulary, train)
    total = len(graphs) + unreadable
    for key in ("validity", "connectivity", "validity_x_uniqueness"):  # over every record, readable or not
        res[key] = res[key] * len(graphs) / max(total, 1)
    res["unreadable_records"], res["molecules"] = unreadable, total
    return report(args.sdf.parent / "metrics.json", res)


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "evaluate": cmd_evaluate}


def run(args) -> dict:
    """Run ``geoflow molecules SUBCOMMAND``."""
    return COMMANDS[args.molecules_command](args)
