"""Timing helpers shared by the side-by-side benchmarks (compile or warm up first, then time)."""

from __future__ import annotations

import time


def timed(fn, reps: int = 3, sync=None) -> float:
    """Seconds per call of ``fn()``, after one untimed call (compilation, caches); ``sync()``
    waits for queued device work (a peer's CUDA stream) before the clock is read."""
    fn()
    sync and sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync and sync()
    return (time.perf_counter() - t0) / reps


def fastest(fn, reps: int) -> float:
    """Seconds of the fastest of ``reps`` calls of ``fn()`` (a JAX computation) after a warm-up
    call: this machine's timings wander by tens of percent from one call to the next, and the
    minimum is the stable figure."""
    import jax

    jax.block_until_ready(fn())
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return best


def loop_rate(step, steps: int, warmup: int = 10, sync=None) -> float:
    """Calls per second of a training ``step()`` (a peer's loop), after ``warmup`` calls;
    ``sync`` as for :func:`timed`."""
    for _ in range(warmup):
        step()
    sync and sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync and sync()
    return steps / (time.perf_counter() - t0)


def fit_rate(model, data, loss, optimizer, steps: int, batch_size: int, devices=None):
    """``(steps per second, trained model, cores busy)`` of ``geoflow.fit`` with a fixed
    ``optimizer`` (one object, so the second call reuses the compiled chunk), no validation, on
    ``devices`` (``fit``'s data parallelism), timed on the second call so that compilation is
    excluded. Cores busy is the process's CPU time over the wall time of that call."""
    import jax

    import geoflow as gf

    run = lambda: gf.fit(model, data, key=jax.random.key(1), loss=loss, steps=steps, batch_size=batch_size,
                         optimizer=optimizer, val_fraction=0.0, eval_every=steps, progress=False, devices=devices)
    run()
    t0, c0 = time.perf_counter(), time.process_time()
    trained, _ = run()
    wall = time.perf_counter() - t0
    return steps / wall, trained, (time.process_time() - c0) / wall


def fit_with_own_trainer(lib: str, model, x, epochs: int, *, batch_size: int, learning_rate: float, seed: int = 1,
                         warm_up: bool = True):
    """``(trained model, steps, seconds)`` of ``lib``'s own training function (``"geoflow"``:
    ``geoflow.fit``; ``"flowjax"``: ``flowjax.train.fit_to_data``) on ``x`` for ``epochs`` passes,
    both with 10% held out for validation, plain Adam at a constant ``learning_rate`` and no early
    stop, so each takes the same steps. The seconds are those of a second call, after a first,
    compiling one (``warm_up=False`` skips it, for a call that only needs the model)."""
    import jax

    import geoflow as gf

    steps = epochs * ((len(x) - int(round(0.1 * len(x)))) // batch_size)
    if lib == "geoflow":
        run = lambda: gf.fit(model, x, key=jax.random.key(seed), steps=steps, batch_size=batch_size,
                             learning_rate=learning_rate, schedule="constant", warmup_steps=0, clip_norm=None,
                             val_fraction=0.1, progress=False)[0]
    else:
        from flowjax.train import fit_to_data

        run = lambda: fit_to_data(jax.random.key(seed), model, x, learning_rate=learning_rate, max_epochs=epochs,
                                  max_patience=epochs, batch_size=batch_size, val_prop=0.1, show_progress=False)[0]
    if warm_up:
        run()
    t0 = time.perf_counter()
    trained = run()
    return trained, steps, time.perf_counter() - t0


def adam_step_timing(model, loss, batch, reps: int, learning_rate: float = 1e-3, blocks: int = 5):
    """``(compile seconds, microseconds per step)`` of one jitted Adam step of
    ``loss(model, batch)`` — the same optimiser and loop for every library, so the figure is
    the model's own cost. The steps run in ``blocks`` blocks of ``reps`` and the fastest block
    counts: on a shared 2-core machine a mean over one block swung by 2× between runs."""
    import equinox as eqx
    import jax
    import optax

    opt = optax.adam(learning_rate)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    state = opt.init(params)

    @jax.jit
    def step(params, state, xb):
        value, grads = jax.value_and_grad(lambda p: loss(eqx.combine(p, static), xb))(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    t0 = time.perf_counter()
    compiled = step.lower(params, state, batch).compile()
    compile_s = time.perf_counter() - t0
    params, state, value = compiled(params, state, batch)
    jax.block_until_ready(value)
    best = float("inf")
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(reps):
            params, state, value = compiled(params, state, batch)
        jax.block_until_ready(value)
        best = min(best, (time.perf_counter() - t0) / reps)
    return compile_s, best * 1e6


def bare_predict(activation: str):
    """``predict(weights, x)`` of a plain-JAX MLP with ``weights`` a list of ``(matrix (in, out),
    bias (out,))`` per layer and ``activation`` a ``jax.nn`` name between them; no library code."""
    import jax

    act = getattr(jax.nn, activation)

    def predict(w, x):
        for a, b in w[:-1]:
            x = act(x @ a + b)
        return x @ w[-1][0] + w[-1][1]

    return predict


def bare_mlp(sizes, activation: str):
    """``(weights, predict)`` of a plain-JAX MLP of layer ``sizes`` (e.g. ``[3, 64, 64, 64, 2]``):
    ``predict(weights, x (batch, sizes[0])) -> (batch, sizes[-1])`` (:func:`bare_predict`), the
    weights drawn afresh with zero biases."""
    import jax

    keys = jax.random.split(jax.random.key(0), len(sizes))
    weights = [(jax.random.normal(k, (a, b)) / a**0.5, jax.numpy.zeros(b)) for k, a, b in zip(keys, sizes[:-1], sizes[1:])]
    return weights, bare_predict(activation)


def bare_mlp_rate(sizes, activation: str, batch: int, steps: int, learning_rate: float = 1e-3) -> float:
    """Steps per second of the barest JAX training loop for an MLP of layer ``sizes`` (e.g.
    ``[3, 64, 64, 64, 2]``): AdamW on the squared error against fixed inputs and targets, every
    step fused in one jitted ``lax.scan``. No data sampling, no path, no library code — the
    ceiling any JAX implementation of that network's training step can reach on this machine,
    against which a library's own rate (and the ratio to a peer) can be read."""
    import jax
    import jax.numpy as jnp
    import optax

    weights, predict = bare_mlp(sizes, activation)
    inputs = jax.random.normal(jax.random.key(1), (batch, sizes[0]))
    targets = jnp.zeros((batch, sizes[-1]))
    return scan_step_rate(lambda w, key: jnp.mean((predict(w, inputs) - targets) ** 2), weights,
                          optax.adamw(learning_rate), steps)


def scan_step_rate(loss, params, optimizer, steps: int) -> float:
    """Steps per second of ``optimizer`` on ``loss(params, key)``, every step fused in one jitted
    ``lax.scan``, timed on a second call so compilation is excluded. ``key`` is the step's own
    (a fold of the step index): a loss that draws its batch, noise and time from it does the
    same work as a library's step; one that ignores it trains on fixed inputs (the bare ceiling)."""
    import jax
    import jax.numpy as jnp
    import optax

    @jax.jit
    def train(p):
        def step(carry, i):
            p, state = carry
            value, grads = jax.value_and_grad(loss)(p, jax.random.fold_in(jax.random.key(1), i))
            updates, state = optimizer.update(grads, state, p)
            return (optax.apply_updates(p, updates), state), value

        return jax.lax.scan(step, (p, optimizer.init(p)), jnp.arange(steps))[1]

    train(params).block_until_ready()
    t0 = time.perf_counter()
    train(params).block_until_ready()
    return steps / (time.perf_counter() - t0)
