"""One integration path for every continuous model: :class:`ODESolver` says *how* to solve
(diffrax solver, fixed steps or tolerances, a step cap, the adjoint), :meth:`ODESolver.solve`
does it. Euclidean CNFs, flow matching and (later) Riemannian flows all call this.
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax

# vector-field evaluations per step of the explicit Runge–Kutta solvers (FSAL counted once)
_STAGES = {"Euler": 1, "Heun": 2, "Midpoint": 2, "Ralston": 2, "Bosh3": 3, "Tsit5": 6,
           "Dopri5": 6, "Dopri8": 12}

ADJOINTS = ("recursive", "backsolve")


class ODESolver(eqx.Module):
    """How an ODE is integrated.

    **Arguments:**
    - `solver`: any diffrax solver instance (default ``diffrax.Tsit5()``).
    - `steps`: a fixed number of equal steps, or ``None`` for adaptive steps with `rtol`/`atol`.
    - `max_steps`: the cap on steps; reaching it is an error that says so (never a hang).
    - `adjoint`: ``"recursive"`` (checkpointed back-propagation through the solver, diffrax's
      default and exact for the discretised solve) or ``"backsolve"`` (the continuous adjoint:
      O(1) memory, gradients exact only up to the solver's tolerance).
    """

    solver: diffrax.AbstractSolver = eqx.field(static=True, default_factory=diffrax.Tsit5)
    steps: int | None = eqx.field(static=True, default=None)
    rtol: float = eqx.field(static=True, default=1e-5)
    atol: float = eqx.field(static=True, default=1e-5)
    max_steps: int = eqx.field(static=True, default=4096)
    adjoint: str = eqx.field(static=True, default="recursive")

    def __check_init__(self):
        if self.adjoint not in ADJOINTS:
            raise ValueError(f"unknown adjoint {self.adjoint!r}; expected one of {ADJOINTS}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be a positive number of fixed steps or None, got {self.steps}")
        if self.steps is not None and self.steps > self.max_steps:
            raise ValueError(f"steps={self.steps} exceeds max_steps={self.max_steps}")

    @property
    def description(self) -> str:
        """What the solver does, for run records: ``"Tsit5, adaptive (rtol 1e-05, atol 1e-05)"``."""
        name = type(self.solver).__name__
        if self.steps is None:
            return f"{name}, adaptive (rtol {self.rtol:g}, atol {self.atol:g})"
        return f"{name}, {self.steps} fixed steps"

    @property
    def evaluations_per_step(self) -> int:
        return _STAGES.get(type(self.solver).__name__, 1)

    def _controller_and_dt0(self, t0, t1):
        if self.steps is None:
            return diffrax.PIDController(rtol=self.rtol, atol=self.atol), None
        return diffrax.ConstantStepSize(), (t1 - t0) / self.steps

    def _adjoint(self):
        if self.adjoint == "backsolve":
            return diffrax.BacksolveAdjoint(solver=self.solver)
        return diffrax.RecursiveCheckpointAdjoint()

    def solve(self, vector_field, y0, t0: float, t1: float, args=None, save_ts=None):
        """Integrate ``dy/dt = vector_field(t, y, args)`` from ``t0`` to ``t1``.

        ``y0`` may be any pytree. Returns ``(y1, num_steps)``; with ``save_ts`` (a 1-D array of
        times) ``y1`` holds the states at those times with a leading time axis instead.
        """
        controller, dt0 = self._controller_and_dt0(t0, t1)
        saveat = diffrax.SaveAt(t1=True) if save_ts is None else diffrax.SaveAt(ts=save_ts)
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(vector_field), self.solver, t0=t0, t1=t1, dt0=dt0, y0=y0, args=args,
            saveat=saveat, stepsize_controller=controller, adjoint=self._adjoint(),
            max_steps=self.max_steps, throw=False,
        )
        failed = sol.result != diffrax.RESULTS.successful
        message = (f"the ODE solve did not finish within max_steps={self.max_steps} steps "
                   f"(or the solver failed); raise max_steps, use fewer fixed steps, or loosen rtol/atol")
        ys = jax.tree.map(lambda a: eqx.error_if(a, failed, message), sol.ys)
        if save_ts is None:
            ys = jax.tree.map(lambda a: a[0], ys)
        return ys, sol.stats["num_steps"]

    def nfe(self, num_steps):
        """Vector-field evaluations of a solve that took ``num_steps`` steps (RK stage count)."""
        return num_steps * self.evaluations_per_step


def fixed(steps: int = 100, solver: str | diffrax.AbstractSolver = "euler", **kw) -> ODESolver:
    """An :class:`ODESolver` with ``steps`` equal steps of ``solver`` (a name or an instance)."""
    return ODESolver(solver=make_solver(solver), steps=steps, max_steps=max(steps, 1), **kw)


SOLVERS = {"euler": diffrax.Euler, "heun": diffrax.Heun, "midpoint": diffrax.Midpoint,
           "tsit5": diffrax.Tsit5, "dopri5": diffrax.Dopri5, "dopri8": diffrax.Dopri8,
           "bosh3": diffrax.Bosh3}


def make_solver(solver) -> diffrax.AbstractSolver:
    if isinstance(solver, diffrax.AbstractSolver):
        return solver
    try:
        return SOLVERS[solver]()
    except KeyError:
        raise ValueError(f"unknown ODE solver {solver!r}; expected one of {sorted(SOLVERS)} "
                         "or a diffrax solver instance") from None
