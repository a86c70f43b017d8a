"""Likelihood and sample-quality metrics, all in nats unless the name says bits."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


@eqx.filter_jit
def _batch_log_prob(model, x, condition, key):
    # only randomised densities take a key (and other libraries' models, scored by the
    # benchmarks, take none)
    return model.log_prob(x, condition) if key is None else model.log_prob(x, condition, key=key)


def log_prob_batched(model, x, condition=None, batch_size: int = 10_000, key=None, solver=None) -> np.ndarray:
    """``model.log_prob`` over ``x`` in batches (bounded memory); returns float64 ``(n,)``.
    A model whose density is a randomised estimate (``needs_key``) needs ``key``. For a
    continuous model, ``solver`` (an ``ODESolver``) sets the likelihood's accuracy, e.g.
    ``ODESolver(rtol=1e-6, atol=1e-6)``; ``None`` keeps the model's own."""
    if solver is not None:
        from .continuous.matching import with_solver

        model = with_solver(model, solver)
    x = np.asarray(x)
    if getattr(model, "needs_key", False) and key is None:
        raise ValueError(f"{type(model).__name__}'s log-density is a randomised estimate; pass key=")
    out = []
    for i in range(0, len(x), batch_size):
        c = None if condition is None else jnp.asarray(condition[i : i + batch_size])
        k = None if key is None else jax.random.fold_in(key, i)
        out.append(np.asarray(_batch_log_prob(model, jnp.asarray(x[i : i + batch_size]), c, k), np.float64))
    return np.concatenate(out)


def nll(model, x, condition=None, batch_size: int = 10_000, key=None, solver=None) -> float:
    """Mean negative log-likelihood in nats per example (``key`` for a randomised estimate,
    ``solver`` for a continuous model's accuracy, as in :func:`log_prob_batched`)."""
    return float(-log_prob_batched(model, x, condition, batch_size, key, solver).mean())


def bits_per_dim(nll_nats: float, dim: int, levels: int | None = None) -> float:
    """Bits per dimension. For dequantised data in ``[0, 1)`` with ``levels`` integer levels
    the density is rescaled to the discrete space ``[0, levels)`` first (the usual convention:
    ``NLL + dim · log(levels)``), which upper-bounds the discrete NLL."""
    if levels is not None:
        nll_nats = nll_nats + dim * math.log(levels)
    return nll_nats / (dim * math.log(2))


def kl_from_truth(test_nll: float, entropy: float) -> float:
    """``KL(data ‖ model) = E_data[−log q] − H(data)``, estimated from a test NLL."""
    return test_nll - entropy


def sliced_wasserstein(x, y, key, num_projections: int = 256, p: int = 2) -> float:
    """Monte-Carlo sliced p-Wasserstein distance between two equal-size sample sets ``(n, d)``."""
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.shape != y.shape:
        raise ValueError(f"sliced_wasserstein expects two sample sets of one shape, got {x.shape} and {y.shape}")
    dirs = jax.random.normal(key, (num_projections, x.shape[1]))
    dirs = dirs / jnp.linalg.norm(dirs, axis=1, keepdims=True)
    px, py = jnp.sort(x @ dirs.T, axis=0), jnp.sort(y @ dirs.T, axis=0)
    return float(jnp.mean(jnp.abs(px - py) ** p) ** (1 / p))


def wasserstein(x, y, p: int = 2) -> float:
    """Exact p-Wasserstein distance between two empirical sets ``(n, d)`` and ``(m, d)`` with
    uniform weights (POT's network simplex on the full cost matrix: memory ``n·m``)."""
    import ot

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"wasserstein expects two sample sets (n, d) and (m, d), got {x.shape} and {y.shape}")
    cost = ot.dist(x, y, metric="sqeuclidean") ** (p / 2)
    plan_cost = ot.emd2(np.full(len(x), 1 / len(x)), np.full(len(y), 1 / len(y)), cost, numItermax=10_000_000)
    return float(plan_cost ** (1 / p))
