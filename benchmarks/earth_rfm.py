"""Riemannian flow matching on the four earth-event sets (S²): test NLL in nats against the
published figures, and training speed against Meta's flow_matching Riemannian code on the
sphere (PyTorch, CPU) with the same network.

Protocol: random 80/10/10 split per seed; vector field MLP on the embedding (3 + t inputs, plus
`--fourier-features` random Fourier features of the embedding with frequency lengths up to
`--fourier-scale`; `--width` × `--depth` SiLU); geodesic conditional paths from the uniform
prior, times drawn as ``1 − (1 − u)^p`` with ``p = --time-power`` (more of them near the data);
Adam with warm-up and cosine decay, batch 512, parameter average `--ema`; every
`--select-every` steps the average's validation NLL (Tsit5 at `--select-tol`; ``fit``'s
``val_metric``) picks the model, whose test NLL is then computed by the exact Riemannian
divergence with Tsit5 at rtol = atol = 1e-5. The validation NLL, not the
flow-matching loss, selects: the loss on held-out points stops falling within a few thousand
steps while the likelihood keeps improving for tens of thousands. Published (Chen & Lipman,
ICLR 2024, Table 2, RFM): volcano −7.93, earthquake −0.28, flood 0.42, fire −1.86. Their released
configurations (``RELEASED_RFM``) train 2048-wide MLPs of 7–12 layers on batches of 8,192–16,384
for up to 10⁶ steps on a GPU; ``--published-cost`` measures one such step here (the bare JAX
step, ``bare_mlp_rate``). The uniform density scores log 4π = 2.531.

One process per set and seed is the way to use several cores: `--sets volcano --seed-start 2
--seeds 1 --out A.json`, then `--merge A.json B.json …` writes the table from the runs' files
(an earlier table among them; `--sets` takes only those sets' runs).

Usage: python benchmarks/earth_rfm.py [--quick] [--steps N] [--seeds K] [--sets …] [--width W] [--depth D] [--batch-size B]
       [--fourier-features F --fourier-scale S] [--time-power P] [--ema DECAY] [--curve] [--out FILE] [--merge FILE …]
       python benchmarks/earth_rfm.py --published-cost [--sets …]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np

from _timing import bare_mlp, bare_mlp_rate, fit_rate, loop_rate, scan_step_rate

import geoflow as gf
from geoflow.continuous import ODESolver, with_solver
from manifolds import GeodesicFlowMatching, Sphere, rfm
from manifolds.datasets import EARTH, load_earth

PUBLISHED_RFM = {"volcano": -7.93, "earthquake": -0.28, "flood": 0.42, "fire": -1.86}
# per set: the highest Fourier frequency and the time power, chosen by seed 0's validation NLL after
# 10,000 steps (benchmarks/RESULTS.md), the steps (volcano's and fire's near-duplicate points keep
# sharpening long after earthquake and flood level off) and the steps between selections
PROTOCOL = {
    "volcano": {"fourier_scale": 300.0, "time_power": 2.0, "steps": 160_000, "select_every": 5_000, "weight_decay": 0.0},
    "earthquake": {"fourier_scale": 100.0, "time_power": 2.0, "steps": 40_000, "select_every": 5_000, "weight_decay": 0.0},
    "flood": {"fourier_scale": 100.0, "time_power": 2.0, "steps": 40_000, "select_every": 5_000, "weight_decay": 0.0},
    "fire": {"fourier_scale": 100.0, "time_power": 3.0, "steps": 320_000, "select_every": 10_000, "weight_decay": 0.0}}
# facebookresearch/riemannian-fm, configs/experiment/<set>.yaml: (MLP width, layers, batch size); each
# trains AdamW at 1e-4 to 5e-4 for up to 1,000,000 steps, stopping after 200 validations 1,000 steps
# apart without a gain
RELEASED_RFM = {"volcano": (2048, 12, 8192), "earthquake": (2048, 10, 8192), "flood": (2048, 7, 16384),
                "fire": (2048, 10, 8192)}
PER_SET = ("steps", "fourier_scale", "time_power", "select_every", "weight_decay")  # each run records its own
MERGED_PROTOCOL = ("width", "depth", "fourier_features", "learning_rate", "batch_size", "ema",
                   "select_tol")  # what runs must share to be one table's rows
UNRECORDED = {"batch_size": 512}  # what files written before a setting was recorded ran with
RESULTS = Path(__file__).parent / "results" / "earth_rfm.json"


def nll(model, points, tol: float) -> float:
    """Mean negative log-likelihood (nats) of ``points (n, 3)`` by the exact divergence."""
    return -float(with_solver(model, ODESolver(rtol=tol, atol=tol)).log_prob(points).mean())


def run(name, seed, args):
    """Train on one set and split; returns the test NLL of the validation-selected model, the
    training CPU seconds (selection excluded) and, with ``--curve``, the test NLL at each
    selection point."""
    d = load_earth(name, seed=seed)
    steps, scale, time_power, select_every, weight_decay = (
        PROTOCOL[name][k] if getattr(args, k) is None else getattr(args, k) for k in PER_SET)  # a given 0 is used
    model = rfm(jax.random.key(seed), Sphere(2), width=args.width, depth=args.depth, activation="silu",
                fourier_features=args.fourier_features, fourier_scale=scale)
    curve, selection_cpu = [], [0.0]
    cpu0 = time.process_time()

    def timed_nll(m, points):
        t = time.process_time()
        value = nll(m, points, args.select_tol)
        selection_cpu[0] += time.process_time() - t
        return value

    def record(step, averaged, history):
        point = {"step": step, "train_cpu_s": time.process_time() - cpu0 - selection_cpu[0],
                 "val_nll": history.val_loss[-1]}
        if args.curve:
            point["test_nll"] = timed_nll(averaged, d.test)
        curve.append(point)
        print(f"  {name} seed {seed} step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in point.items() if k != "step"),
              flush=True)

    loss = GeodesicFlowMatching(time_power=time_power)
    model, hist = gf.fit(model, d.train, key=jax.random.key(100 + seed), loss=loss, steps=steps, batch_size=args.batch_size,
                         learning_rate=args.learning_rate, weight_decay=weight_decay, val_data=d.val,
                         val_metric=lambda m, x, c: timed_nll(m, x), eval_every=select_every, ema_decay=args.ema,
                         callback=record, progress=False)
    return {"seed": seed, "steps": steps, "fourier_scale": scale, "time_power": time_power, "select_every": select_every,
            "weight_decay": weight_decay,
            "test_nll": nll(model, d.test, 1e-5),
            "best_step": hist.best_step, "val_nll": hist.best_val_loss, "train_cpu_s": curve[-1]["train_cpu_s"],
            "steps_per_s": hist.steps_per_second, "curve": curve}


def published_cost(sets, steps: int = 2):
    """Seconds of one training step of each set's released RFM configuration here: the bare JAX
    step of its MLP (inputs x and t, SiLU) at its batch size, timed in this process
    (pin it to one core for a per-core figure); what a day of it buys. Written to ``results/earth_rfm_published_cost.json``."""
    rows = {}
    for name in sets:
        width, layers, batch = RELEASED_RFM[name]
        sizes = [4] + [width] * layers + [3]
        parameters = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
        seconds = 1 / bare_mlp_rate(sizes, "silu", batch, steps)
        rows[name] = {"width": width, "layers": layers, "batch_size": batch, "parameters": parameters,
                      "seconds_per_step": seconds, "gflop_per_s": 6 * parameters * batch / seconds / 1e9,
                      "steps_per_day": 86_400 / seconds}
        print(f"{name:10s} {width} × {layers}, batch {batch}: {parameters / 1e6:.1f}M parameters, {seconds:.1f} s a step "
              f"({rows[name]['gflop_per_s']:.0f} GFLOP/s), {rows[name]['steps_per_day']:,.0f} steps a day", flush=True)
    path = RESULTS.parent / "earth_rfm_published_cost.json"
    path.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "steps_timed": steps, "sets": rows}, indent=2))
    print(f"wrote {path}")


def summarise(runs_by_set):
    """The table's rows: mean ± std of the test NLL over seeds, per set."""
    rows = {}
    for name, runs in runs_by_set.items():
        nlls = np.array([r["test_nll"] for r in runs])
        rows[name] = {"test_nll_mean": float(nlls.mean()), "test_nll_std": float(nlls.std()), "test_nll": nlls.tolist(),
                      "seeds": [r["seed"] for r in runs], "train_cpu_s_mean": float(np.mean([r["train_cpu_s"] for r in runs])),
                      "published_rfm": PUBLISHED_RFM[name],
                      **{k: sorted({r[k] for r in runs}) for k in PER_SET}}
        print(f"{name:10s} test NLL {rows[name]['test_nll_mean']:.3f} ± {rows[name]['test_nll_std']:.3f} over "
              f"{len(runs)} seeds (published RFM {PUBLISHED_RFM[name]}), {rows[name]['train_cpu_s_mean']:.0f} CPU s a run")
    return rows


def _torch_net(width, depth):
    import torch

    layers, n_in = [], 4
    for _ in range(depth):
        layers += [torch.nn.Linear(n_in, width), torch.nn.SiLU()]
        n_in = width
    return torch.nn.Sequential(*layers, torch.nn.Linear(width, 3))


def bare_rfm_rate(data, width, depth, steps):
    """Steps per second of the bare JAX geodesic flow-matching step on S² with the same MLP,
    doing ``fit``'s work: each step draws its batch from ``data (n, 3)``, uniform sources and
    uniform times, follows the great circles, projects the prediction to the tangent plane, then
    the squared error and Adam; all steps in one jitted scan. The ceiling at equal work."""
    import jax.numpy as jnp
    import optax

    weights, predict = bare_mlp([4] + [width] * depth + [3], "silu")
    data = jnp.asarray(data)

    def loss(w, key):
        k_rows, k_source, k_t = jax.random.split(key, 3)
        x1 = data[jax.random.randint(k_rows, (512,), 0, data.shape[0])]
        x0 = jax.random.normal(k_source, x1.shape)
        x0 = x0 / jnp.linalg.norm(x0, axis=-1, keepdims=True)
        t = jax.random.uniform(k_t, (512, 1))
        cos = jnp.clip(jnp.sum(x0 * x1, -1, keepdims=True), -1.0, 1.0)
        theta = jnp.arccos(cos)
        u = x1 - cos * x0
        u = u / jnp.maximum(jnp.linalg.norm(u, axis=-1, keepdims=True), 1e-9)
        xt = jnp.cos(t * theta) * x0 + jnp.sin(t * theta) * u
        ut = theta * (jnp.cos(t * theta) * u - jnp.sin(t * theta) * x0)
        v = predict(w, jnp.concatenate([xt, t], -1))
        v = v - jnp.sum(v * xt, -1, keepdims=True) * xt
        return jnp.mean(jnp.sum((v - ut) ** 2, -1))

    return scan_step_rate(loss, weights, optax.adam(1e-3), steps)


def speed_comparison(width, depth, steps, n_sample):
    """Training steps/s (batch 512) and sampling throughput (``n_sample`` points, 100 Euler
    steps with projection) of geoflow and flow_matching's Riemannian code, same MLP."""
    import optax
    import torch
    from flow_matching.path import GeodesicProbPath
    from flow_matching.path.scheduler import CondOTScheduler
    from flow_matching.solver import RiemannianODESolver
    from flow_matching.utils import ModelWrapper
    from flow_matching.utils.manifolds import Sphere as FmSphere

    from geoflow.continuous import fixed

    torch.set_num_threads(2)
    data = load_earth("fire").train
    # geoflow: fit's second call (after compilation)
    model = rfm(jax.random.key(0), Sphere(2), width=width, depth=depth, activation="silu")
    ours_train, *_ = fit_rate(model, data, GeodesicFlowMatching(), optax.adam(1e-3), steps, 512)
    sampler = with_solver(model, fixed(100, "euler"))
    sample = jax.jit(lambda k: sampler.sample(k, n_sample))
    sample(jax.random.key(0)).block_until_ready()
    t0 = time.perf_counter()
    sample(jax.random.key(1)).block_until_ready()
    ours_sample = n_sample / (time.perf_counter() - t0)

    net = _torch_net(width, depth)
    manifold = FmSphere()
    path = GeodesicProbPath(scheduler=CondOTScheduler(), manifold=manifold)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.as_tensor(data)

    def step():
        x1 = x[torch.randint(0, len(x), (512,))]
        x0 = torch.nn.functional.normalize(torch.randn_like(x1), dim=-1)
        t = torch.rand(512)
        s = path.sample(x_0=x0, x_1=x1, t=t)
        v = manifold.proju(s.x_t, net(torch.cat([s.x_t, t[:, None]], -1)))
        loss = ((v - s.dx_t) ** 2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    theirs_train = loop_rate(step, steps, warmup=10)

    class Field(ModelWrapper):
        def forward(self, x, t, **extras):
            return self.model(torch.cat([x, t.reshape(-1, 1).expand(x.shape[0], 1)], -1))

    solver = RiemannianODESolver(manifold=manifold, velocity_model=Field(net))
    x0 = torch.nn.functional.normalize(torch.randn(n_sample, 3), dim=-1)
    with torch.no_grad():
        t0 = time.perf_counter()
        solver.sample(x_init=x0, step_size=0.01, method="euler", projx=True, proju=True)
        theirs_sample = n_sample / (time.perf_counter() - t0)
    # the same network's bare training step (fixed inputs, one jitted scan): the ceiling for JAX code
    bare = bare_mlp_rate([4] + [width] * depth + [3], "silu", 512, steps)
    # ... and the same step drawing its batch, sources and times on the great circles: equal work
    same_work = bare_rfm_rate(data, width, depth, steps)
    return {"geoflow_train_steps_per_s": ours_train, "flow_matching_train_steps_per_s": theirs_train,
            "train_ratio": ours_train / theirs_train, "bare_jax_mlp_steps_per_s": bare,
            "bare_ratio": bare / theirs_train, "bare_jax_rfm_steps_per_s": same_work,
            "geoflow_of_bare_rfm": ours_train / same_work, "geoflow_sample_per_s": ours_sample,
            "flow_matching_sample_per_s": theirs_sample, "sample_ratio": ours_sample / theirs_sample}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, help="training steps (default: the set's, PROTOCOL)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--seed-start", type=int, default=0, help="first seed (runs seed-start … seed-start+seeds−1)")
    ap.add_argument("--sets", nargs="+", choices=list(EARTH), default=list(EARTH),
                    help="the sets to run, or with --merge the sets to take from the files")
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--fourier-features", type=int, default=128)
    ap.add_argument("--fourier-scale", type=float, help="the highest frequency's length (default: the set's, PROTOCOL)")
    ap.add_argument("--time-power", type=float,
                    help="t = 1 − (1 − u)^p: p > 1 puts more steps near the data (default: the set's, PROTOCOL)")
    ap.add_argument("--learning-rate", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--weight-decay", type=float, help="AdamW's decoupled weight decay (default: the set's, PROTOCOL)")
    ap.add_argument("--ema", type=float, default=0.999, help="parameter-average decay (0: none)")
    ap.add_argument("--select-every", type=int, help="steps between validation-NLL selections (default: the set's, PROTOCOL)")
    ap.add_argument("--select-tol", type=float, default=1e-4, help="solver tolerance of the selection NLL")
    ap.add_argument("--curve", action="store_true", help="also record the test NLL at every selection point")
    ap.add_argument("--speed-only", action="store_true", help="only the side-by-side speed comparison")
    ap.add_argument("--published-cost", action="store_true",
                    help="only the seconds of one bare training step of each of --sets' released RFM configurations")
    ap.add_argument("--no-speed", action="store_true", help="skip the side-by-side speed comparison")
    ap.add_argument("--out", type=Path, help="where to write (default: results/earth_rfm.json; a subset run can go to "
                                             "its own file)")
    ap.add_argument("--merge", type=Path, nargs="+", metavar="FILE",
                    help="write the table of these runs' files to --out (keeping its speed figures) and stop")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.seeds, args.select_every = 300, 1, 150
    args.ema = args.ema or None
    if args.out is None and (args.merge or not args.quick):  # a smoke run never replaces the recorded one
        args.out = RESULTS
    if args.published_cost:
        published_cost(args.sets)
        return
    if args.merge:
        runs, sources, protocols = {}, {}, []
        for f in args.merge:  # a run's file, or an earlier merged table (its sources per set are kept)
            table = json.loads(f.read_text())
            shared = table.get("protocol") or table["args"]
            earlier = table.get("merged_from")
            for name, rs in table["runs"].items():
                if name not in args.sets:
                    continue
                # runs recorded before a setting was per set took the file's (no weight decay before it was one)
                recorded = {k: shared.get(k) for k in PER_SET} | {"weight_decay": 0.0}
                runs.setdefault(name, []).extend(recorded | r for r in rs)
                sources.setdefault(name, []).extend(earlier[name] if isinstance(earlier, dict) else [f.name])
            protocols.append({k: shared[k] if k in shared else UNRECORDED[k] for k in MERGED_PROTOCOL})
        if any(p != protocols[0] for p in protocols):
            raise SystemExit(f"--merge: the files were run under different protocols: {protocols}")
        for name, rs in runs.items():
            seeds = [r["seed"] for r in rs]
            if len(set(seeds)) != len(seeds):
                raise SystemExit(f"--merge: {name} has a seed more than once: {sorted(seeds)}")
        previous = json.loads(args.out.read_text()) if args.out.exists() else {}
        speed = {k: v for k, v in previous.items() if k.startswith("speed")}  # the NLL figures are replaced
        out = {"published_rfm": PUBLISHED_RFM, "protocol": protocols[0], **speed,
               "merged_from": sources, "runs": runs, "results": summarise(runs)}
        args.out.write_text(json.dumps(out, indent=2))
        print(f"wrote {args.out}")
        return
    out = {"args": {**vars(args), "out": None if args.out is None else str(args.out)}, "published_rfm": PUBLISHED_RFM,
           "runs": {}, "results": {}}
    for name in ([] if args.speed_only else args.sets):
        out["runs"][name] = [run(name, s, args) for s in range(args.seed_start, args.seed_start + args.seeds)]
        out["results"].update(summarise({name: out["runs"][name]}))
        if args.out is not None:  # after every set: a long run keeps what it finished
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(out, indent=2))
    if not args.no_speed:
        speed = speed_comparison(args.width, args.depth, 50 if args.quick else 300, 1000 if args.quick else 10_000)
        print("speed against flow_matching:", json.dumps({k: round(v, 2) for k, v in speed.items()}))
        if args.speed_only and args.out is not None and args.out.exists():  # keep the NLL figures of the last full run
            out = json.loads(args.out.read_text())
        out["speed_vs_flow_matching"] = speed
    if args.out is not None:
        args.out.write_text(json.dumps(out, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
