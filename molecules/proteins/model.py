"""Flow matching on SE(3)ᴺ for protein backbone fragments (FrameFlow's design, Yim et al. 2023).

A fragment of ``L`` residues is a point of ``SO(3)ᴸ × C`` where ``C`` is the centred-translations
subspace of ℝ^{L×3} (:class:`manifolds.CentredPoints`): the Product's flat point is the ``L``
rotation matrices then the ``L`` CA positions, in nanometres (``LENGTH_SCALE`` = 0.1 per Å, as
FrameFlow). The model is the core's ``Transformed(prior, ODEFlow(field, manifold=...))``, so
``sample``, exact ``log_prob`` (Riemannian divergence along the ODE, on the ``6L − 3``-dim
manifold) and ``geoflow.fit`` are the shared code. Training is
``geoflow.fit(model, points, loss=FrameFlowMatching())`` (:mod:`molecules.proteins.matching`).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from geoflow.continuous import ODEFlow, ODESolver, ode_flow_of
from geoflow.continuous.paths import CondOT, Exponential, Scheduler
from geoflow.precision import exact_matmul
from geoflow.distributions import Transformed
from manifolds import CentredPoints, riemannian_sample, Power, Product, ProductDistribution, SO3, UniformOn, WrappedNormal
from manifolds.distributions import IGSO3, PowerDistribution
from manifolds.so3 import hat, matrix_to_rotvec, rotvec_to_matrix

from .geometry import LENGTH_SCALE, backbone_from_frames, frames_from_backbone, ideal_nca_c
from .network import FrameNetwork
from .relax import check_descent, relax_fragment, relax_torsions


def frame_manifold(length: int) -> Product:
    """``SO(3)ᴸ × C``: rotations and centred CA positions of ``length`` residues."""
    return Product([Power(SO3(), length), CentredPoints(length, 3)])


def frame_prior(length: int, rotation_eps: float | None = None, translation_sigma: float = 1.0) -> ProductDistribution:
    """Rotations uniform (or IGSO(3) with ``rotation_eps``) and independent per residue; CA
    positions an isotropic Gaussian of standard deviation ``translation_sigma`` (nm) on the
    centred subspace."""
    manifold = frame_manifold(length)
    rotations = (UniformOn(manifold.factors[0]) if rotation_eps is None
                 else PowerDistribution(manifold.factors[0], IGSO3(rotation_eps)))
    translations = WrappedNormal(manifold.factors[1], jnp.zeros((length, 3)), translation_sigma)
    return ProductDistribution(manifold, [rotations, translations])


def points_from_backbones(backbones) -> np.ndarray:
    """Backbones ``(F, L, 4, 3)`` in Å → manifold points ``(F, 12 L)`` (frames, centred, in nm)."""
    backbones = np.asarray(backbones, np.float32)
    if backbones.ndim != 4 or backbones.shape[2:] != (4, 3) and backbones.shape[2:] != (3, 3):
        raise ValueError(f"backbones must have shape (F, L, 4, 3) (N, CA, C, O in Å); got {backbones.shape}")
    rotations, translations = jax.vmap(frames_from_backbone)(jnp.asarray(backbones))
    translations = (translations - translations.mean(1, keepdims=True)) * LENGTH_SCALE
    f = backbones.shape[0]
    return np.concatenate([np.asarray(rotations).reshape(f, -1), np.asarray(translations).reshape(f, -1)], 1)


def frames_from_points(points, length: int):
    """``(R (F, L, 3, 3), t (F, L, 3) in Å)`` from manifold points ``(F, 12 L)``."""
    rotations, translations = jax.vmap(frame_manifold(length).split)(jnp.asarray(points))
    return rotations, translations / LENGTH_SCALE


def backbones_from_points(points, length: int) -> np.ndarray:
    """Ideal-geometry backbones ``(F, L, 4, 3)`` in Å from manifold points ``(F, 12 L)``."""
    rotations, translations = frames_from_points(points, length)
    return np.asarray(jax.vmap(backbone_from_frames)(rotations, translations))


PREDICTIONS = ("frames", "velocity")


def rotation_schedule(rate: float) -> Scheduler:
    """``Exponential(rate)``, or the linear schedule for rate 0."""
    if rate < 0:
        raise ValueError(f"rotation rates must be non-negative (0: linear), got {rate}")
    return Exponential(rate) if rate > 0 else CondOT()


def follow_way(rotations, translations, omega, displacement):
    """The frames a clean-frame network's outputs point at: ``(Rᵢ exp[ωᵢ]× (L, 3, 3), c + d (L, 3))``."""
    return exact_matmul(rotations, jax.vmap(rotvec_to_matrix)(omega)), translations + displacement


_STILL = 1e-6  # nm: a guidance step that moves no CA further has converged
_END = 1e-2  # the field's rates are capped at their value this far from t = 1, where they diverge


class FrameField(eqx.Module):
    """The ODE's vector field on :func:`frame_manifold`, from a :class:`FrameNetwork` on flat points.

    ``prediction="frames"`` (FrameFlow's parameterisation) reads the network's outputs as the
    way to the clean frames — ``R̂₁ᵢ = Rᵢ exp[ωᵢ]×``, ``ĉ₁ = c + d`` — and the velocity is that
    way times ``rotation_scheduler.remaining_rate(t)`` for rotations and ``1/(1 − t)`` for
    translations (both capped at their value at ``t = 0.99``), so an Euler step of 0.01 from
    there lands on the prediction. On the schedule the rotations were trained on, this is the
    marginal field of the training path (the conditional velocity is linear in the way); a
    faster schedule settles rotations before the posterior has resolved and sharpens the samples
    towards the commonest structure, which is what makes FrameFlow's linear training with rate-10
    sampling over-produce helices. A trained network's own-path samples are blurred, so a
    moderately faster schedule is the working point: rotations trained on ``Exponential(3)`` and
    sampled on ``Exponential(5)`` meet the L = 16 targets (``benchmarks/RESULTS.md``).
    ``prediction="velocity"`` reads the outputs as the velocity itself (``rotation_scheduler``
    unused).

    A self-conditioning network (``self_conditioning=True``, clean frames only) runs twice at each
    ``(t, x)``: first without an earlier prediction, then reading the first pass's
    (:meth:`predict`). The field stays a function of ``(t, x)``, so sampling and the exact
    likelihood are those of one ODE, at twice the network's cost."""

    network: FrameNetwork
    manifold: Product
    rotation_scheduler: Scheduler
    length: int = eqx.field(static=True)
    prediction: str = eqx.field(static=True)
    shape: tuple[int, ...] = eqx.field(static=True)
    cond_shape: tuple[int, ...] | None = eqx.field(static=True, default=None)

    def __init__(self, length: int, *, key, prediction: str = "frames", rotation_scheduler: Scheduler | None = None,
                 **network_kwargs):
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        if network_kwargs.get("self_conditioning") and prediction != "frames":
            raise ValueError("self_conditioning reads an earlier prediction of the clean frames: it needs "
                             f"prediction='frames', got {prediction!r}")
        self.network = FrameNetwork(key=key, **network_kwargs)
        self.manifold = frame_manifold(length)
        self.rotation_scheduler = Exponential(3.0) if rotation_scheduler is None else rotation_scheduler
        self.length, self.prediction, self.shape, self.cond_shape = length, prediction, (12 * length,), None

    def outputs(self, t, x, previous=None):
        """One pass of the network, ``(ω (L, 3), d (L, 3))`` at the flat point ``x`` (see
        :meth:`FrameNetwork.outputs`; ``previous`` its self-conditioning input)."""
        return self.network.outputs(t, *self.manifold.split(x), previous)

    def predict(self, t, x):
        """The network's ``(ω (L, 3), d (L, 3))`` at ``x`` as the field uses them: one pass, or
        for a self-conditioning network a second one that reads the first."""
        rotations, translations = self.manifold.split(x)
        way = self.network.outputs(t, rotations, translations)
        if self.network.self_conditioning:
            previous = self.network.previous_features(rotations, translations, *way)
            way = self.network.outputs(t, rotations, translations, previous)
        return way

    def clean(self, t, x):
        """The clean frames the network predicts at ``(t, x)``, a flat point ``(12·L,)``:
        ``Rᵢ exp[ωᵢ]×`` and ``c + d`` (``prediction="frames"`` only)."""
        if self.prediction != "frames":
            raise ValueError(f"clean frames are the outputs of a prediction='frames' field, this one predicts "
                             f"{self.prediction!r}")
        rotations, translations = self.manifold.split(x)
        return self.manifold.join(list(follow_way(rotations, translations, *self.predict(t, x))))

    def __call__(self, t, x, condition=None, *, keep=None):
        return self.velocity(t, x, *self.predict(t, x))

    def velocity(self, t, x, omega, displacement):
        """The field at ``(t, x)`` from the network's outputs there, ``ω (L, 3)`` and ``d (L, 3)``
        (:meth:`predict`, or a guidance's change of them)."""
        rotations = self.manifold.split(x)[0]
        if self.prediction == "frames":
            end = jnp.minimum(t, 1 - _END)
            omega = omega * self.rotation_scheduler.remaining_rate(end)
            displacement = displacement / (1 - end)
        return self.manifold.join([exact_matmul(rotations, jax.vmap(hat)(omega)), displacement])


class StericGuidance(eqx.Module):
    """A clean-frame field whose predicted clean frames are moved out of their clashes before the
    step towards them is taken: from ``t = start`` on, the clean frames the network predicts are
    relaxed by ``iterations`` descent steps on the clash penalty, and the field steps towards the
    relaxed frames. ``moves="torsions"`` (the default) turns the φ and ψ of the predicted clean
    backbone (:func:`molecules.proteins.relax.relax_torsions`, no CA moved by more than
    ``max_move`` nm a step), which moves rotations and positions together and keeps the predicted
    bond geometry; ``moves="positions"`` moves the clean CA positions by steps of ``step``
    (:func:`molecules.proteins.relax.relax_fragment`: the clash penalty plus ``restraint`` times
    the squared change of each CA's distances to its next residues) and keeps the predicted
    rotations, so the bonds around a moved residue bend. Because the network sees the moved
    residues at its next evaluations, it rebuilds the local geometry around them, which a
    relaxation of finished samples cannot do; the pushes accumulate over the steps after ``start``.

    Without a clash nothing moves and the field is the unguided one. On the L = 64 model with the
    peptide-bond loss (``benchmarks/RESULTS.md``) turning torsions takes 200 samples from 19% to
    97% clash-free with CA–CA spacing and the Ramachandran divergence as unguided (91.0% within
    0.1 Å, JS 0.104, against 90.8% and 0.102), at about 40% more sampling time; moving positions
    reaches 88% and costs 5 points of CA–CA spacing. Turning torsions leaves none of 400 samples
    of the kept L = 32 model clashing (24% unguided) with the other metrics as unguided. Moving
    positions takes the L = 16 and L = 32 models from 95.8% and 73.7% to 99.9% and 99.8%
    clash-free with the other metrics within a draw's spread, at 4–8% more sampling time."""

    field: FrameField
    step: float
    restraint: float
    max_move: float
    iterations: int = eqx.field(static=True)
    start: float = eqx.field(static=True)
    moves: str = eqx.field(static=True)

    def __init__(self, field: FrameField, step: float | None = None, *, restraint: float = 1.0, iterations: int = 20,
                 start: float = 0.5, moves: str = "torsions", max_move: float = 0.02):
        if field.prediction != "frames":
            raise ValueError(f"steric guidance moves predicted clean frames: it needs prediction='frames', "
                             f"got {field.prediction!r}")
        if moves not in ("positions", "torsions"):
            raise ValueError(f"steric guidance moves 'positions' or 'torsions', got {moves!r}")
        if moves == "torsions" and step is not None:
            raise ValueError("step is the descent step of moves='positions'; moves='torsions' takes max_move "
                             f"(the largest CA move of a step), got step={step}")
        step = 0.1 if step is None else step
        if not step > 0 or int(iterations) < 1 or not 0.0 <= start < 1.0 or not max_move > 0:
            raise ValueError(f"steric guidance needs step > 0, iterations ≥ 1, start in [0, 1) and max_move > 0; "
                             f"got {step}, {iterations}, {start} and {max_move}")
        if moves == "positions":
            check_descent(step, restraint)
        self.field, self.step, self.restraint, self.max_move = field, float(step), float(restraint), float(max_move)
        self.iterations, self.start, self.moves = int(iterations), float(start), moves

    @property
    def length(self) -> int:
        return self.field.length

    @property
    def manifold(self) -> Product:
        return self.field.manifold

    def pushed(self, t, rotations, translations):
        """Clean frames ``(L, 3, 3), (L, 3)`` after the guidance's steps (unchanged before ``start``)."""
        def relaxed(frames):
            r, c = frames
            if self.moves == "positions":
                return r, relax_fragment(c, max_iterations=self.iterations, tolerance=_STILL, step=self.step,
                                         restraint=self.restraint)
            atoms = ideal_nca_c(r, c / LENGTH_SCALE) * LENGTH_SCALE
            moved, turns = relax_torsions(atoms, max_iterations=self.iterations, max_move=self.max_move,
                                          tolerance=_STILL)
            new_r, new_c = frames_from_backbone(moved)
            still = jnp.all(turns == 0)  # the predicted frames themselves, not their round trip through atoms
            return jnp.where(still, r, new_r), jnp.where(still, c, new_c)

        return jax.lax.cond(t >= self.start, relaxed, lambda frames: frames, (rotations, translations))

    def clean(self, t, x):
        """:meth:`FrameField.clean` with the guided frames."""
        return self.manifold.join(list(self.pushed(t, *self.manifold.split(self.field.clean(t, x)))))

    def __call__(self, t, x, condition=None, *, keep=None):
        rotations, translations = self.manifold.split(x)
        omega, displacement = self.field.predict(t, x)
        clean_r, clean_c = follow_way(rotations, translations, omega, displacement)
        pushed_r, pushed_c = self.pushed(t, clean_r, clean_c)  # the way to the clean frames is re-aimed
        if self.moves == "torsions":  # unturned, the network's own way (a log would wrap it to under π)
            turned = jax.vmap(lambda r, s: matrix_to_rotvec(exact_matmul(r.T, s)))(rotations, pushed_r)
            omega = jnp.where(jnp.all(pushed_r == clean_r), omega, turned)
        return self.field.velocity(t, x, omega, pushed_c - translations)


def sampled_at_rate(model: Transformed, rate: float) -> Transformed:
    """``model`` (a :func:`frameflow`) with its rotations sampled on ``rotation_schedule(rate)``."""
    return eqx.tree_at(lambda m: m.bijection.field.rotation_scheduler, model, rotation_schedule(rate))


def steric_guided(model: Transformed, **guidance) -> Transformed:
    """``model`` (a :func:`frameflow`) sampling with :class:`StericGuidance` of its field
    (``guidance``: its options)."""
    return eqx.tree_at(lambda m: m.bijection.field, model, StericGuidance(ode_flow_of(model).field, **guidance))


def frameflow(key, length: int, *, rotation_eps: float | None = None, translation_sigma: float = 1.0,
              solver: ODESolver | None = None, trace: str = "exact", prediction: str = "frames",
              rotation_scheduler: Scheduler | None = None, **network_kwargs) -> Transformed:
    """A frame flow for fragments of ``length`` residues: prior :func:`frame_prior`, field a
    :class:`FrameField` (`prediction`, `rotation_scheduler`; the remaining keyword arguments go to
    its :class:`FrameNetwork`), `solver` and `trace` as for :class:`geoflow.continuous.ODEFlow`.

    The default solver is adaptive (Tsit5, ``rtol = atol = 1e-5``), so ``log_prob`` is the ODE's
    likelihood to about 1e-4 nats per dimension; a fixed-step solver makes it an approximation
    (100 Euler steps are off by about 0.03 nats per dimension on a trained model). Sample with
    :func:`sample_backbones`, which takes geodesic Euler steps."""
    if length < 2:
        raise ValueError(f"fragments need at least 2 residues, got length={length}")
    field = FrameField(length, key=key, prediction=prediction, rotation_scheduler=rotation_scheduler, **network_kwargs)
    return Transformed(frame_prior(length, rotation_eps, translation_sigma),
                       ODEFlow(field, ODESolver() if solver is None else solver, trace, frame_manifold(length)))


def sample_backbones(model: Transformed, key, n: int, steps: int | None = 100,
                     denoise_from: float | None = None) -> np.ndarray:
    """``n`` backbones ``(n, L, 4, 3)`` in Å by ``steps`` geodesic Euler steps
    (:func:`manifolds.riemannian_sample`, FrameFlow's sampler; ``None``: the model's own ODE solver).

    ``denoise_from = s`` (a clean-frame field only) takes the steps from 0 to ``s`` and returns
    the network's clean frames there, :meth:`FrameField.clean`, in one jump: near ``t = 1`` the
    network was trained on frames a ``1 − t`` fraction of the prior away from the data, so it
    leaves a drift of the sampled path that is larger than that in place; from ``s = 0.95`` it
    corrects it (``benchmarks/RESULTS.md``). ``None``: the steps go to ``t = 1``.
    :func:`molecules.proteins.relax.relax_backbones` removes the clashes of the samples."""
    field = ode_flow_of(model).field
    if denoise_from is not None:
        if not 0.0 < denoise_from < 1.0:
            raise ValueError(f"denoise_from must lie in (0, 1), got {denoise_from}")
        if steps is None:
            raise ValueError("denoise_from needs geodesic Euler steps (steps=None runs the ODE solver to t = 1)")
        x = riemannian_sample(model, key, n, steps, t_end=denoise_from)
        points = _clean_frames(field, x, denoise_from)
    elif steps is None:
        points = model.sample(key, n)
    else:
        points = riemannian_sample(model, key, n, steps)
    return backbones_from_points(points, field.length)


@eqx.filter_jit
def _clean_frames(field: FrameField, x, t: float):
    return jax.vmap(lambda xi: field.clean(t, xi))(x)
