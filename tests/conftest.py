"""Suite-wide settings, applied before any test touches JAX.

The suite is mostly compiling, and most compiles are small: every primitive a test runs outside
jit (geometry checks, quadrature grids, model construction) is compiled as a program of its own
for each new shape, about 30 ms apiece. Two XLA:CPU flags cut that, neither changing the HLO:

- ``xla_cpu_use_fusion_emitters=false``: the MLIR fusion emitters build a fresh MLIR context, with
  every dialect loaded, for each fused kernel, which is most of a small program's compile time
  (perf). The older LLVM IR emitters skip that: a trivial op compiles in 21 ms instead of 29,
  ``test_flows`` + ``test_manifolds`` run in 136 s instead of 191 s (compile 120 -> 70 s), the whole
  suite in 10:41 instead of 14:31. Their kernels run up to 20% slower (a 4-layer NSF fit 781 -> 633
  steps/s), which the suite does not feel; library users keep XLA's defaults.
- ``xla_backend_optimization_level=1`` (LLVM -O1): 25-70% faster compiles per function than -O2
  at the same speed (a 2000-step NSF fit 20.6 s at both); -O0 runs 2.2x slower.

Subprocesses and notebook kernels inherit them through the environment. XLA aborts the process
on a flag it does not know (jaxlib 0.11 dropped the fusion-emitter switch), and under pytest's
output capture that abort is silent, so each flag is first tried in a subprocess and set only
where this jaxlib accepts it.
"""

import os
import subprocess
import sys

_FLAGS = {"xla_backend_optimization_level": "1", "xla_cpu_use_fusion_emitters": "false"}
_PROBE = "import jax.numpy as jnp; jnp.zeros(1).block_until_ready()"


def _accepted(flags: dict[str, str]) -> list[str]:
    """The flags XLA parses without aborting, each tried alone in a fresh interpreter."""
    tries = {name: subprocess.Popen([sys.executable, "-c", _PROBE], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--{name}={value}"})
             for name, value in flags.items()}
    return [f"--{name}={flags[name]}" for name, process in tries.items() if process.wait() == 0]


_missing = {name: value for name, value in _FLAGS.items() if name not in os.environ.get("XLA_FLAGS", "")}
if _missing:
    os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), *_accepted(_missing)]).strip()


# GEOFLOW_COMPILE_REPORT=FILE: append one JSON line per test with the seconds it spent tracing,
# lowering and compiling (JAX's monitoring events) beside its wall time, to see where the suite goes.
_REPORT = os.environ.get("GEOFLOW_COMPILE_REPORT")
if _REPORT:
    import json
    import time

    import jax
    import pytest

    _totals: dict[str, float] = {}

    def _listen(event, duration, **kwargs):
        for stage in ("jaxpr_trace", "jaxpr_to_mlir_module", "backend_compile"):
            if stage in event:
                _totals[stage] = _totals.get(stage, 0.0) + duration

    jax.monitoring.register_event_duration_secs_listener(_listen)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(item):
        _totals.clear()
        start = time.perf_counter()
        try:
            return (yield)
        finally:
            row = {"test": item.nodeid, "wall": time.perf_counter() - start, **_totals}
            with open(_REPORT, "a") as f:
                f.write(json.dumps(row) + "\n")


def pytest_collection_modifyitems(config, items):
    """Slow tests first (a stable sort keeps each group's order), for a run that takes both groups
    (plain ``pytest``; ``./dev test`` and ``./dev slow`` take one each). With one worker per core
    (``-n auto``) the workers take tests as they finish, so the minute-long tests start early and
    the short ones fill in around them, instead of one starting last and running alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
