"""``fit``: one training function for every model kind.

Training runs in *chunks*: ``eval_every`` optimisation steps are fused into one jitted
``lax.scan``, so the host syncs once per chunk (for the progress bar, validation, early
stopping and checkpoints), not once per step. Minibatches are drawn on device with
``jax.random.randint`` from a key folded with the global step number, so a run is a pure
function of its key, and a resumed run continues exactly where it stopped.

A loss is any ``loss(model, x, condition, key) -> scalar``; the default is maximum likelihood.
Later packages (flow matching, CTMC) pass their own. What else a loss or a model can tell
``fit`` is declared by the small protocols below, each optional:

- :class:`HostPrepared` — a loss with ``prepare(model, x, condition, key)``: work that does not
  depend on the trained parameters (minibatch OT's assignment). ``fit`` runs it for every step
  of a chunk, as a program of its own on one device before the chunk's scan, a block of steps at
  a time, and calls ``loss(..., prepared=...)`` with each step's result. Such a loss is
  validated on one device too: a host callback inside a sharded program stalls its collectives.
- :class:`DeclaresDataShape` — a loss that trains on other examples than the model's events
  (``data_shape(model)``, reflow's pairs); :class:`ChecksData` — one that checks and converts
  them itself (``check_data(model, x)``, tokens or molecular graphs).
- :class:`Dequantizing` — a loss that adds noise to integer data (``dequantize(x, key)``); the
  data-dependent initialization sees the noisy batch.
- :class:`DataDependentInit` — a model some of whose parameters are set from a first batch
  (Glow's ActNorm): ``needs_data_init()`` and ``data_init(x, key)``.

Which rows each step reads is :mod:`geoflow.train_data`'s; where the arrays live (one device,
a mesh, several processes) is :mod:`geoflow.train_devices`'s; what the loop carries from chunk to
chunk and checkpoints (the :class:`~geoflow.train_state.History` it returns) is
:mod:`geoflow.train_state`'s.
"""

from __future__ import annotations

import functools
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Protocol, runtime_checkable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from .nn import trainable
from .train_state import StepClock, TrainingState, save_checkpoint
from .train_data import (as_arrays, device_batches, is_on_disk, read_chunk, rows_on_disk, split_validation,
                         step_batch, step_keys)
from .train_devices import Placement, all_processes, make_mesh, on_one_device, put_tree


@runtime_checkable
class HostPrepared(Protocol):
    """A loss with per-step work that does not depend on the trained parameters."""

    def prepare(self, model, x, condition, key): ...


@runtime_checkable
class DeclaresDataShape(Protocol):
    """A loss whose training examples are not the model's events (reflow trains on pairs)."""

    def data_shape(self, model) -> tuple[int, ...]: ...


@runtime_checkable
class ChecksData(Protocol):
    """A loss that checks and converts its training examples itself (tokens, molecular graphs)."""

    def check_data(self, model, x): ...


@runtime_checkable
class Dequantizing(Protocol):
    """A loss that trains on integer data made continuous with noise."""

    def dequantize(self, x, key): ...


@runtime_checkable
class DataDependentInit(Protocol):
    """A model whose parameters are partly set from a first batch of data."""

    def needs_data_init(self) -> bool: ...

    def data_init(self, x, key): ...


def maximum_likelihood(model, x, condition, key):
    """Mean negative log-likelihood of a batch (nats per example); a model whose density is a
    Hutchinson estimate gets ``key`` for its probes."""
    return -jnp.mean(model.log_prob(x, condition, key=key if model.needs_key else None))


@functools.cache
def make_optimizer(learning_rate: float, steps: int, warmup_steps: int, schedule: str,
                   clip_norm: float | None, weight_decay: float = 0.0) -> optax.GradientTransformation:
    """Adam(W) with linear warm-up then ``schedule`` decay and optional gradient-norm clipping.

    Cached on its (hashable) configuration so repeated ``fit`` calls reuse the same optimizer
    object, and with it the compiled training chunk.
    """
    decay_steps = max(steps - warmup_steps, 1)
    if schedule == "cosine":
        decay = optax.cosine_decay_schedule(learning_rate, decay_steps)
    elif schedule == "polynomial":
        decay = optax.polynomial_schedule(learning_rate, 0.0, power=1.0, transition_steps=decay_steps)
    elif schedule == "constant":
        decay = optax.constant_schedule(learning_rate)
    else:
        raise ValueError(f"unknown schedule {schedule!r}; expected 'cosine', 'polynomial' or 'constant'")
    if warmup_steps > 0:
        warm = optax.linear_schedule(0.0, learning_rate, warmup_steps)
        lr = optax.join_schedules([warm, decay], [warmup_steps])
    else:
        lr = decay
    parts = [optax.clip_by_global_norm(clip_norm)] if clip_norm else []
    parts.append(optax.adamw(lr, weight_decay=weight_decay) if weight_decay else optax.adam(lr))
    return optax.chain(*parts)


def _data_dependent_init(model, x, loss, key, size: int = 512):
    """Glow's data-dependent initialization: a model that says it awaits data is initialized on
    a random batch (dequantized first when the loss says how)."""
    if not (isinstance(model, DataDependentInit) and model.needs_data_init()):
        return model
    k_batch, k_noise, k_init = jax.random.split(key, 3)
    idx = np.asarray(jax.random.permutation(k_batch, len(x))[:size])
    # rows on disk are read in file order (the statistics do not depend on the order)
    batch = jnp.asarray(np.asarray(x[np.sort(idx)], np.float32) if isinstance(x, np.memmap) else x[idx])
    if isinstance(loss, Dequantizing):
        batch = loss.dequantize(batch, k_noise)
    return _compiled_data_init(model, batch, k_init)


# compiled, not eager: op by op, a multi-scale Glow's init took ~20 s of every image fit
_compiled_data_init = eqx.filter_jit(lambda model, batch, key: model.data_init(batch, key))


SCHEDULES = ("cosine", "polynomial", "constant")


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _check_fit_arguments(*, steps, batch_size, learning_rate, warmup_steps, schedule, clip_norm, weight_decay,
                         val_fraction, eval_every, patience, eval_batch_size, ema_decay, devices, optimizer,
                         skip_nonfinite):
    """Every argument of :func:`fit` checked before anything compiles: a bad value is a clear
    error, never a hang (``eval_every=0`` would loop forever) or a silent replacement."""
    def positive_int(name, v):
        if not _is_int(v) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")

    positive_int("steps", steps)
    positive_int("batch_size", batch_size)
    positive_int("eval_every", eval_every)
    positive_int("eval_batch_size", eval_batch_size)
    if not _is_int(skip_nonfinite) or skip_nonfinite < 0:
        raise ValueError(f"skip_nonfinite must be a non-negative integer (consecutive steps), got {skip_nonfinite!r}")
    if patience is not None:
        positive_int("patience (or None)", patience)
    if optimizer is None:
        if not (isinstance(learning_rate, (int, float, np.floating)) and math.isfinite(learning_rate) and learning_rate > 0):
            raise ValueError(f"learning_rate must be a positive finite number, got {learning_rate!r}")
        if warmup_steps is not None and (not _is_int(warmup_steps) or not 0 <= warmup_steps <= steps):
            raise ValueError(f"warmup_steps must be an integer in [0, steps={steps}] or None, got {warmup_steps!r}")
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")
        if clip_norm is not None and not clip_norm > 0:
            raise ValueError(f"clip_norm must be positive or None, got {clip_norm!r}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be non-negative, got {weight_decay!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
    if devices is not None and devices != "all":
        if _is_int(devices):
            if not 1 <= devices <= len(jax.devices()):
                raise ValueError(f"devices={devices} but {len(jax.devices())} are available; pass a count in "
                                 f"[1, {len(jax.devices())}], 'all', a list of devices or None")
        elif isinstance(devices, str) or not hasattr(devices, "__iter__"):
            raise ValueError(f"devices must be None, 'all', a count or a list of devices, got {devices!r}")
        elif len(list(devices)) == 0:
            raise ValueError("devices is an empty list")


def _ema_update(ema, params, decay, step):
    """One step of the exponential moving average of the parameters after ``step`` updates.

    The effective decay ``min(decay, (1 + step) / (10 + step))`` starts small, so the average
    forgets the initial parameters within the first few hundred steps instead of being pulled
    towards them for ~1/(1 − decay) steps. ``ema=None`` (averaging off) stays ``None``."""
    if ema is None:
        return None
    d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
    return jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params)


# examples whose prepared work is computed together: 64 steps of 512 (64 OT problems of 512
# points, 64 MB of costs) — enough problems for every core, bounded memory for large batches
_PREPARE_EXAMPLES = 32_768


@eqx.filter_jit
def _prepare_chunk(model, x, condition, key, step0, active, *, num_steps, batch_size, loss):
    """``loss.prepare`` for the steps ``step0 + i`` (``i < num_steps``) of a chunk, stacked on a
    leading axis (zeros past ``active``). It is a program of its own, run on one device before
    the chunk (a host callback inside a sharded program stalls its collectives). The steps run
    vmapped in equal blocks of at most ``_PREPARE_EXAMPLES`` examples, so a host solver inside
    (OT-CFM's assignment) gets a whole block in one call and uses every core; blocks that start
    past ``active`` are skipped."""
    max_block = max(1, _PREPARE_EXAMPLES // batch_size)
    n_blocks = -(-num_steps // max_block)
    block = -(-num_steps // n_blocks)  # equal blocks: the padding wastes fewer than n_blocks steps
    blocks = jnp.arange(n_blocks * block).reshape(n_blocks, block)
    prepare_block = jax.vmap(lambda i: loss.prepare(model, *step_batch(x, condition, key, step0 + i, batch_size)))
    skipped = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(prepare_block, blocks[0]))
    prepared = jax.lax.map(lambda b: jax.lax.cond(b[0] < active, prepare_block, lambda _: skipped, b), blocks)
    return jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:])[:num_steps], prepared)


@eqx.filter_jit
def _train_chunk(state, x, condition, key, prepared, *, num_steps, batch_size, loss, optimizer, batch_sharding,
                 ema_decay=None, sharded_data=False, streamed=None, skip_nonfinite=0):
    """The first ``active`` (traced, at most ``num_steps``) optimisation steps of one
    ``lax.scan`` over ``num_steps``; the rest are skipped by a ``lax.cond`` at no cost. A run
    whose last chunk is shorter than ``eval_every`` thus reuses the compiled chunk instead of
    compiling another one (80 s for a multi-scale image flow). Steps past ``active`` report NaN.

    A step whose loss or gradient is not finite is not applied. Up to ``skip_nonfinite``
    consecutive such steps are skipped (``run`` counts the current run of them, carried from
    chunk to chunk); the next one freezes every later step, so the returned parameters are the
    last good ones and ``bad_step`` says where it broke. ``applied[i]`` says whether step ``i``
    was applied.

    ``ema`` (``None`` when averaging is off) is the moving average of the parameters, updated
    after every applied step with ``ema_decay``.

    ``prepared`` (``None``, or :func:`_prepare_chunk`'s stack) gives each step its ``prepared=``.
    With ``sharded_data`` the rows of ``x`` are spread over the mesh and each device draws its
    part of the batch from its own (:func:`device_batches`). ``streamed`` (with ``x`` and
    ``condition`` None) is :func:`read_chunk`'s stack of the chunk's minibatches, read from disk.
    """
    params, opt_state, ema, static, step0, bad_step, run, active = state

    def one_step(carry, inputs):
        return jax.lax.cond(inputs[0] < active, optimisation_step,
                            lambda c, _: (c, (jnp.full((), jnp.nan), jnp.zeros((), bool))), carry, inputs)

    def optimisation_step(carry, inputs):
        i, prep, batch = inputs
        params, opt_state, ema, bad_step, run = carry
        step = step0 + i
        if batch is not None:
            (xb, cb), k_loss = batch, step_keys(key, step)[1]
        elif sharded_data:
            xb, cb, k_loss = device_batches(x, condition, key, step, batch_size, batch_sharding.mesh)
        else:
            xb, cb, k_loss = step_batch(x, condition, key, step, batch_size)
        if batch_sharding is not None:
            xb = jax.lax.with_sharding_constraint(xb, batch_sharding)
            cb = None if cb is None else jax.lax.with_sharding_constraint(cb, batch_sharding)
        extra = {} if prep is None else {"prepared": prep}

        def loss_of(p):
            return loss(eqx.combine(p, static), xb, cb, k_loss, **extra)

        value, grads = eqx.filter_value_and_grad(loss_of)(params)
        grad_finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
        finite = jnp.isfinite(value) & grad_finite
        running = bad_step < 0
        ok = finite & running
        updates, new_opt = optimizer.update(grads, opt_state, params)
        new_params = eqx.apply_updates(params, updates)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
        ema = keep(_ema_update(ema, new_params, ema_decay, step), ema)
        params, opt_state = keep(new_params, params), keep(new_opt, opt_state)
        run = jnp.where(finite, 0, run + 1)
        bad_step = jnp.where(running & (run > skip_nonfinite), step, bad_step)
        return (params, opt_state, ema, bad_step, run), (value, ok)

    (params, opt_state, ema, bad_step, run), (losses, applied) = jax.lax.scan(
        one_step, (params, opt_state, ema, bad_step, run), (jnp.arange(num_steps), prepared, streamed)
    )
    return params, opt_state, ema, bad_step, run, losses, applied


@eqx.filter_jit
def _eval_loss(model, x, condition, key, *, loss, batch_size):
    """Mean loss over all of ``x`` in fixed-size batches (the tail is a smaller batch)."""
    n = x.shape[0]
    full = n // batch_size
    total = jnp.zeros(())
    if full:
        xs = x[: full * batch_size].reshape(full, batch_size, *x.shape[1:])
        cs = None if condition is None else condition[: full * batch_size].reshape(full, batch_size, -1)

        def body(acc, inputs):
            xb, cb = inputs
            return acc + loss(model, xb, cb, key) * batch_size, None

        total, _ = jax.lax.scan(body, total, (xs, cs))
    rest = n - full * batch_size
    if rest:
        ct = None if condition is None else condition[full * batch_size :]
        total = total + loss(model, x[full * batch_size :], ct, key) * rest
    return total / n


def fit(model, data, *, key, loss=None, steps: int = 2_000, batch_size: int = 256,
        learning_rate: float = 1e-3, optimizer: optax.GradientTransformation | None = None,
        warmup_steps: int | None = None, schedule: str = "cosine", clip_norm: float | None = 5.0,
        weight_decay: float = 0.0, val_data=None, val_fraction: float = 0.1,
        eval_every: int = 100, patience: int | None = None, restore_best: bool = True,
        progress: bool = True, checkpoint: str | Path | None = None, resume: bool = False,
        devices=None, shard_data: bool = False, eval_batch_size: int = 4096, callback=None,
        ema_decay: float | None = None, val_metric=None, skip_nonfinite: int = 0):
    """Train ``model`` on ``data``; returns ``(trained_model, History)``.

    **Arguments:**
    - `model`: any Equinox model the loss understands (a flow for the default loss).
    - `data`: an array ``(n, *event_shape)`` or a tuple ``(x, condition)`` with ``condition``
      of shape ``(n, cond_dim)``; ``None`` for a loss that draws its own examples from the
      model (it declares zero-width data, as :class:`geoflow.vi.ElboLoss` does).
    - `key`: the only source of randomness (validation split, batches, loss noise).
    - `loss`: ``loss(model, x, condition, key) -> scalar``; default :func:`maximum_likelihood`.
    - `steps`, `batch_size`, `learning_rate`; `optimizer` replaces the default Adam with
      `warmup_steps` (default 5% of steps, at most 500) of linear warm-up then `schedule`
      decay (``"cosine"``, ``"polynomial"``, ``"constant"``), clipped to `clip_norm`.
    - `val_data` or `val_fraction`: validation set (held out from ``data`` by default).
    - `eval_every`: steps per jitted chunk; validation, progress and checkpoints happen then.
    - `patience`: stop after this many evaluations without improvement (``None``: never).
    - `restore_best`: return the parameters with the best validation loss.
    - `val_metric`: ``val_metric(model, x, condition) -> float`` (lower is better) replaces the
      loss as the validation figure: recorded in ``history.val_loss``, it selects the best
      model and drives `patience`. E.g. a flow-matching model's held-out NLL: the loss on held-out
      points can bottom out long before the likelihood does.
    - `checkpoint`: a file written after every chunk (a dict: ``model``, the raw parameters being
      optimised; ``ema_model``, their average or ``None``; ``best_model``; ``opt_state``;
      ``step``; ``history``); with `resume=True` an existing one is loaded and training
      continues from its step, identically to an uninterrupted run. The resumed model's static
      fields (e.g. a sampler's setting) are those of `model`; its trainable arrays must match the
      checkpoint's in shape and dtype.
    - `devices`: ``None`` (default device), ``"all"``, a count, or a list of devices for data
      parallelism: the batch is sharded over a one-axis ``Mesh``, parameters are replicated.
      On a CPU-only machine, :func:`geoflow.train_devices.split_cpu` first makes its cores
      that many devices.
      After ``jax.distributed.initialize()`` the mesh spans every process's devices: every
      process calls ``fit`` with the same arguments and data and returns the same model; only
      process 0 writes the checkpoint (put it on a file system every process reads, for
      ``resume``); a loss's host solver runs in every process on its own copy. A process that
      dies stops the others through JAX's coordination service within its heartbeat timeout.
    - `shard_data`: with `devices`, each process passes only its own part of the data, which
      is spread over its devices instead of copied to every one (a device holds ``n / devices``
      examples); each device draws its ``batch_size / devices`` examples from its own rows.
      The trade-off against the default (every device holds everything, batches drawn from
      the whole set): a batch is stratified, an equal share from each device's rows, so the
      parts should be random splits of the data; the run is a pure function of the key for a
      given partition of the rows over the devices (not of the data alone). Every device keeps
      the same number of rows: a remainder is left out with a warning. The validation split is
      drawn within each process's part. Losses with a host solver (``prepare``) need the whole
      batch on one device and are refused.
    - `data` may also live on disk: a NumPy memory map (``np.load("x.npy", mmap_mode="r")``, or
      a tuple of two). Before each chunk of `eval_every` steps the host reads the rows the
      chunk's steps draw — the same rows, hence the same run, as with the array in memory —
      and moves them to the device in one transfer, so a set larger than host memory trains
      with one host sync per chunk, not per step. Validation then needs `val_data` (in memory)
      or ``val_fraction=0``; losses that prepare or check their data on the host, `shard_data`
      and several processes are refused with data on disk.
    - `callback`: ``callback(step, model, history)`` after every chunk (after the checkpoint
      is written); returning ``True`` stops training (``history.stop_reason == "callback"``).
      With `devices`, ``model`` is this process's copy on one device, so what the callback
      computes (samples, metrics) runs once, not on every device of the mesh.
    - `ema_decay`: keep an exponential moving average of the parameters with this decay (e.g.
      0.999; the first steps use ``min(ema_decay, (1 + step) / (10 + step))``). The average is
      the model that is validated, passed to `callback`, kept as the best and returned; the
      optimiser keeps stepping the raw parameters. ``None`` (default): no averaging.
    - `skip_nonfinite`: how many consecutive steps with a non-finite loss or gradient are
      skipped (not applied: parameters, optimizer state and average stay as they were) before
      training stops; each skipped step is listed in ``history.skipped_steps``. For a rare
      example that overflows in a long run; a model that diverges still stops.

    A non-finite loss or gradient beyond those stops training with a warning; the model returned
    is the last one with finite loss (``history.stop_reason == "nan"``).
    """
    _check_fit_arguments(steps=steps, batch_size=batch_size, learning_rate=learning_rate, warmup_steps=warmup_steps,
                         schedule=schedule, clip_norm=clip_norm, weight_decay=weight_decay, val_fraction=val_fraction,
                         eval_every=eval_every, patience=patience, eval_batch_size=eval_batch_size,
                         ema_decay=ema_decay, devices=devices, optimizer=optimizer, skip_nonfinite=skip_nonfinite)
    loss = maximum_likelihood if loss is None else loss
    if shard_data and (devices is None or isinstance(loss, HostPrepared)):
        raise ValueError("shard_data=True needs devices= (the mesh the rows are spread over) and a loss without a "
                         f"host solver; got devices={devices!r} and {type(loss).__name__}")
    split_key, train_key, eval_key = jax.random.split(key, 3)
    checks = _data_checks(model, loss)
    if data is None:
        if checks[0] != (0,):
            raise ValueError("data=None needs a loss that draws its own examples from the model (it declares "
                             f"zero-width data, e.g. geoflow.vi.ElboLoss); {type(loss).__name__} trains on data")
        data = np.zeros((1, 0), np.float32)  # a single empty row: nothing to hold out for validation
    on_disk = is_on_disk(data)
    if on_disk:
        _check_data_on_disk(loss, checks, shard_data, val_data, val_fraction)
        x, condition = rows_on_disk(data, model, checks[0])
    else:
        x, condition = as_arrays(data, model, *checks)
    model = _data_dependent_init(model, all_processes(x) if shard_data else x, loss, jax.random.fold_in(key, 3))
    if on_disk:
        train, val = (x, condition), None if val_data is None else as_arrays(val_data, model, *checks)
    elif val_data is not None:
        train, val = (x, condition), as_arrays(val_data, model, *checks)
    elif val_fraction > 0:
        train, val = split_validation(x, condition, val_fraction,
                            jax.random.fold_in(split_key, jax.process_index()) if shard_data else split_key)
    else:
        train, val = (x, condition), None
    if val_metric is not None and val is None:
        raise ValueError("val_metric needs validation data: give val_data or a val_fraction above 0")
    mesh = make_mesh(devices)
    if mesh is not None and batch_size % mesh.size:
        raise ValueError(f"batch_size {batch_size} must be a multiple of the {mesh.size} devices")
    if optimizer is None:
        warm = min(500, steps // 20) if warmup_steps is None else warmup_steps
        optimizer = make_optimizer(float(learning_rate), int(steps), int(warm), schedule,
                                   None if clip_norm is None else float(clip_norm), float(weight_decay))
    params, static = eqx.partition(model, trainable(model))
    checkpoint = None if checkpoint is None else Path(checkpoint)
    if resume and checkpoint is not None and checkpoint.exists():
        state = TrainingState.resumed(checkpoint, model, ema_decay)
    else:
        state = TrainingState.start(params, optimizer, ema_decay)
    placed = Placement(mesh, isinstance(loss, HostPrepared), train, val, shard_data, on_disk)
    state.put_on(placed)
    bar = _progress_bar(steps, state.step) if progress else None
    clock = StepClock()
    chunk = min(eval_every, steps)  # steps per compiled chunk; the last one may run fewer
    ema_decay = None if ema_decay is None else float(ema_decay)
    while state.step < steps:
        n = min(chunk, steps - state.step)
        t0, cpu0 = time.perf_counter(), time.process_time()
        step0, active = jnp.asarray(state.step, jnp.int32), jnp.asarray(n, jnp.int32)
        prepared = None
        if placed.host_solver:  # a program of its own, on one device
            prepared = put_tree(_prepare_chunk(eqx.combine(on_one_device(state.params, mesh), static),
                                                *placed.prepare_data, train_key, step0, active, num_steps=chunk,
                                                batch_size=batch_size, loss=loss), mesh)
        streamed = None
        if placed.on_disk is not None:  # this chunk's minibatches, read in one pass
            streamed = read_chunk(placed.on_disk, train_key, state.step, n, num_steps=chunk, batch_size=batch_size,
                                   batch_sharding=placed.batch_sharding)
        chunk_state = (state.params, state.opt_state, state.ema, static, step0, state.bad_step, state.nonfinite_run,
                       active)
        state.params, state.opt_state, state.ema, state.bad_step, state.nonfinite_run, losses, applied = _train_chunk(
            chunk_state, *placed.train, train_key, prepared, num_steps=chunk, batch_size=batch_size, loss=loss,
            optimizer=optimizer, batch_sharding=placed.batch_sharding, ema_decay=ema_decay, sharded_data=shard_data,
            streamed=streamed, skip_nonfinite=skip_nonfinite)
        losses, applied = np.asarray(losses)[:n], np.asarray(applied)[:n]
        clock.add(n, time.perf_counter() - t0, first=not state.history.steps)
        if state.stop_at_nan(losses, applied):
            allowed = f" (after {skip_nonfinite} consecutive skipped steps)" if skip_nonfinite else ""
            warnings.warn(
                f"fit: the loss or its gradient became NaN/inf at step {state.step}{allowed}; training stopped and "
                f"the model from the last good step is returned", RuntimeWarning, stacklevel=2,
            )
            break
        state.record_chunk(n, losses, applied)
        model_now = eqx.combine(state.evaluated, static)  # the model a user gets: the average when there is one
        postfix = {"loss": f"{state.history.train_loss[-1]:.4f}"}
        if placed.val is not None:
            evaluated = placed.on_eval_device(model_now)
            v = float(_eval_loss(evaluated, *placed.val, eval_key, loss=loss, batch_size=eval_batch_size)
                      if val_metric is None else val_metric(evaluated, *placed.val))
            state.record_validation(v)
            postfix["val"] = f"{v:.4f}"
        if clock.seconds > 0:
            postfix["steps/s"] = f"{clock.rate:.0f}"
        if bar is not None:
            bar.set_postfix(postfix, refresh=False)
            bar.update(n)
        state.history.cpu_time += time.process_time() - cpu0
        if checkpoint is not None:
            save_checkpoint(state, checkpoint, static, model_now, clock)
        if patience is not None and state.stale >= patience:
            state.history.stop_reason = "early_stopping"
            break
        # on a mesh the callback gets this process's copy on one device: a program of replicated
        # inputs would run whole on every device, and two device programs side by side on a split
        # CPU share one thread pool (a long protein run's sampling callback hung there once)
        if callback is not None and callback(state.step, on_one_device(model_now, mesh), state.history):
            state.history.stop_reason = "callback"
            break
    if bar is not None:
        bar.close()
    history = state.history
    history.wall_time += clock.wall()
    if clock.seconds > 0:
        history.steps_per_second = clock.rate
    final = state.evaluated
    if restore_best and state.best_params is not None and history.stop_reason != "nan":
        final = state.best_params
    # the model on one device, for the reason the callback gets it so: sampling a replicated
    # model on a split CPU ran on both devices at once and hung a long protein run's final draw
    return eqx.combine(on_one_device(final, mesh), static), history


def _check_data_on_disk(loss, checks, shard_data, val_data, val_fraction) -> None:
    """What training from disk cannot do, refused by name before anything is read."""
    if isinstance(loss, HostPrepared) or checks[1] is not None:
        raise ValueError(f"data on disk (a memory map) works with losses that neither prepare nor check their data on "
                         f"the host; {type(loss).__name__} does: load the data into memory")
    if shard_data or jax.process_count() > 1:
        raise ValueError("data on disk (a memory map) trains in one process without shard_data; pass each process's "
                         "part in memory with shard_data=True instead")
    if val_data is None and val_fraction > 0:
        raise ValueError("with data on disk (a memory map) give val_data (in memory) or val_fraction=0; a held-out "
                         f"fraction ({val_fraction}) of a set on disk would have to be read whole")


def _data_checks(model, loss):
    """``(example shape or None, check_data or None)``: what the loss declares of its data."""
    return (loss.data_shape(model) if isinstance(loss, DeclaresDataShape) else None,
            loss.check_data if isinstance(loss, ChecksData) else None)


def _progress_bar(steps: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=steps, initial=initial, desc="fit", file=sys.stderr, dynamic_ncols=True)
