"""The throughput figures that matter, in one prepared run for an accelerator (or this CPU).

For each workload — classic flows (`fit` and `log_prob`), I-CFM and OT-CFM training, Riemannian
flow matching on S², discrete flow matching, the molecule network, the protein frame network and
Glow on images — the script times `geoflow.fit` after compilation (`_timing.fit_rate`) and
records examples per second, together with the device kind and, where the backend reports it,
the peak device memory. It also counts host callbacks executed while the timed steps run: a
training loop that falls back to the host shows up as callbacks per step. A loss that declares
host work (`HostPrepared`: OT-CFM's assignment, the molecule loss's atom matching) has it solved
ahead of each chunk, outside the scan; every other workload must show none. Figures go to `benchmarks/results/gpu_suite.json` (`--quick`: smaller models and data,
under 2 minutes on a CPU, written to `gpu_suite_quick.json`).

    python benchmarks/gpu_suite.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import equinox as eqx
import jax
import numpy as np

from _timing import fit_rate

CALLBACKS = Counter()  # host callbacks executed, by the callback's name


def _count_host_callbacks() -> None:
    """Wrap ``jax.pure_callback`` and ``jax.debug.callback`` so each execution is counted; must
    run before anything is traced."""
    def counting(original):
        def wrapped(callback, *args, **kwargs):
            def counted(*a, **k):
                CALLBACKS[getattr(callback, "__name__", "callback")] += 1
                return callback(*a, **k)
            return original(counted, *args, **kwargs)
        return wrapped

    jax.pure_callback = counting(jax.pure_callback)
    jax.debug.callback = counting(jax.debug.callback)


def _timed_fit(name, model, data, loss, steps, batch):
    import optax

    from geoflow.train import HostPrepared

    host_work_expected = isinstance(loss, HostPrepared)  # solved ahead of each chunk, outside its scan
    before = sum(CALLBACKS.values())
    # fit_rate runs twice (the first compiles); callbacks are counted over both runs' steps
    rate, *_ = fit_rate(model, data, loss, optax.adam(1e-3), steps, batch)
    callbacks = sum(CALLBACKS.values()) - before
    row = {"workload": name, "steps_per_s": rate, "examples_per_s": rate * batch, "batch": batch,
           "host_callbacks_per_step": callbacks / (2 * steps), "host_work_expected": host_work_expected}
    print(f"{name:28s} {rate:9.1f} steps/s  {rate * batch:11.0f} examples/s  "
          f"host callbacks/step {row['host_callbacks_per_step']:.2f}", flush=True)
    return row


def workloads(quick: bool, steps: int | None = None, qm9_path: Path | None = None):
    """``(name, thunk)`` pairs; each thunk returns a row. ``steps`` overrides the timed steps per
    workload (some take a fraction of them), ``qm9_path`` a qm9pack-format CSV instead of qm9pack."""
    import geoflow as gf
    from geoflow.continuous import cfm, flow_matching
    from geoflow.datasets import load_images, sample_toy

    steps = steps or (20 if quick else 500)
    moons = sample_toy("moons", 20_000, seed=0)

    def classic():
        model = gf.nsf(jax.random.key(0), 2, layers=4 if quick else 8, width=32 if quick else 64)
        row = _timed_fit("NSF (coupling spline)", model, moons, None, steps, 256)
        points = moons[: 10_000 if quick else 100_000]
        log_prob = eqx.filter_jit(lambda m, x: m.log_prob(x))
        jax.block_until_ready(log_prob(model, points))
        t0 = time.perf_counter()
        jax.block_until_ready(log_prob(model, points))
        row["log_prob_points_per_s"] = len(points) / (time.perf_counter() - t0)
        return row

    def icfm():
        return _timed_fit("I-CFM", flow_matching(jax.random.key(0), 2, width=64), moons, cfm("i-cfm"), steps, 512)

    def otcfm():
        return _timed_fit("OT-CFM", flow_matching(jax.random.key(0), 2, width=64), moons, cfm("ot-cfm"),
                          max(steps // 10, 10), 512)

    def rfm_sphere():
        from manifolds import GeodesicFlowMatching, Sphere, rfm
        from manifolds.datasets import load_earth

        data = load_earth("volcano").train
        model = rfm(jax.random.key(0), Sphere(2), width=64 if quick else 256)
        return _timed_fit("RFM on S² (volcano)", model, data, GeodesicFlowMatching(), steps, 512)

    def discrete_fm():
        from discrete import DiscreteFlowMatching, dfm
        from discrete.datasets import checkerboard_tokens

        model = dfm(jax.random.key(0), 2, 128, width=64 if quick else 256, depth=2 if quick else 4)
        return _timed_fit("DFM (checkerboard 128²)", model, checkerboard_tokens(20_000), DiscreteFlowMatching(),
                          steps, 1024)

    def molecule_network():
        from molecules.flow import MoleculeFlow
        from molecules.matching import MoleculeFlowMatching
        from molecules.qm9 import load_qm9, qm9_vocabulary

        sample = Path(__file__).resolve().parents[1] / "tests" / "qm9_sample.csv"
        path = qm9_path or (sample if quick else None)
        data = load_qm9(path, subset=400 if quick else 20_000, hydrogens="explicit")
        _, max_atoms = qm9_vocabulary("explicit")
        counts = np.bincount(np.asarray(data.graphs.mask).sum(1), minlength=max_atoms + 1)
        model = MoleculeFlow(data.vocabulary, max_atoms, counts, key=jax.random.key(0),
                             **({"scalars": 16, "vectors": 4, "layers": 2} if quick else {}))
        return _timed_fit("molecule network (QM9, H)", model, data.graphs, MoleculeFlowMatching(permute=True),
                          max(steps // 4, 5), 16 if quick else 64)

    def frame_network():
        from molecules.proteins import FrameFlowMatching, frameflow, load_fragments, points_from_backbones

        points = points_from_backbones(load_fragments(16).train)
        model = frameflow(jax.random.key(0), 16, width=32 if quick else 96, layers=1 if quick else 3)
        return _timed_fit("frame network (L = 16)", model, points, FrameFlowMatching(auxiliary_weight=1.0),
                          max(steps // 4, 5), 64)

    def glow():
        from geoflow.dequantization import UniformDequantization
        from geoflow.image_flows import glow as make_glow

        data = load_images("digits" if quick else "mnist")
        model = make_glow(jax.random.key(0), data.shape, levels=2, depth=1 if quick else 8, width=8 if quick else 32,
                          pixel_levels=data.levels)
        return _timed_fit(f"Glow ({data.name})", model, data.train, UniformDequantization(), max(steps // 4, 5), 64)

    return [("classic", classic), ("i-cfm", icfm), ("ot-cfm", otcfm), ("rfm", rfm_sphere), ("dfm", discrete_fm),
            ("molecules", molecule_network), ("proteins", frame_network), ("glow", glow)]


def device_summary() -> dict:
    device = jax.devices()[0]
    stats = device.memory_stats() or {}  # None on the CPU backend
    return {"platform": device.platform, "device_kind": device.device_kind, "devices": len(jax.devices()),
            "peak_bytes_in_use": stats.get("peak_bytes_in_use"), "bytes_limit": stats.get("bytes_limit"),
            "jax": jax.__version__}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small models and data (a CPU check, under 2 minutes)")
    ap.add_argument("--only", nargs="*", help="run only these workloads (classic, i-cfm, ot-cfm, rfm, dfm, "
                                              "molecules, proteins, glow)")
    ap.add_argument("--steps", type=int, help="timed steps per workload (default 500; 20 with --quick)")
    ap.add_argument("--qm9-path", type=Path, help="a qm9pack-format CSV for the molecule workload (default: qm9pack)")
    ap.add_argument("--out", type=Path, help="where to write the JSON (default benchmarks/results/gpu_suite[_quick].json)")
    args = ap.parse_args(argv)
    _count_host_callbacks()
    t0 = time.perf_counter()
    rows = [run() for name, run in workloads(args.quick, args.steps, args.qm9_path) if not args.only or name in args.only]
    fallbacks = [r["workload"] for r in rows if r["host_callbacks_per_step"] > 0 and not r["host_work_expected"]]
    # read after the runs, so that the peak memory covers them
    result = {"date": time.strftime("%Y-%m-%d"), "quick": args.quick, **device_summary(), "rows": rows,
              "host_fallbacks": fallbacks, "seconds": time.perf_counter() - t0}
    out = args.out or Path(__file__).parent / "results" / f"gpu_suite{'_quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"{result['device_kind']} ({result['platform']}): {len(rows)} workloads in {result['seconds']:.0f} s; "
          f"host fallbacks in hot loops: {fallbacks or 'none'}; wrote {out}")
    return result


if __name__ == "__main__":
    main()
