"""The two molecule networks side by side on QM9 with explicit hydrogens (29 atom slots): the
e3nn tensor-product network (``network="e3nn"``) and the scalar/vector-channel network
(``network="vector"``, the default), each in ``MoleculeFlow`` at its default width.

Measured in one process: training molecules/s (jitted ``fit`` steps, batch 32, compilation not
counted), sampled molecules/s at 50 steps, and the validation loss after the same CPU time of
training (``--seconds`` for each network, constant learning rate 1e-3), so that speed is not
bought with a worse loss.

Usage: python benchmarks/molecule_networks.py [--quick] [--seconds S]
"""

from __future__ import annotations

import argparse
import platform
import time
from datetime import date

import equinox as eqx
import jax
import numpy as np

import geoflow as gf
from molecules import load_qm9
from molecules.flow import MoleculeFlow
from molecules.matching import MoleculeFlowMatching
from molecules.qm9 import QM9_MAX_ATOMS
from _results import RESULTS, write_results

BATCH = 32
CHUNK = 8


def measure(network: str, data, seconds: float, sample_n: int) -> dict:
    """One training run stopped after ``seconds`` of stepping (timed from the end of the first
    chunk, so compilation is not counted), then sampling."""
    counts = np.bincount(np.asarray(data.graphs.mask).sum(1), minlength=QM9_MAX_ATOMS + 1)
    model = MoleculeFlow(data.vocabulary, QM9_MAX_ATOMS, counts, key=jax.random.key(0), network=network)
    clock = {}

    def stop_after_budget(step, model, history):
        clock.setdefault("start", (time.perf_counter(), step))
        return time.perf_counter() - clock["start"][0] > seconds

    trained, hist = gf.fit(model, data.graphs, key=jax.random.key(1), loss=MoleculeFlowMatching(), steps=1_000_000,
                           batch_size=BATCH, eval_every=CHUNK, val_fraction=0.01, progress=False,
                           callback=stop_after_budget, schedule="constant", warmup_steps=CHUNK)
    start, first_step = clock["start"]
    steps_timed = hist.steps[-1] - first_step
    train_rate = steps_timed * BATCH / (time.perf_counter() - start)
    trained.sample(jax.random.key(0), sample_n, steps=50)  # compile (at the same batch size)
    t0 = time.perf_counter()
    jax.block_until_ready(trained.sample(jax.random.key(1), sample_n, steps=50).positions)
    sample_rate = sample_n / (time.perf_counter() - t0)
    return {"parameters": sum(x.size for x in jax.tree.leaves(eqx.filter(model, eqx.is_array))),
            "train_molecules_per_s": train_rate, "steps": int(hist.steps[-1]), "val_loss": float(hist.val_loss[-1]),
            "sample_molecules_per_s_50_steps": sample_rate}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seconds", type=float, default=300.0, help="training CPU time given to each network")
    ap.add_argument("--subset", type=int, default=5000)
    ap.add_argument("--samples", type=int, default=64)
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.subset, args.samples = 10.0, 500, 16
    data = load_qm9(subset=args.subset, seed=0)
    rows = {net: measure(net, data, args.seconds, args.samples) for net in ("e3nn", "vector")}
    e3, vec = rows["e3nn"], rows["vector"]
    ratios = {"train_speed": vec["train_molecules_per_s"] / e3["train_molecules_per_s"],
              "sample_speed": vec["sample_molecules_per_s_50_steps"] / e3["sample_molecules_per_s_50_steps"]}
    for net, r in rows.items():
        print(f"{net:7s} train {r['train_molecules_per_s']:8.1f} mol/s  sample {r['sample_molecules_per_s_50_steps']:7.1f} "
              f"mol/s  val loss after {args.seconds:.0f} s ({r['steps']} steps): {r['val_loss']:.3f}  "
          f"({r['parameters']} parameters)")
    print(f"vector / e3nn: training {ratios['train_speed']:.1f}x, sampling {ratios['sample_speed']:.1f}x")
    out = {"date": date.today().isoformat(), "machine": f"{platform.machine()}, {jax.device_count()} CPU device(s)",
           "args": vars(args), "networks": rows, "ratios": ratios}
    write_results(RESULTS / "molecule_networks.json", out, quick=args.quick)


if __name__ == "__main__":
    main()
