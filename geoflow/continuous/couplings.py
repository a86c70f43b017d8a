"""Couplings of a source batch with a data batch for flow matching (Tong et al. 2024).

``independent`` keeps the random pairing (I-CFM); ``exact`` solves the minibatch assignment
problem for the squared Euclidean cost (OT-CFM; POT's network simplex through a host callback,
so it runs inside the jitted training loop — 3× faster than SciPy's Hungarian solver on 512
points); ``sinkhorn`` solves the entropic problem in log space in JAX and draws each data
point's partner from its row of the plan (SB-CFM with ``epsilon = 2σ²``). Every coupling
returns the source batch reordered to pair with ``x1``; the data batch (and its context) keep
their order, so the data marginal is exact. Batches larger than ``block`` (an evaluation pass)
are coupled block by block, as minibatch OT is defined.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
import ot

COUPLINGS = ("independent", "exact", "sinkhorn")


def squared_distances(a, b):
    """``(n, m)`` matrix of ``‖a_i − b_j‖²`` for flattened examples."""
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    return jnp.maximum(jnp.sum(a**2, 1)[:, None] + jnp.sum(b**2, 1)[None, :] - 2 * a @ b.T, 0.0)


def _solve_one(cost):
    cost = np.asarray(cost, np.float64)
    n = cost.shape[0]
    # for uniform weights on equal-size sets the optimal plan is a permutation matrix / n
    plan = ot.emd(np.full(n, 1.0 / n), np.full(n, 1.0 / n), cost)
    return np.argmax(plan, axis=1).astype(np.int32)


@functools.cache
def _host_threads() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="geoflow-ot")


# below this size a thread's hand-off costs more than the solve (29 atoms: 13 ms in threads
# against 9 ms in turn for 128 problems; 64 points: 1.6× faster in threads; 512: 1.9×, 2 cores)
_THREADED_FROM = 64


def _assignment_host(cost):
    """One problem ``(n, n)``, or a stack ``(..., n, n)`` (a vmapped call) solved on all host
    cores at once when the problems are large enough: POT releases the GIL, so threads scale."""
    cost = np.asarray(cost)
    if cost.ndim == 2:
        return _solve_one(cost)
    flat = cost.reshape(-1, *cost.shape[-2:])
    threaded = len(flat) > 1 and cost.shape[-1] >= _THREADED_FROM
    solved = list(_host_threads().map(_solve_one, flat)) if threaded else [_solve_one(c) for c in flat]
    return np.stack(solved).reshape(cost.shape[:-1])


def exact_assignment(cost):
    """The permutation ``π`` minimising ``Σ_i cost[i, π(i)]`` for a square ``cost`` ``(n, n)``;
    jittable. Under ``vmap`` the whole stack of problems goes to the host in one call and is
    solved in parallel threads."""
    out = jax.ShapeDtypeStruct(cost.shape[:-1], jnp.int32)
    return jax.pure_callback(_assignment_host, out, cost, vmap_method="expand_dims")


def sinkhorn_log_plan(cost, epsilon: float | None = None, tol: float = 1e-3, max_iterations: int = 1000):
    """Log of the entropic OT plan between uniform marginals: ``P ∝ exp((f_i + g_j − C_ij)/ε)``.

    ``epsilon`` is in the cost's units (squared distance); ``None`` takes 5% of the mean cost,
    which works across data scales. Iterates until the row marginals are within ``tol``
    (relative, L1) of uniform, at most ``max_iterations`` times.
    """
    n, m = cost.shape
    epsilon = 0.05 * jnp.mean(cost) if epsilon is None else epsilon
    scaled = cost / epsilon
    log_a, log_b = -jnp.log(n) * jnp.ones(n), -jnp.log(m) * jnp.ones(m)

    def update(f, g):
        f = log_a - jax.nn.logsumexp(g[None, :] - scaled, axis=1)
        return f, log_b - jax.nn.logsumexp(f[:, None] - scaled, axis=0)

    def row_error(f, g):  # after a g-update the columns are exact; the rows carry the error
        rows = jnp.exp(f + jax.nn.logsumexp(g[None, :] - scaled, axis=1))
        return jnp.sum(jnp.abs(rows * n - 1)) / n

    def cond(state):
        i, f, g = state
        return (i < max_iterations) & (row_error(f, g) > tol)

    def body(state):
        i, f, g = state
        return (i + 1, *update(f, g))

    _, f, g = jax.lax.while_loop(cond, body, (0, *update(jnp.zeros(n), jnp.zeros(m))))
    return f[:, None] + g[None, :] - scaled


def exact_pairing(x0, x1, block: int = 1024):
    """Indices ``π`` ``(n,)`` such that ``x0[π]`` is the minibatch-OT partner of ``x1``
    (squared Euclidean cost), solved per block of ``block`` examples; no gradient flows."""
    n = x1.shape[0]
    if n > block:
        return jnp.concatenate([exact_pairing(x0[i : i + block], x1[i : i + block], block) + i
                                for i in range(0, n, block)])
    return exact_assignment(jax.lax.stop_gradient(squared_distances(x1, x0)))  # rows: data points


def couple(kind: str, x0, x1, key, epsilon: float | None = None, block: int = 1024):
    """``x0`` reordered (or resampled) to pair with ``x1``: batch shapes ``(n, *event)``."""
    if kind not in COUPLINGS:
        raise ValueError(f"unknown coupling {kind!r}; expected one of {COUPLINGS}")
    n = x1.shape[0]
    if kind == "independent":
        return x0
    if kind == "exact":
        return x0[exact_pairing(x0, x1, block)]
    if n > block:
        starts = range(0, n, block)
        keys = jax.random.split(key, len(starts))
        return jnp.concatenate([couple(kind, x0[i : i + block], x1[i : i + block], k, epsilon, block)
                                for i, k in zip(starts, keys)])
    cost = squared_distances(x1, x0)  # rows: data points, columns: source points
    if kind == "sinkhorn":
        log_plan = sinkhorn_log_plan(jax.lax.stop_gradient(cost), epsilon)
        return x0[jax.random.categorical(key, log_plan, axis=1)]
