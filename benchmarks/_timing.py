"""Timing helpers shared by the side-by-side benchmarks (compile or warm up first, then time)."""

from __future__ import annotations

import time


def timed(fn, reps: int = 3) -> float:
    """Seconds per call of ``fn()``, after one untimed call (compilation, caches)."""
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def loop_rate(step, steps: int, warmup: int = 10) -> float:
    """Calls per second of a training ``step()`` (a peer's loop), after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - t0)


def fit_rate(run, steps: int):
    """``(steps per second, result)`` of a ``geoflow.fit`` call ``run()`` that trains ``steps``
    steps, timed on its second call so that compilation is excluded."""
    run()
    t0 = time.perf_counter()
    result = run()
    return steps / (time.perf_counter() - t0), result
