"""Backbone quality metrics, each for a batch of backbones ``(F, L, 4, 3)`` in Å, compared
with reference (held-out) fragments by :func:`backbone_metrics`.

- consecutive CA–CA distances (3.80 Å in trans peptides);
- steric clashes: CA atoms of residues at least 3 apart in sequence closer than 3.0 Å;
- radius of gyration of the CA atoms;
- secondary structure from CA atoms alone: biotite's P-SEA annotation (Labesse et al. 1997);
- Ramachandran: the Jensen–Shannon divergence between φ/ψ histograms (15° bins);
- memorisation: each sample's backbone RMSD to the nearest of a set of fragments.
"""

from __future__ import annotations

import numpy as np

from .geometry import backbone_dihedrals

CLASH_DISTANCE = 3.0  # Å
CLASH_SEPARATION = 3  # residues


def _check(backbones):
    b = np.asarray(backbones, np.float64)
    if b.ndim != 4 or b.shape[2] < 3 or b.shape[3] != 3:
        raise ValueError(f"backbones must have shape (F, L, 4, 3) in Å; got {b.shape}")
    if not np.all(np.isfinite(b)):
        raise ValueError("backbones contain NaN or infinite coordinates")
    return b


def ca_ca_distances(backbones) -> np.ndarray:
    """``(F, L − 1)`` distances between consecutive CA atoms."""
    ca = _check(backbones)[:, :, 1]
    return np.linalg.norm(np.diff(ca, axis=1), axis=-1)


def clashes(backbones) -> np.ndarray:
    """``(F,)`` number of CA pairs at least ``CLASH_SEPARATION`` apart in sequence and closer than ``CLASH_DISTANCE``."""
    ca = _check(backbones)[:, :, 1]
    d = np.linalg.norm(ca[:, :, None] - ca[:, None], axis=-1)
    i = np.arange(ca.shape[1])
    far = np.abs(i[:, None] - i[None]) >= CLASH_SEPARATION
    return np.sum(np.triu((d < CLASH_DISTANCE) & far, 1), axis=(1, 2))


def radius_of_gyration(backbones) -> np.ndarray:
    """``(F,)`` radius of gyration of the CA atoms (Å)."""
    ca = _check(backbones)[:, :, 1]
    return np.sqrt(np.mean(np.sum((ca - ca.mean(1, keepdims=True)) ** 2, -1), 1))


def secondary_structure(backbone) -> np.ndarray:
    """One fragment ``(L, ≥2, 3)`` → ``(L,)`` of ``"a"`` (helix), ``"b"`` (strand), ``"c"``
    (coil) by biotite's P-SEA annotation, which reads the CA atoms only."""
    import biotite.structure as struc

    ca = np.asarray(backbone, np.float32)[:, 1]
    atoms = struc.AtomArray(len(ca))
    atoms.coord = ca
    atoms.atom_name[:], atoms.res_name[:], atoms.element[:], atoms.chain_id[:] = "CA", "GLY", "C", "A"
    atoms.res_id[:] = np.arange(1, len(ca) + 1)
    atoms.hetero[:] = False
    return np.asarray(struc.annotate_sse(atoms))


def secondary_structure_content(backbones) -> dict:
    """Fractions of helix, strand and coil residues over the fragments P-SEA annotates, and the
    number of fragments it cannot (``unannotated``: biotite's contact search refuses coordinates
    spread over more space than it can grid, as a diverged sample's are). NaN fractions when no
    fragment is annotated."""
    labels, unannotated = [], 0
    for b in _check(backbones):
        try:
            labels.append(secondary_structure(b))
        except (ValueError, MemoryError):
            unannotated += 1
    labels = np.concatenate(labels) if labels else np.array([], dtype="<U1")
    fraction = (lambda code: float(np.mean(labels == code))) if labels.size else (lambda code: float("nan"))
    return {"helix": fraction("a"), "strand": fraction("b"), "coil": fraction("c"), "unannotated": unannotated}


def ramachandran_angles(backbones) -> np.ndarray:
    """``(K, 2)`` defined (φ, ψ) pairs in degrees from all fragments."""
    import jax

    b = _check(backbones)
    phi, psi = jax.vmap(backbone_dihedrals)(b.astype(np.float32))
    pairs = np.stack([np.asarray(phi).reshape(-1), np.asarray(psi).reshape(-1)], 1)
    return np.degrees(pairs[np.all(np.isfinite(pairs), 1)])


def ramachandran_js(a, b, bins: int = 24) -> float:
    """Jensen–Shannon divergence (nats, between 0 and ln 2) between the φ/ψ histograms of two
    sets of backbones (finite without smoothing: the mixture is positive wherever either is)."""
    edges = np.linspace(-180.0, 180.0, bins + 1)
    hists = []
    for backbones in (a, b):
        pairs = ramachandran_angles(backbones)
        h, _, _ = np.histogram2d(pairs[:, 0], pairs[:, 1], bins=[edges, edges])
        hists.append(h / h.sum())
    p, q = hists
    m = 0.5 * (p + q)
    kl = lambda a: np.sum(np.where(a > 0, a * np.log(np.where(a > 0, a, 1.0) / np.where(m > 0, m, 1.0)), 0.0))
    return float(0.5 * kl(p) + 0.5 * kl(q))


def nearest_rmsd(samples, references) -> np.ndarray:
    """``(F,)`` for each sample the smallest backbone RMSD (Å, the N, CA, C atoms after optimal
    superposition by a proper rotation) to any of the ``references`` ``(R, L, 4, 3)``."""
    import jax
    import jax.numpy as jnp

    from ..geometry import kabsch_rotation

    def atoms(b):
        x = jnp.asarray(_check(b)[:, :, :3].reshape(len(b), -1, 3), jnp.float32)
        return x - x.mean(1, keepdims=True)

    a, r = atoms(samples), atoms(references)
    if a.shape[1] != r.shape[1]:
        raise ValueError(f"samples and references differ in length: {a.shape[1] // 3} and {r.shape[1] // 3} residues")
    ones = jnp.ones(a.shape[1], jnp.float32)

    def rmsd(x, y):
        return jnp.sqrt(jnp.mean(jnp.sum((x @ kabsch_rotation(x, y, ones).T - y) ** 2, -1)))

    pairwise = jax.jit(jax.vmap(lambda x: jax.vmap(lambda y: rmsd(x, y))(r)))(a)
    return np.asarray(pairwise.min(1), np.float64)


def backbone_metrics(samples, reference=None) -> dict:
    """All the metrics of ``samples``, and of ``reference`` beside them with the Ramachandran
    distance between the two when it is given."""

    def summary(b):
        cc = ca_ca_distances(b)
        c = clashes(b)
        rg = radius_of_gyration(b)
        return {"fragments": int(len(b)), "ca_ca_mean": float(cc.mean()), "ca_ca_std": float(cc.std()),
                "ca_ca_within_0.1": float(np.mean(np.abs(cc - 3.80) < 0.1)),
                "clashes_per_fragment": float(c.mean()), "fragments_with_clash": float(np.mean(c > 0)),
                "radius_of_gyration_mean": float(rg.mean()), "radius_of_gyration_std": float(rg.std()),
                **{f"ss_{k}": v for k, v in secondary_structure_content(b).items()}}

    out = {"samples": summary(samples)}
    if reference is not None:
        out["reference"] = summary(reference)
        out["ramachandran_js"] = ramachandran_js(samples, reference)
    return out
