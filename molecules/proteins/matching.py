"""Frame flow matching: the training objective of :func:`molecules.proteins.frameflow`.

Geodesic paths of rotations on a scheduler and straight lines of CA positions from the prior to
the data, FrameFlow's loss on the predicted way to the clean frames (or on the velocity), with
its auxiliary backbone-distance loss, an optional clash penalty, minibatch OT of translations and
self-conditioning. Training is ``geoflow.fit(model, points, loss=FrameFlowMatching())``.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from geoflow.continuous import ode_flow_of
from geoflow.continuous.couplings import exact_pairing
from geoflow.continuous.matching import source_is_trained
from geoflow.continuous.paths import CondOT, Scheduler
from geoflow.precision import exact_matmul
from manifolds.so3 import hat, matrix_to_rotvec, rotvec_to_matrix, vee

from .geometry import ideal_nca_c
from .model import FrameField, follow_way
from .relax import clash_loss


def rotation_path(r0, r1, t, scheduler: Scheduler):
    """The geodesic ``R_t = R₀ exp(α_t log(R₀ᵀR₁))`` and its velocity ``R_t [α̇_t ω]×``
    (closed form; ``ω`` the rotation vector of ``R₀ᵀR₁``)."""
    a, _, da, _ = scheduler.with_derivatives(t)
    omega = matrix_to_rotvec(exact_matmul(r0.T, r1))
    rt = exact_matmul(r0, rotvec_to_matrix(a * omega))
    return rt, exact_matmul(rt, hat(da * omega))


def predicted_end(rt, ct, vr, vc, t, scheduler: Scheduler):
    """The clean frames the velocity points at: each rotation continued along its geodesic for
    the remaining ``(1 − α_t)/α̇_t`` of the schedule, translations for the remaining ``1 − t``
    (exact when the velocity is the conditional target)."""
    omega = jax.vmap(lambda r, v: vee(exact_matmul(r.T, v)))(rt, vr)  # body angular velocities
    r1 = exact_matmul(rt, jax.vmap(rotvec_to_matrix)(omega / scheduler.remaining_rate(t)))
    return r1, ct + (1 - t) * vc


DISTANCE_PAIRS = ("true", "either")


def backbone_distance_loss(r_hat, c_hat, r1, c1, cutoff: float = 0.6, pairs: str = "true"):
    """FrameFlow's auxiliary losses in model units (nm): the mean squared error of the ideal N,
    CA, C atoms placed on predicted and true frames, plus that of their pairwise distances over
    the pairs closer than ``cutoff`` in the true structure (``pairs="true"``, FrameFlow's) or in
    either structure (``pairs="either"``: a clash the prediction makes between atoms far apart
    in the data is penalised too)."""
    if pairs not in DISTANCE_PAIRS:
        raise ValueError(f"pairs must be one of {DISTANCE_PAIRS}, got {pairs!r}")
    atoms_hat = ideal_nca_c(r_hat, c_hat).reshape(-1, 3)
    atoms = ideal_nca_c(r1, c1).reshape(-1, 3)
    position = jnp.mean(jnp.sum((atoms_hat - atoms) ** 2, -1))
    dist = lambda x: jnp.sqrt(jnp.sum((x[:, None] - x[None]) ** 2, -1) + 1e-10)
    d_hat, d = dist(atoms_hat), dist(atoms)
    near = d < cutoff
    if pairs == "either":
        near = near | (jax.lax.stop_gradient(d_hat) < cutoff)
    near = near & ~jnp.eye(d.shape[0], dtype=bool)
    return position + jnp.sum((d_hat - d) ** 2 * near) / jnp.maximum(jnp.sum(near), 1)


# atoms of residue i and of residue i + 1 (N = 0, CA = 1, C = 2) whose distances the peptide bond
# between them fixes: CA–CA (3.80 Å), C–N (the bond, 1.33 Å), CA–N and C–CA
PEPTIDE_PAIRS = ((1, 1), (2, 0), (1, 0), (2, 1))


def peptide_bond_loss(r_hat, c_hat, r1, c1):
    """The mean squared error (nm²) of the four distances across each peptide bond —
    ``CAᵢ–CAᵢ₊₁``, ``Cᵢ–Nᵢ₊₁``, ``CAᵢ–Nᵢ₊₁`` and ``Cᵢ–CAᵢ₊₁`` of the ideal atoms on predicted
    frames ``(L, 3, 3), (L, 3)`` against the true ones: the local geometry a chain needs exact,
    weighted on its own (AlphaFold's bond-length violations play this part) rather than as
    ``4(L − 1)`` of the ~30 L pairs of :func:`backbone_distance_loss`'s distance term."""
    atoms_hat, atoms = ideal_nca_c(r_hat, c_hat), ideal_nca_c(r1, c1)

    def across(x):
        first, second = zip(*PEPTIDE_PAIRS)
        return jnp.sqrt(jnp.sum((x[:-1, list(first)] - x[1:, list(second)]) ** 2, -1) + 1e-10)

    return jnp.mean((across(atoms_hat) - across(atoms)) ** 2)


def _translation_pairing(x0, x1, length: int):
    """Minibatch-OT indices pairing prior fragments ``x0`` with data ``x1`` (flat points
    ``(n, 12·length)``) by their CA translations, the last ``3·length`` coordinates."""
    return exact_pairing(x0[:, 9 * length :], x1[:, 9 * length :])


class FrameFlowMatching(eqx.Module):
    """Flow matching along geodesics of ``SO(3)ᴸ × C``: rotations from the prior to the data with
    ``rotation_scheduler`` (the training path), CA positions on straight lines.

    For a field with ``prediction="frames"`` the loss is FrameFlow's: the squared error of the
    predicted way to the clean frames, ``w(t) [w_R Σᵢ ‖ω̂ᵢ − log(R_tᵢᵀR₁ᵢ)‖² + w_t Σᵢ ‖ĉ₁ᵢ − c₁ᵢ‖²] / L``
    with ``w(t) = 1/max(1 − t, 1 − clip)²`` — the velocity loss of a linear path with its weight
    capped near the data. For ``prediction="velocity"`` it is
    ``E[w_R Σᵢ ‖v_R − Ṙᵢ‖² + w_t Σᵢ ‖v_t − ṫᵢ‖²] / L``.

    ``ot=True`` pairs prior and data fragments within a batch by an exact assignment on the
    squared CA distances (minibatch OT for translations). ``auxiliary_weight > 0`` adds, for
    ``t > auxiliary_after``, :func:`backbone_distance_loss` between the predicted clean frames
    (:func:`predicted_end` of the velocity) and the data, weighted by the same ``w(t)`` (FrameFlow's
    backbone and distance losses on atoms scaled by ``1/(1 − t)``; the ideal atoms sit on the
    frames, so the frames alone determine everything). ``distance_pairs`` picks the pairs of its
    distance term (:func:`backbone_distance_loss`'s ``pairs``). ``bond_weight > 0`` adds, over the
    same late times and with the same ``w(t)``, :func:`peptide_bond_loss`. ``clash_weight > 0`` adds, over the
    same late times and with the same ``w(t)``, :func:`clash_loss` of the predicted clean CA
    positions: a penalty on non-local pairs closer than 3.5 Å that no data fragment incurs."""

    rotation_scheduler: Scheduler = eqx.field(default_factory=CondOT)
    ot: bool = eqx.field(static=True, default=False)
    weights: tuple[float, float] = eqx.field(static=True, default=(1.0, 1.0))
    auxiliary_weight: float = eqx.field(static=True, default=0.0)
    auxiliary_after: float = eqx.field(static=True, default=0.75)
    distance_pairs: str = eqx.field(static=True, default="true")
    bond_weight: float = eqx.field(static=True, default=0.0)
    clash_weight: float = eqx.field(static=True, default=0.0)
    clip: float = eqx.field(static=True, default=0.9)

    def __check_init__(self):
        if self.distance_pairs not in DISTANCE_PAIRS:
            raise ValueError(f"distance_pairs must be one of {DISTANCE_PAIRS}, got {self.distance_pairs!r}")
        for name in ("bond_weight", "clash_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)!r}")

    def prepare(self, model, x1, condition, key):
        """The OT pairing of prior and data translations for one step (``None`` without
        ``ot``): parameter-free, so :func:`geoflow.fit` solves a block of steps' at once."""
        if not self.ot or source_is_trained(model):
            return None
        x0 = model.base.sample(jax.random.split(key)[0], x1.shape[0])  # the prior batch __call__ draws
        return _translation_pairing(x0, x1, ode_flow_of(model).field.length)

    def __call__(self, model, x1, condition, key, prepared=None):
        flow = ode_flow_of(model)
        length, manifold = flow.field.length, flow.manifold
        k_prior, k_t = jax.random.split(key)  # k_prior as prepare() draws it
        k_sc = jax.random.fold_in(key, 2)
        n = x1.shape[0]
        x0 = jax.lax.stop_gradient(model.base.sample(k_prior, n))
        if prepared is not None:
            x0 = x0[prepared]
        elif self.ot:
            x0 = x0[_translation_pairing(x0, x1, length)]
        t = jax.random.uniform(k_t, (n,))
        wr, wt = self.weights

        def path(ti, a, b):
            (r0, c0), (r1, c1) = manifold.split(a), manifold.split(b)
            rt, dr = jax.vmap(lambda p, q: rotation_path(p, q, ti, self.rotation_scheduler))(r0, r1)
            return rt, dr, (1 - ti) * c0 + ti * c1, c1 - c0

        rt, dr, ct, dc = jax.vmap(path)(t, x0, x1)
        previous = _self_conditioning_input(flow.field, t, rt, ct, k_sc)

        def one(ti, rt, dr, ct, dc, b, previous):
            r1, c1 = manifold.split(b)
            xt = manifold.join([rt, ct])
            weight = 1 / jnp.maximum(1 - ti, 1 - self.clip) ** 2  # FrameFlow's: errors scaled by 1/(1 − t)
            if flow.field.prediction == "frames":
                omega_hat, d_hat = flow.field.outputs(ti, xt, previous)
                omega = jax.vmap(lambda p, q: matrix_to_rotvec(exact_matmul(p.T, q)))(rt, r1)
                value = weight * (wr * jnp.sum((omega_hat - omega) ** 2)
                                  + wt * jnp.sum((d_hat - (c1 - ct)) ** 2)) / length
                r_hat, c_hat = follow_way(rt, ct, omega_hat, d_hat)
            else:
                vr, vc = manifold.split(flow.velocity(ti, xt))
                # SO(3)'s metric is ½ tr(uᵀv): ‖R[ω]×‖² = |ω|²
                value = (wr * 0.5 * jnp.sum((vr - dr) ** 2) + wt * jnp.sum((vc - dc) ** 2)) / length
                r_hat, c_hat = predicted_end(rt, ct, vr, vc, ti, self.rotation_scheduler)
            late = weight * (ti > self.auxiliary_after).astype(value.dtype)
            if self.auxiliary_weight > 0:
                value = value + self.auxiliary_weight * late * backbone_distance_loss(r_hat, c_hat, r1, c1,
                                                                                      pairs=self.distance_pairs)
            if self.bond_weight > 0:
                value = value + self.bond_weight * late * peptide_bond_loss(r_hat, c_hat, r1, c1)
            if self.clash_weight > 0:
                value = value + self.clash_weight * late * clash_loss(c_hat)
            return value

        return jnp.mean(jax.vmap(one)(t, rt, dr, ct, dc, x1, previous))


def _self_conditioning_input(field: FrameField, t, rotations, translations, key):
    """The input a self-conditioning network trains with on a batch (``t`` ``(n,)``, frames
    ``(n, L, 3, 3)`` and ``(n, L, 3)``): for half the batches the features of its own first pass,
    without gradient, for the others none (zeros), one draw per batch as FrameFlow does, so the
    first pass runs only when it is used. ``None`` for a network without self-conditioning."""
    network = field.network
    if not network.self_conditioning:
        return None

    def first_pass():
        def one(ti, r, c):
            return network.previous_features(r, c, *network.outputs(ti, r, c))
        return jax.lax.stop_gradient(jax.vmap(one)(t, rotations, translations))

    def nothing():
        n, length = rotations.shape[:2]
        return network.no_previous(length, rotations.dtype, (n,))

    return jax.lax.cond(jax.random.bernoulli(key, 0.5), first_pass, nothing)
