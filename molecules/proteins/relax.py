"""Steric relaxation of sampled fragments: CA atoms that clash are pushed apart, either by turning
the backbone's φ/ψ torsions (:func:`relax_torsions`, what finished samples get and what the
steric guidance applies to the network's predictions while it samples) or by moving CA positions
under a restraint on their local distances (:func:`relax_fragment`).

A frame flow's samples put two segments of the chain on one another in a few fragments in a
hundred (a clash rate per residue pair that is flat in sequence separation, so it grows with
length; ``benchmarks/RESULTS.md``). The sampled local geometry around them is right, so a small
move removes the clash. Both relaxations minimise the clash penalty of training
(:func:`clash_loss`) by descent. Moving CA positions translates each residue's atoms
rigidly, which bends the bonds to its neighbours and so changes φ and ψ on both sides of a moved
residue; turning torsions keeps every bond length, bond angle and ω of the sample, spreading the
move over small changes of φ and ψ, as a protein's backbone moves.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..geometry import kabsch_rotation
from .geometry import LENGTH_SCALE, torsion_axes, turn_torsions
from .metrics import CLASH_SEPARATION

# below the closest CA pair (≥ CLASH_SEPARATION apart in sequence) of any training fragment, 3.6 Å,
# so that no data fragment is penalised; above the metric's clash distance, 3.0 Å
CLASH_LOSS_DISTANCE = 3.5 * LENGTH_SCALE


def clash_loss(ca, distance: float = CLASH_LOSS_DISTANCE):
    """``Σ max(0, distance − ‖caᵢ − ca_j‖)²`` over the CA pairs ``(i < j)`` at least
    ``CLASH_SEPARATION`` residues apart; ``ca`` ``(L, 3)`` in model units (nm). Zero for every
    fragment whose non-local CA pairs are all ``distance`` or further apart; a sum, not a mean,
    so that one clash in a long fragment weighs as much as in a short one."""
    d = jnp.sqrt(jnp.sum((ca[:, None] - ca[None]) ** 2, -1) + 1e-10)
    index = jnp.arange(ca.shape[0])
    far = (index[None, :] - index[:, None]) >= CLASH_SEPARATION
    return jnp.sum(jnp.where(far, jax.nn.relu(distance - d) ** 2, 0.0))


def _local_distances(ca):
    """``(L, CLASH_SEPARATION − 1)`` distances from each CA to the next ones in sequence (the
    last rows' missing partners read as zero)."""
    return jnp.stack([jnp.pad(jnp.sqrt(jnp.sum((ca[k:] - ca[:-k]) ** 2, -1) + 1e-12), (0, k))
                      for k in range(1, CLASH_SEPARATION)], -1)


def relax_fragment(ca, *, max_iterations: int = 1000, tolerance: float = 1e-4, step: float = 0.1,
                   restraint: float = 1.0):
    """CA positions ``(L, 3)`` in model units (nm) after gradient steps of ``step`` on
    ``clash_loss(ca) + restraint · Σ (dᵢⱼ − dᵢⱼ⁰)²`` over the pairs ``0 < j − i < CLASH_SEPARATION``
    (``d⁰`` the input's), until no CA would move by more than ``tolerance`` (nm) in a step, or
    after ``max_iterations``. A fragment without a clash has zero gradient and comes back unchanged.

    The descent is stable for ``step · restraint < 1/8`` (each CA is restrained to up to four
    others, so the restraint's curvature reaches ``16 · restraint``). Plain descent, a discrete
    gradient flow, ends at the minimum nearest the sample; heavy-ball momentum converges in fewer
    steps but carries residues past it (on 200 sampled fragments of 64 residues: moved residues
    0.79 Å on average and up to 9.2 Å, against 0.45 and 4.2, and the helix content falls). On
    those fragments 90% of the clashing ones converge within 600 steps and 99% within 1,300;
    after 200 steps 2 still clash, after 500 none. The restraint is a compromise with the clash
    penalty: where many pairs clash the local distances give a little (0.2 Å at most for a
    hairpin whose two strands lie 2 Å apart)."""
    target = _local_distances(ca)

    def energy(x):
        return clash_loss(x) + restraint * jnp.sum((_local_distances(x) - target) ** 2)

    grad = jax.grad(energy)

    def moving(state):
        i, _, g = state
        return (i < max_iterations) & (step * jnp.max(jnp.linalg.norm(g, axis=-1)) > tolerance)

    def descend(state):
        i, x, g = state
        x = x - step * g
        return i + 1, x, grad(x)

    return jax.lax.while_loop(moving, descend, (0, ca, grad(ca)))[1]


def check_descent(step: float, restraint: float) -> None:
    """Refuse a :func:`relax_fragment` descent that would diverge (``step · restraint`` ≥ 1/8)."""
    if not 0 < step * restraint < 0.125:
        raise ValueError(f"step · restraint must lie in (0, 1/8) for a stable descent, got {step} · {restraint}")


def relax_torsions(backbone, *, max_iterations: int = 300, damping: float = 0.01, max_move: float = 0.02,
                   tolerance: float = 1e-5):
    """Backbone atoms ``(L, A, 3)`` (N, CA, C[, O], model units, nm) with their CA clashes
    (:func:`clash_loss`) removed by changes of every φ and ψ (:func:`turn_torsions`), superposed on
    the input's CA atoms; and the turns ``(L, 2)``.

    Each step is the torsion change whose CA displacement best matches the clash force, damped
    (Levenberg–Marquardt in the CA atoms' metric): ``Δθ = (JᵀJ + μ I)⁻¹ Jᵀ g`` with ``J = ∂CA/∂θ``
    ``(3L, 2L)`` at the current torsions, ``g`` the clash penalty's gradient in the CA positions
    and ``μ`` = ``damping`` times the mean of ``JᵀJ``'s diagonal; it is scaled down where it would
    move a CA by more than ``max_move`` (nm). Steps run until no clash is left, no torsion would
    turn by more than ``tolerance`` (radians), or ``max_iterations``. Measured against steepest
    descent in the torsions, whose largest turns are those with the longest lever arm, hinges far
    from the clash: on 200 sampled fragments of 32 residues both leave none clashing and keep the
    CA–CA spacing and the Ramachandran divergence, and the residues moved move 0.35 Å on average
    (2.5 Å at most) against 0.95 Å (7.8 Å); at 64 residues 0.51 Å (5.3 Å) against 2.1 Å (19 Å)
    (``benchmarks/RESULTS.md``). Recomputing ``J`` at every step (:func:`torsion_jacobian`, in
    closed form) is what keeps the descent on course; a Jacobian fixed at the sample goes stale
    along it. More damping leans towards steepest descent (at L = 32, damping 0.1 and 1 move
    residues 0.47 and 0.60 Å on average); without any, a torsion that moves no CA atom (the last
    ψ) would leave ``JᵀJ`` singular."""
    length = backbone.shape[0]

    def evaluated(turns):  # the clash penalty at the turns and the capped step from them
        atoms = turn_torsions(backbone, turns)
        clash, force = jax.value_and_grad(clash_loss)(atoms[:, 1])
        jacobian = torsion_jacobian(atoms).reshape(3 * length, 2 * length)
        force = force.reshape(-1)
        normal = jacobian.T @ jacobian
        mu = damping * jnp.trace(normal) / (2 * length)
        change = jnp.linalg.solve(normal + mu * jnp.eye(2 * length, dtype=normal.dtype), jacobian.T @ force)
        move = jnp.max(jnp.linalg.norm((jacobian @ change).reshape(length, 3), axis=-1))
        return clash, (change * jnp.minimum(1.0, max_move / (move + 1e-12))).reshape(length, 2)

    def moving(state):
        i, _, clash, change = state
        return (i < max_iterations) & (clash > 0) & (jnp.max(jnp.abs(change)) > tolerance)

    def descend(state):
        i, turns, _, change = state
        turns = turns - change
        return (i + 1, turns, *evaluated(turns))

    start = jnp.zeros((length, 2), backbone.dtype)
    turns = jax.lax.while_loop(moving, descend, (0, start, *evaluated(start)))[1]
    return _superposed(turn_torsions(backbone, turns), backbone), turns


def torsion_jacobian(backbone):
    """``∂CA/∂θ`` ``(L, 3, 2L)`` of backbone atoms ``(L, A, 3)`` (N, CA, C first) in their torsions
    ``θ = (φ₀, ψ₀, φ₁, …)`` as :func:`turn_torsions` turns them: turning torsion ``m`` about its axis
    (unit ``u``, through ``e``: CAᵢ for ``φᵢ``, Cᵢ for ``ψᵢ``) moves each CA after it in the chain
    at ``u × (CA − e)`` and leaves the others; a turned chain's Jacobian is this at its own atoms,
    since turns about one axis compose. ``O(L²)`` products, where autodiff would take ``2L``
    passes through the chain."""
    axis, end = torsion_axes(backbone)  # (2L, 3) each
    velocity = jnp.cross(axis[None], backbone[:, 1, None] - end[None])  # (L, 2L, 3): CA k turned about axis m
    length = backbone.shape[0]
    after = jnp.arange(length)[:, None] > jnp.arange(2 * length)[None] // 2  # CA k follows torsion m
    return jnp.moveaxis(jnp.where(after[..., None], velocity, 0.0), -1, 1)


def _superposed(moved, backbone):
    """``moved`` ``(L, A, 3)`` rigidly moved onto ``backbone``'s CA atoms (least squares): what
    differs then is the change of shape, not the pose the torsions' fixed first residue leaves."""
    ca, new = backbone[:, 1] - backbone[:, 1].mean(0), moved[:, 1] - moved[:, 1].mean(0)
    rotation = kabsch_rotation(new, ca, jnp.ones(ca.shape[0], ca.dtype))
    return jnp.einsum("ij,laj->lai", rotation, moved - moved[:, 1].mean(0)) + backbone[:, 1].mean(0)


@eqx.filter_jit
def _relax_each(relax, batch, options: dict):
    """``relax`` (:func:`relax_torsions` or :func:`relax_fragment`, static) with ``options`` on
    every fragment of ``batch``; the relaxed atoms only."""
    def one(x):
        out = relax(x, **options)
        return out[0] if isinstance(out, tuple) else out

    return jax.vmap(one)(batch)


_clash_losses = jax.jit(jax.vmap(clash_loss))  # (F, L, 3) CA in nm → (F,)


MOVES = ("torsions", "positions")


def relax_backbones(backbones, *, moves: str = "torsions", **options) -> np.ndarray:
    """Backbones ``(F, L, A, 3)`` in Å (atoms N, CA, C[, O]) with the clashes of each fragment
    relaxed; fragments without a CA pair closer than :data:`CLASH_LOSS_DISTANCE` come back bit
    for bit.

    ``moves="torsions"`` (the default) turns φ and ψ by :func:`relax_torsions` (``options``: its
    keywords), the relaxed chain superposed on the sample's CA atoms. ``moves="positions"``
    moves each clashing CA by :func:`relax_fragment` (``options``: its keywords) with every other
    atom of its residue, so residues that do not move come back bit for bit. On 200 sampled
    fragments of 64 residues both leave at most 1 clashing, and moving positions takes the
    Ramachandran divergence from 0.102 to 0.121 and helix from 0.32 to 0.29, moving residues
    0.4 Å on average; turning torsions keeps every bond and, on 200 sampled fragments of 32
    residues, the CA–CA spacing and the divergence, moving residues 0.35 Å on average
    (``benchmarks/RESULTS.md``)."""
    backbones = np.asarray(backbones, np.float32)
    if backbones.ndim != 4 or backbones.shape[2] < 3 or backbones.shape[3] != 3:
        raise ValueError(f"backbones must have shape (F, L, A, 3) with atoms N, CA, C first; got {backbones.shape}")
    if moves not in MOVES:
        raise ValueError(f"moves must be one of {MOVES}, got {moves!r}")
    relax = relax_torsions if moves == "torsions" else relax_fragment
    unknown = set(options) - set(relax.__kwdefaults__)
    if unknown:
        raise ValueError(f"moves={moves!r} takes the options {sorted(relax.__kwdefaults__)}, got {sorted(unknown)}")
    settings = {**relax.__kwdefaults__, **options}
    if settings["max_iterations"] < 1 or not settings["tolerance"] > 0:
        raise ValueError(f"max_iterations must be ≥ 1 and tolerance > 0, got {settings['max_iterations']} and "
                         f"{settings['tolerance']}")
    if moves == "positions":
        check_descent(settings["step"], settings["restraint"])
        return _relax_positions(backbones, settings)
    if not settings["damping"] > 0 or not settings["max_move"] > 0:
        raise ValueError(f"damping and max_move must be positive, got {settings['damping']} and {settings['max_move']}")
    scaled = backbones * np.float32(LENGTH_SCALE)  # model units, where the clash distance is set
    clashing = np.asarray(_clash_losses(jnp.asarray(scaled[:, :, 1]))) > 0
    out = backbones.copy()
    if clashing.any():
        relaxed = _relax_each(relax_torsions, jnp.asarray(scaled[clashing]), settings)
        out[clashing] = np.asarray(relaxed) / np.float32(LENGTH_SCALE)
    return out


def _relax_positions(backbones, settings) -> np.ndarray:
    ca = backbones[:, :, 1]
    before = (ca * LENGTH_SCALE).astype(np.float32)  # model units, where the clash distance is set
    after = np.asarray(_relax_each(relax_fragment, jnp.asarray(before), settings))
    moved = np.any(after != before, -1, keepdims=True)  # a CA without gradient keeps its exact value
    shift = np.where(moved, after / LENGTH_SCALE - ca, 0.0).astype(np.float32)
    return backbones + shift[:, :, None]


def relaxation_moves(before, after, threshold: float = 0.01) -> dict:
    """How far :func:`relax_backbones` moved the CA atoms of backbones ``(F, L, A, 3)`` (Å):
    ``fragments_moved``, the fraction of fragments with a CA moved by more than ``threshold`` Å;
    ``mean_move_of_moved_residues`` over those CA atoms (0 when none moved); ``max_move``."""
    moved = np.linalg.norm(np.asarray(after)[:, :, 1] - np.asarray(before)[:, :, 1], axis=-1)
    far = moved > threshold
    return {"fragments_moved": float(np.mean(far.any(1))),
            "mean_move_of_moved_residues": float(moved[far].mean()) if far.any() else 0.0,
            "max_move": float(moved.max())}
