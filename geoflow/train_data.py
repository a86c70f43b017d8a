"""Which rows each step of :func:`geoflow.fit` trains on.

Training data arrives as arrays in memory, memory maps on disk or rows spread over a mesh. This
module checks it against the model and draws every step's minibatch as a pure function of the
run's key and the step number, so that a resumed run, a run from disk and a run in memory read
the same rows.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from .checks import check_event


def as_arrays(data, model, shape=None, check_data=None):
    """``data`` → ``(x, condition or None)`` as NumPy arrays, checked against the model (or
    against ``shape``, the example shape a loss declares). ``x`` is float32, or int32 when the
    loss checks its own data (``check_data(model, x)``, e.g. tokens of a discrete model)."""
    x, condition = (data if isinstance(data, tuple) else (data, None))
    x = np.asarray(check_data(model, x)) if check_data is not None else np.asarray(x, dtype=np.float32)
    shape = getattr(model, "shape", x.shape[1:]) if shape is None else shape
    check_event(x, shape, "training data")
    if x.ndim != len(shape) + 1:
        raise ValueError(f"training data has shape {x.shape}; expected (n, {', '.join(map(str, shape))})")
    if len(x) == 0:
        raise ValueError("training data is empty; expected at least one example")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).any(axis=tuple(range(1, x.ndim))).sum())
        raise ValueError(f"training data contains NaN or inf in {bad} example(s); expected finite values")
    if condition is not None:
        condition = np.asarray(condition, dtype=np.float32)
        if condition.ndim != 2 or len(condition) != len(x):
            raise ValueError(f"condition has shape {condition.shape}; expected ({len(x)}, cond_dim)")
        if not np.isfinite(condition).all():
            raise ValueError("condition contains NaN or inf; expected finite values")
    elif getattr(model, "cond_shape", None) is not None:
        raise ValueError("the model is conditional: pass data=(x, condition)")
    return x, condition


def is_on_disk(data) -> bool:
    """Whether ``data`` (an array or ``(x, condition)``) is read from disk as it is needed: a
    NumPy memory map, e.g. ``np.load(path, mmap_mode="r")``."""
    return isinstance(data[0] if isinstance(data, tuple) else data, np.memmap)


def rows_on_disk(data, model, shape=None):
    """``data`` on disk → ``(x, condition or None)``, the memory maps themselves, with their
    shapes checked against the model (values are checked as rows are read)."""
    x, condition = (data if isinstance(data, tuple) else (data, None))
    shape = tuple(getattr(model, "shape", x.shape[1:]) if shape is None else shape)
    if tuple(x.shape[1:]) != shape or len(x) == 0:
        raise ValueError(f"training data on disk has shape {x.shape}; expected (n ≥ 1, {', '.join(map(str, shape))})")
    if condition is not None and (np.ndim(condition) != 2 or len(condition) != len(x)):
        raise ValueError(f"condition has shape {np.shape(condition)}; expected ({len(x)}, cond_dim)")
    if condition is None and getattr(model, "cond_shape", None) is not None:
        raise ValueError("the model is conditional: pass data=(x, condition)")
    return x, condition


def split_validation(x, c, fraction, key):
    """``((x, c) for training, (x, c) held out or None)``: a random ``fraction`` of the rows held
    out, none when that rounds to zero rows or to all of them."""
    n_val = int(round(fraction * len(x)))
    if n_val == 0 or n_val >= len(x):
        return (x, c), None
    perm = np.asarray(jax.random.permutation(key, len(x)))
    tr, va = perm[n_val:], perm[:n_val]
    return (x[tr], None if c is None else c[tr]), (x[va], None if c is None else c[va])


def step_keys(key, step):
    """Step ``step``'s ``(batch key, loss key)``: a pure function of the run's key and the step."""
    return jax.random.split(jax.random.fold_in(key, step))


def step_indices(key, step, batch_size, n):
    """Step ``step``'s minibatch rows ``(batch_size,)`` of ``n`` and its loss key."""
    k_batch, k_loss = step_keys(key, step)
    return jax.random.randint(k_batch, (batch_size,), 0, n), k_loss


def step_batch(x, condition, key, step, batch_size):
    """Step ``step``'s minibatch and loss key (:func:`step_indices`)."""
    idx, k_loss = step_indices(key, step, batch_size, x.shape[0])
    return x[idx], None if condition is None else condition[idx], k_loss


@functools.partial(jax.jit, static_argnames=("num_steps", "batch_size", "n"))
def chunk_indices(key, step0, *, num_steps, batch_size, n):
    """The rows ``(num_steps, batch_size)`` that the steps ``step0 …`` draw (as :func:`step_batch`)."""
    return jax.vmap(lambda i: step_indices(key, step0 + i, batch_size, n)[0])(jnp.arange(num_steps))


def read_chunk(rows, key, step0, active, *, num_steps, batch_size, batch_sharding, what="training data"):
    """The minibatches of a chunk's first ``active`` steps read from ``rows`` (arrays on disk,
    e.g. ``np.load(path, mmap_mode="r")``; ``None`` entries stay ``None``), stacked
    ``(num_steps, batch_size, …)`` with zeros for the steps past ``active``, as float32, on
    the devices. Each distinct row is read once, in file order."""
    n = len(rows[0])
    idx = np.asarray(chunk_indices(key, jnp.asarray(step0, jnp.int32), num_steps=num_steps, batch_size=batch_size,
                                    n=n))[:active]
    wanted, where = np.unique(idx.ravel(), return_inverse=True)
    sharding = None if batch_sharding is None else NamedSharding(batch_sharding.mesh, P(None, "batch"))
    stacks = []
    for a in rows:
        if a is None:
            stacks.append(None)
            continue
        got = np.asarray(a[wanted], dtype=np.float32)
        if not np.isfinite(got).all():
            bad = wanted[~np.isfinite(got).reshape(len(wanted), -1).all(1)]
            raise ValueError(f"{what} on disk has NaN or inf in row(s) {bad[:5].tolist()}; expected finite values")
        stack = np.zeros((num_steps, batch_size, *a.shape[1:]), np.float32)
        stack[:active] = got[where].reshape(active, batch_size, *a.shape[1:])
        stacks.append(jnp.asarray(stack) if sharding is None else jax.device_put(stack, sharding))
    return tuple(stacks)


def device_batches(x, condition, key, step, batch_size, mesh):
    """Step ``step``'s minibatch when the data is sharded over ``mesh``: each device draws its
    ``batch_size / devices`` examples from the rows it holds, keyed by the step and its position
    in the mesh, so no example crosses devices and the run stays a pure function of the key for
    a given partition of the data over the devices."""
    k_batch, k_loss = step_keys(key, step)
    per_device = batch_size // mesh.size

    def draw(rows):
        x_local, c_local = rows
        idx = jax.random.randint(jax.random.fold_in(k_batch, jax.lax.axis_index("batch")), (per_device,), 0,
                                 x_local.shape[0])
        return x_local[idx], None if c_local is None else c_local[idx]

    xb, cb = jax.shard_map(draw, mesh=mesh, in_specs=(P("batch"),), out_specs=P("batch"))((x, condition))
    return xb, cb, k_loss
