"""Suite-wide settings, applied before any test touches JAX.

The suite is mostly compiling (64% of test time, see the report below), and XLA:CPU compiles
every fusion into its own LLVM module. LLVM's -O1 compiles 25-70% faster per function than the
default -O2 (a 4-layer NSF training chunk 9.1 -> 6.9 s, a small DFM's sampler 6.0 -> 1.8 s) and ran
the same steps as fast (a 2000-step NSF fit: 20.6 s at both levels; -O0 compiles faster still but
runs 2.2x slower). The flag changes only code generation, not the HLO. Subprocesses and notebook
kernels inherit it through the environment.
"""

import os

_FLAG = "--xla_backend_optimization_level=1"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}".strip()


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
