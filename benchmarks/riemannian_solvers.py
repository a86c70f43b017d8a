"""Fixed-step Riemannian solvers against ambient steps projected only at the end, on S² and
SO(3), for fields whose flow is known in closed form: a rotation whose speed grows with time,
``ω(t) = ω₀ (1 + 2t)`` (so the flow turns by ``ω₀ (t + t²)``), ``v = ω(t) × x`` on S² and
``v = R [ω(t)]×`` on SO(3) (body rates). Reported per manifold, method and step count: the
error at t = 1 against the exact rotation, and, for the ambient steps, how far the end point
lay off the manifold before its projection (``drift``). The Riemannian iterates lie on the
manifold at every step (``drift`` 0 to float precision).

Usage: python benchmarks/riemannian_solvers.py [--quick]
"""

from __future__ import annotations

import argparse
import json

import equinox as eqx
import jax
import jax.numpy as jnp

import geoflow as gf
from geoflow.continuous import ODEFlow
from manifolds import SO3, Sphere, UniformOn, hat, riemannian_sample, rotvec_to_matrix
from manifolds.matching import RIEMANNIAN_METHODS
from _results import RESULTS, write_results

OMEGA = jnp.array([0.3, -1.2, 2.0])


class Spin(eqx.Module):
    """``ω(t) × x`` on S², ``R [ω(t)]×`` on SO(3), with ``ω(t) = ω₀ (1 + 2t)``."""

    on_rotations: bool = eqx.field(static=True)
    shape: tuple = eqx.field(static=True)
    cond_shape: None = None

    def __call__(self, t, x, condition=None):
        w = OMEGA * (1 + 2 * t)
        return x @ hat(w) if self.on_rotations else jnp.cross(w, x)


def exact(x0, on_rotations):
    turn = rotvec_to_matrix(OMEGA * 2.0)  # ∫₀¹ ω(t) dt = 2 ω₀ (the axis is fixed)
    return jax.vmap(lambda x: x @ turn)(x0) if on_rotations else x0 @ turn.T


def ambient(flow, x0, steps, method):
    """The same method's steps in the ambient space, the velocity projected at each stage's
    point, the state left as it lands: ``(end point before projection, after)``."""
    h = 1.0 / steps
    v = lambda t, x: flow.velocity(t, x)

    def step(x, k):
        t = k * h
        if method == "euler":
            return x + h * v(t, x), None
        if method == "midpoint":
            return x + h * v(t + 0.5 * h, x + 0.5 * h * v(t, x)), None
        k1 = v(t, x)
        k2 = v(t + 0.5 * h, x + 0.5 * h * k1)
        k3 = v(t + 0.5 * h, x + 0.5 * h * k2)
        k4 = v(t + h, x + h * k3)
        return x + h * (k1 + 2 * k2 + 2 * k3 + k4) / 6, None

    end = jax.vmap(lambda x: jax.lax.scan(step, x, jnp.arange(steps, dtype=x.dtype))[0])(x0)
    return end, jax.vmap(flow.manifold.proj)(end)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    step_counts = (4, 16) if args.quick else (4, 8, 16, 32, 64)
    rows = []
    for name, manifold, on_rotations in (("S²", Sphere(2), False), ("SO(3)", SO3(), True)):
        flow = ODEFlow(Spin(on_rotations, manifold.shape), manifold=manifold)
        model = gf.Transformed(UniformOn(manifold), flow)
        x0 = model.base.sample(jax.random.key(0), 256)
        truth = exact(x0, on_rotations)
        error = lambda x: float(jnp.max(jnp.sqrt(jnp.sum((x - truth).reshape(len(x), -1) ** 2, -1))))
        off = lambda x: float(jnp.max(jnp.sqrt(jnp.sum((x - jax.vmap(manifold.proj)(x)).reshape(len(x), -1) ** 2, -1))))
        for method in RIEMANNIAN_METHODS:
            for steps in step_counts:
                riem = riemannian_sample(model, jax.random.key(0), 256, steps, method=method)
                end, projected = ambient(flow, x0, steps, method)
                row = {"manifold": name, "method": method, "steps": steps, "riemannian_error": error(riem),
                       "riemannian_drift": off(riem), "ambient_error": error(projected), "ambient_drift": off(end)}
                rows.append(row)
                print(json.dumps({k: (f"{v:.2e}" if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    write_results(RESULTS / "riemannian_solvers.json", {"omega": OMEGA.tolist(), "points": 256, "rows": rows}, quick=args.quick, indent=1)


if __name__ == "__main__":
    main()
