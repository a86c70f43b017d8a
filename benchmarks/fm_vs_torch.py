"""Flow matching against torchcfm and Meta's flow_matching (PyTorch, CPU), in one process.

The network is the same everywhere: MLP [x, t] → 64 → 64 → 64 → 2 with SELU; batch 512; AdamW
lr 1e-3; two moons. Measured:
- training steps per second, I-CFM (σ = 0.1) and OT-CFM (exact minibatch OT with POT in both
  geoflow and torchcfm); geoflow runs ``geoflow.fit`` (timed on a second call, after
  compilation), the peers run their documented training loop (sample the path, MSE, step);
- sampling throughput: 10,000 points, 100 Euler steps (geoflow's ``fixed(100, "euler")`` vs
  flow_matching's ``ODESolver.sample(step_size=0.01)`` and torchdiffeq's ``odeint`` as in
  torchcfm's examples);
- likelihood evaluation: 2,000 points, exact divergence, 100 Euler steps (flow_matching's
  ``compute_likelihood(exact_divergence=True)``; torchcfm has no likelihood routine);
- for reference, the bare JAX training step of the same network (AdamW on fixed inputs in one
  jitted scan, no data sampling or path): the ceiling for any JAX code on this machine; and the
  same bare step drawing its batch, source, time and path noise (``bare_icfm_rate``): the
  ceiling at equal work, against which ``fit``'s own overhead reads; and for sampling and the
  likelihood, the same Euler steps of the bare network in one jitted scan (the likelihood's
  divergence by ``jacfwd``): what any JAX code can do with that network here.

On an accelerator (``--device cuda``) PyTorch runs on the GPU too (JAX uses it by default), and
every timing waits for the CUDA stream; the figures go to ``fm_vs_torch_cuda.json``.

Usage: python benchmarks/fm_vs_torch.py [--quick] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from flow_matching.path import AffineProbPath
from flow_matching.path.scheduler import CondOTScheduler
from flow_matching.solver import ODESolver as FmODESolver
from torchcfm.conditional_flow_matching import ConditionalFlowMatcher, ExactOptimalTransportConditionalFlowMatcher
from torchdiffeq import odeint

from _timing import bare_mlp, bare_mlp_rate, bare_predict, fit_rate, loop_rate, scan_step_rate, timed

from geoflow.continuous import cfm, fixed, flow_matching, with_solver
from geoflow.datasets import sample_toy
from _results import RESULTS, write_results

BATCH, STEPS_EULER = 512, 100
DEVICE = torch.device("cpu")  # set from --device
torch.set_num_threads(2)


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


class TorchField(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.SELU(), torch.nn.Linear(64, 64), torch.nn.SELU(),
                                       torch.nn.Linear(64, 64), torch.nn.SELU(), torch.nn.Linear(64, 2))

    def forward(self, x, t):
        t = t.reshape(-1, 1).expand(x.shape[0], 1) if t.dim() <= 1 else t
        return self.net(torch.cat([x, t], dim=-1))


def torch_train_rate(lib, kind, data, steps):
    """Steps per second of the peer's training loop (after 20 warm-up steps)."""
    torch.manual_seed(0)
    net = TorchField().to(DEVICE)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-5)
    x = torch.as_tensor(data, device=DEVICE)
    if lib == "torchcfm":
        matcher = ExactOptimalTransportConditionalFlowMatcher(0.1) if kind == "ot-cfm" else ConditionalFlowMatcher(0.1)
    else:
        path = AffineProbPath(scheduler=CondOTScheduler())

    def step():
        x1 = x[torch.randint(0, len(x), (BATCH,), device=DEVICE)]
        x0 = torch.randn_like(x1)
        if lib == "torchcfm":
            t, xt, ut = matcher.sample_location_and_conditional_flow(x0, x1)
        else:
            t = torch.rand(BATCH, device=DEVICE)
            sample = path.sample(x_0=x0, x_1=x1, t=t)
            xt, ut = sample.x_t, sample.dx_t
        loss = ((net(xt, t) - ut) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return loop_rate(step, steps, warmup=20, sync=sync), net


def bare_icfm_rate(data, steps):
    """Steps per second of the bare JAX I-CFM step of the same network doing ``fit``'s work:
    each step draws its batch from ``data``, the source noise, the times and the path noise
    (σ = 0.1), then the squared error and AdamW, all steps in one jitted scan. Against the
    fixed-input ceiling it is the cost of the sampling; against ``fit`` the library's own."""
    weights, predict = bare_mlp([3, 64, 64, 64, 2], "selu")
    data = jnp.asarray(data)

    def loss(w, key):
        k_rows, k_source, k_t, k_path = jax.random.split(key, 4)
        x1 = data[jax.random.randint(k_rows, (BATCH,), 0, data.shape[0])]
        x0 = jax.random.normal(k_source, x1.shape)
        t = jax.random.uniform(k_t, (BATCH, 1))
        xt = t * x1 + (1 - t) * x0 + 0.1 * jax.random.normal(k_path, x1.shape)
        return jnp.mean((predict(w, jnp.concatenate([xt, t], -1)) - (x1 - x0)) ** 2)

    return scan_step_rate(loss, weights, optax.adamw(1e-3, weight_decay=1e-5), steps)


def bare_euler_seconds(field, x, likelihood: bool) -> float:
    """Seconds for ``STEPS_EULER`` Euler steps of the bare network on the points ``x`` in one
    jitted scan: forwards from ``x`` (sampling), or backwards with each point's exact divergence
    by ``jacfwd`` and the standard normal's log-density at the end (the likelihood).

    The bare network carries the parameters of ``field`` (the geoflow model's ``TimeMLP``) and is
    checked to compute its values, so both sides do the same arithmetic: a bare network of its
    own would start with zero biases, which XLA folds away when they are compile-time constants
    (7% of a step here)."""
    mlp = field.mlp
    predict = bare_predict(mlp.activation)
    weights = [(w.T, b) for w, b in zip(mlp.weights, mlp.biases)]
    bare_field = lambda t, v: predict(weights, jnp.concatenate([v, jnp.reshape(t, (1,))]))
    np.testing.assert_allclose(bare_field(0.3, x[0]), field(0.3, x[0]), rtol=1e-5, atol=1e-6)

    def step(carry, i):
        x, div = carry
        if not likelihood:
            return (x + jax.vmap(lambda v: bare_field(i / STEPS_EULER, v))(x) / STEPS_EULER, div), None
        t = 1 - i / STEPS_EULER
        v, d = jax.vmap(lambda p: (bare_field(t, p), jnp.trace(jax.jacfwd(lambda u: bare_field(t, u))(p))))(x)
        return (x - v / STEPS_EULER, div + d / STEPS_EULER), None

    @jax.jit
    def run(x):
        (x0, div), _ = jax.lax.scan(step, (x, jnp.zeros(x.shape[0])), jnp.arange(STEPS_EULER))
        return x0 if not likelihood else -0.5 * jnp.sum(x0**2, -1) - jnp.log(2 * jnp.pi) - div

    return timed(lambda: run(x).block_until_ready())


def geoflow_train_rate(kind, data, steps):
    model = flow_matching(jax.random.key(0), 2, width=64, depth=3, activation="selu")
    return fit_rate(model, data, cfm(kind, sigma=0.1), optax.adamw(1e-3, weight_decay=1e-5), steps, BATCH)[:2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where PyTorch runs")
    args = ap.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    steps = {"i-cfm": 300 if args.quick else 2000, "ot-cfm": 50 if args.quick else 300}
    n_sample, n_lik = (2000, 500) if args.quick else (10_000, 2_000)
    data = sample_toy("moons", 10_000, seed=0)
    out = {"quick": args.quick, "torch": torch.__version__, "jax": jax.__version__, "device": args.device,
           "jax_device": jax.devices()[0].device_kind, "train_steps_per_s": {}}

    for kind in ("i-cfm", "ot-cfm"):
        row = {"geoflow": geoflow_train_rate(kind, data, steps[kind])[0],
               "torchcfm": torch_train_rate("torchcfm", kind, data, steps[kind])[0]}
        if kind == "i-cfm":
            row["flow_matching"], torch_net = torch_train_rate("flow_matching", kind, data, steps[kind])
            # the network's own training step in a bare jitted loop: the most any JAX code can reach
            row["bare_jax_mlp_step"] = bare_mlp_rate([3, 64, 64, 64, 2], "selu", BATCH, steps[kind])
            row["bare_ratio_vs_torchcfm"] = row["bare_jax_mlp_step"] / row["torchcfm"]
            # the same bare step drawing its batch, noise and time: equal work to fit's step
            row["bare_jax_icfm_step"] = bare_icfm_rate(data, steps[kind])
            row["geoflow_of_bare_icfm"] = row["geoflow"] / row["bare_jax_icfm_step"]
        row["ratio_vs_torchcfm"] = row["geoflow"] / row["torchcfm"]
        if "flow_matching" in row:
            row["ratio_vs_flow_matching"] = row["geoflow"] / row["flow_matching"]
        out["train_steps_per_s"][kind] = row
        print("train", kind, json.dumps({k: round(v, 2) for k, v in row.items()}), flush=True)

    model = with_solver(flow_matching(jax.random.key(0), 2, width=64, depth=3), fixed(STEPS_EULER, "euler"))
    sample = jax.jit(lambda k: model.sample(k, n_sample))
    g_sample = timed(lambda: sample(jax.random.key(0)).block_until_ready())
    x0 = torch.randn(n_sample, 2, device=DEVICE)
    wrapped = lambda x, t: torch_net(x, t)
    with torch.no_grad():
        fm_sample = timed(lambda: FmODESolver(velocity_model=wrapped).sample(x_init=x0, step_size=1 / STEPS_EULER,
                                                                              method="euler"), sync=sync)
        grid = torch.linspace(0, 1, STEPS_EULER + 1, device=DEVICE)
        cfm_sample = timed(lambda: odeint(lambda t, x: torch_net(x, t), x0, grid, method="euler"), sync=sync)
    out["sample_points_per_s"] = {"geoflow": n_sample / g_sample, "flow_matching": n_sample / fm_sample,
                                  "torchcfm_torchdiffeq": n_sample / cfm_sample}
    out["sample_points_per_s"]["ratio_vs_flow_matching"] = fm_sample / g_sample
    out["sample_points_per_s"]["ratio_vs_torchcfm"] = cfm_sample / g_sample
    out["sample_points_per_s"]["bare_jax_euler"] = n_sample / bare_euler_seconds(
        model.bijection.field, jnp.asarray(x0.cpu().numpy()), False)
    out["sample_points_per_s"]["geoflow_of_bare"] = out["sample_points_per_s"]["geoflow"] / out["sample_points_per_s"]["bare_jax_euler"]
    print("sample", json.dumps({k: round(v, 2) for k, v in out["sample_points_per_s"].items()}), flush=True)

    pts = jnp.asarray(data[:n_lik])
    lik = jax.jit(lambda p: model.log_prob(p))
    g_lik = timed(lambda: lik(pts).block_until_ready())
    log_p0 = lambda x: -0.5 * (x**2).sum(-1) - np.log(2 * np.pi)
    x1 = torch.as_tensor(data[:n_lik], device=DEVICE)
    fm_lik = timed(lambda: FmODESolver(velocity_model=wrapped).compute_likelihood(
        x_1=x1, log_p0=log_p0, step_size=1 / STEPS_EULER, method="euler", exact_divergence=True), reps=1, sync=sync)
    bare_lik = bare_euler_seconds(model.bijection.field, pts, True)
    out["likelihood_seconds"] = {"geoflow": g_lik, "flow_matching": fm_lik, "ratio_vs_flow_matching": fm_lik / g_lik,
                                 "bare_jax_euler": bare_lik, "geoflow_of_bare": bare_lik / g_lik,
                                 "points": n_lik, "euler_steps": STEPS_EULER}
    print("likelihood", json.dumps({k: round(v, 4) for k, v in out["likelihood_seconds"].items()}), flush=True)
    write_results(RESULTS / ("fm_vs_torch.json" if args.device == "cpu" else "fm_vs_torch_cuda.json"), out, quick=args.quick)


if __name__ == "__main__":
    main()
