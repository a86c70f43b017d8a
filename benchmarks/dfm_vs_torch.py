"""Discrete flow matching against Meta's flow_matching (PyTorch, CPU), in one process.

The setting of flow_matching's 2-D discrete example: the checkerboard discretized to 128 × 128
cells (L = 2 tokens, V = 128, plus a mask token), masking source, linear κ, the generalized-KL
loss. The network is the same on both sides: token embeddings 129 × 128, flattened with ``t``
(257 inputs) → 4 hidden layers of 128 with SiLU → 2 × 128 logits (2 × 129 on the PyTorch side,
whose loss needs a logit for the mask token too). Batch 2048, Adam lr 1e-3.

Measured (2 CPU threads each):
- training steps per second: ``geoflow.fit`` with ``DiscreteFlowMatching()`` (timed on a second
  call, after compilation) against flow_matching's documented loop (``MixtureDiscreteProbPath``
  sample, ``MixturePathGeneralizedKL``, Adam step);
- the ceiling: the bare JAX training step of the same network (``bare_train_rate``) on fixed
  inputs, and the same step drawing its batch, times and mask as ``fit`` does (equal work);
- sampling throughput: 10,000 sequences, 100 Euler steps (``DiscreteFlow.sample(steps=100)``
  against ``MixtureDiscreteEulerSolver.sample(step_size=0.01)``).

Usage: python benchmarks/dfm_vs_torch.py [--quick]
"""

from __future__ import annotations

import argparse
import json

import jax
import numpy as np
import optax
import torch
from flow_matching.loss import MixturePathGeneralizedKL
from flow_matching.path import MixtureDiscreteProbPath
from flow_matching.path.scheduler import PolynomialConvexScheduler
from flow_matching.solver import MixtureDiscreteEulerSolver
from flow_matching.utils import ModelWrapper

from _timing import fit_rate, loop_rate, scan_step_rate, timed

from discrete import DiscreteFlowMatching, dfm
from discrete.datasets import checkerboard_tokens, checkerboard_tokens_log_prob
from _results import RESULTS, write_results

V, L, WIDTH, DEPTH, BATCH, EULER_STEPS = 128, 2, 128, 4, 2048, 100
torch.set_num_threads(2)


class TorchDenoiser(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(V + 1, WIDTH)
        layers, size = [], L * WIDTH + 1
        for _ in range(DEPTH):
            layers += [torch.nn.Linear(size, WIDTH), torch.nn.SiLU()]
            size = WIDTH
        # flow_matching's loss gathers the logit of x_t, so its network scores the mask token too
        self.net = torch.nn.Sequential(*layers, torch.nn.Linear(WIDTH, L * (V + 1)))

    def forward(self, x, t):
        h = torch.cat([self.embed(x).flatten(1), t.reshape(-1, 1).expand(x.shape[0], 1)], dim=1)
        return self.net(h).reshape(-1, L, V + 1)


class Probabilities(ModelWrapper):
    def forward(self, x, t, **extras):
        return torch.softmax(self.model(x, t), dim=-1)


def torch_train_rate(data, steps):
    torch.manual_seed(0)
    net = TorchDenoiser()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    path = MixtureDiscreteProbPath(scheduler=PolynomialConvexScheduler(n=1.0))
    loss_fn = MixturePathGeneralizedKL(path=path)
    x = torch.as_tensor(data, dtype=torch.long)

    def step():
        x1 = x[torch.randint(0, len(x), (BATCH,))]
        x0 = torch.full_like(x1, V)  # the mask token
        t = torch.rand(BATCH) * (1 - 1e-3)
        sample = path.sample(t=t, x_0=x0, x_1=x1)
        loss = loss_fn(logits=net(sample.x_t, sample.t), x_1=x1, x_t=sample.x_t, t=sample.t)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return loop_rate(step, steps, warmup=10), net, path


def bare_train_rate(steps, data=None):
    """Steps per second of the barest JAX training step of the same network: embedding gather,
    MLP, the masked positions' cross-entropy with a fixed per-example weight (the generalized KL
    of the masking path with linear κ is that), Adam, every step in one jitted scan. Without
    ``data`` the inputs are fixed: no path sampling and no library code, the ceiling for any JAX
    implementation. With ``data`` (tokens ``(n, L)``) each step also draws its batch, times and
    mask, the same work as ``fit``'s step: the gap between the two is the sampling's cost."""
    import jax.numpy as jnp

    keys = jax.random.split(jax.random.key(0), DEPTH + 4)
    sizes = [L * WIDTH + 1] + [WIDTH] * DEPTH + [L * V]
    params = {"embed": jax.random.normal(keys[0], (V + 1, WIDTH)),
              "layers": [(jax.random.normal(k, (a, b)) / a**0.5, jnp.zeros(b))
                         for k, a, b in zip(keys[1:], sizes[:-1], sizes[1:])]}
    tokens = None if data is None else jnp.asarray(data)

    def path_sample(key):
        k_rows, k_t, k_mask = jax.random.split(key, 3)
        x1 = jax.random.randint(k_rows, (BATCH, L), 0, V) if tokens is None else \
            tokens[jax.random.randint(k_rows, (BATCH,), 0, tokens.shape[0])]
        t = jax.random.uniform(k_t, (BATCH,))
        masked = jax.random.uniform(k_mask, (BATCH, L)) > t[:, None]
        return x1, t, masked

    fixed = path_sample(keys[-1])

    def loss(p, key):
        x1, t, masked = fixed if tokens is None else path_sample(key)
        h = jnp.concatenate([p["embed"][jnp.where(masked, V, x1)].reshape(BATCH, -1), t[:, None]], 1)
        for a, b in p["layers"][:-1]:
            h = jax.nn.silu(h @ a + b)
        logits = (h @ p["layers"][-1][0] + p["layers"][-1][1]).reshape(BATCH, L, V)
        ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), x1[..., None], -1)[..., 0]
        return jnp.mean(jnp.sum(ce * masked, 1) / (1 - t))

    return scan_step_rate(loss, params, optax.adam(1e-3), steps)


def geoflow_train_rate(data, steps):
    model = dfm(jax.random.key(0), L, V, source="mask", width=WIDTH, depth=DEPTH, embed_dim=WIDTH)
    return fit_rate(model, data, DiscreteFlowMatching(), optax.adam(1e-3), steps, BATCH)[:2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    steps, n_sample = (100, 2_000) if args.quick else (500, 10_000)
    data = checkerboard_tokens(200_000, seed=0)
    out = {"quick": args.quick, "torch": torch.__version__, "jax": jax.__version__, "batch": BATCH,
           "euler_steps": EULER_STEPS, "sequences": n_sample}

    g_rate, model = geoflow_train_rate(data, steps)
    t_rate, net, path = torch_train_rate(data, steps)
    bare, same_work = bare_train_rate(steps), bare_train_rate(steps, data)
    out["train_steps_per_s"] = {"geoflow": g_rate, "flow_matching": t_rate, "ratio": g_rate / t_rate,
                                "bare_jax_step": bare, "geoflow_of_bare": g_rate / bare,
                                "bare_jax_step_sampling_its_batch": same_work, "geoflow_of_same_work": g_rate / same_work}
    print("train", json.dumps({k: round(v, 2) for k, v in out["train_steps_per_s"].items()}), flush=True)

    sample = jax.jit(lambda k: model.sample(k, n_sample, steps=EULER_STEPS))
    g_sample = timed(lambda: sample(jax.random.key(0)).block_until_ready())
    solver = MixtureDiscreteEulerSolver(model=Probabilities(net), path=path, vocabulary_size=V + 1)
    x_init = torch.full((n_sample, L), V, dtype=torch.long)
    with torch.no_grad():
        t_sample = timed(lambda: solver.sample(x_init=x_init, step_size=1 / EULER_STEPS))
        torch_samples = solver.sample(x_init=x_init, step_size=1 / EULER_STEPS).numpy()
    out["sample_sequences_per_s"] = {"geoflow": n_sample / g_sample, "flow_matching": n_sample / t_sample,
                                     "ratio": t_sample / g_sample}
    print("sample", json.dumps({k: round(v, 2) for k, v in out["sample_sequences_per_s"].items()}), flush=True)
    # the same few training steps on both sides: the fraction of samples on the dark cells
    on = lambda x: float(np.mean(np.isfinite(checkerboard_tokens_log_prob(np.minimum(x, V - 1))) & (x < V).all(1)))
    out["on_support_after_training"] = {"geoflow": on(np.asarray(sample(jax.random.key(1)))), "flow_matching": on(torch_samples)}
    print("on support", out["on_support_after_training"])
    write_results(RESULTS / "dfm_vs_torch.json", out, quick=args.quick)


if __name__ == "__main__":
    main()
