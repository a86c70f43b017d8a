"""Ready-made classic flows for vector data, each a :class:`~geoflow.Transformed`.

Every constructor takes ``key``, the event size ``dim`` and an optional ``cond_dim`` for
conditional density estimation, and stacks ``layers`` identical layers with
:class:`~geoflow.bijections.Stack` (one trace, whatever the depth). ``preprocess`` is an
optional bijection placed nearest the data (e.g. ``Standardize.fit(x)`` or ``Logit``), so its
Jacobian is part of the reported likelihood.
"""

from __future__ import annotations

import jax

from .bijections import (
    ActNorm, Additive, Affine, ResidualBlock, Bijection, BlockAutoregressive, Chain, Coupling, Elementwise, Invert,
    MaskedAutoregressive, Permute, RationalQuadraticSpline, Reverse, Stack,
)
from .bijections.transformers import Transformer
from .distributions import StandardNormal, Transformed

MODELS = ("nice", "realnvp", "maf", "iaf", "nsf", "nsf-ar", "bnaf", "residual")


def _mixer(key, dim: int, permutation: str) -> Bijection:
    if permutation == "reverse":
        return Reverse(dim)
    if permutation == "random":
        return Permute(jax.random.permutation(key, dim))
    raise ValueError(f"unknown permutation {permutation!r}; expected 'reverse' or 'random'")


def _finish(key, layer, dim, layers, extra=(), preprocess=None):
    if layers < 1:
        raise ValueError(f"a flow needs at least one layer, got layers={layers}")
    stack = Stack.from_init(layer, jax.random.split(key, layers))
    parts = [stack, *extra] + ([preprocess] if preprocess is not None else [])
    bijection = parts[0] if len(parts) == 1 else Chain(parts)
    return Transformed(StandardNormal(dim), bijection)


def coupling_flow(key, dim: int, *, transformer: Transformer, cond_dim: int | None = None,
                  layers: int = 8, width: int = 64, depth: int = 2, activation: str = "relu",
                  permutation: str = "reverse", preprocess: Bijection | None = None,
                  compute_dtype: str | None = None) -> Transformed:
    """``layers`` × (coupling with ``transformer``, then a permutation) on a standard normal.
    ``compute_dtype="bfloat16"``: the conditioners multiply in bfloat16 (mixed precision, see
    :class:`geoflow.nn.MLP`); the coupling stays exactly invertible, its log-determinant float32."""

    def layer(k):
        ck, pk = jax.random.split(k)
        coupling = Coupling(transformer=transformer, dim=dim, cond_dim=cond_dim,
                            width=width, depth=depth, activation=activation, compute_dtype=compute_dtype, key=ck)
        return Chain([coupling, _mixer(pk, dim, permutation)])

    return _finish(key, layer, dim, layers, preprocess=preprocess)


def masked_autoregressive_flow(key, dim: int, *, transformer: Transformer, cond_dim: int | None = None,
                               layers: int = 8, width: int = 64, depth: int = 2,
                               activation: str = "relu", order: str = "sequential",
                               permutation: str = "reverse", invert: bool = False,
                               preprocess: Bijection | None = None) -> Transformed:
    """MAF (``invert=False``: one-pass density) or IAF (``invert=True``: one-pass sampling)."""

    def layer(k):
        mk, pk = jax.random.split(k)
        made = MaskedAutoregressive(transformer=transformer, dim=dim, cond_dim=cond_dim,
                                    width=width, depth=depth, activation=activation, order=order, key=mk)
        return Chain([Invert(made) if invert else made, _mixer(pk, dim, permutation)])

    return _finish(key, layer, dim, layers, preprocess=preprocess)


def nice(key, dim: int, *, layers: int = 4, width: int = 128, depth: int = 3, **kw) -> Transformed:
    """NICE (Dinh et al. 2014): additive couplings and a final learned diagonal scaling."""
    preprocess = kw.pop("preprocess", None)
    flow = coupling_flow(key, dim, transformer=Additive(), layers=layers, width=width, depth=depth, **kw)
    scaling = Elementwise(Affine(shift=False), dim)
    parts = [flow.bijection, scaling] + ([preprocess] if preprocess is not None else [])
    return Transformed(flow.base, Chain(parts))


def realnvp(key, dim: int, *, layers: int = 8, max_log_scale: float = 3.0, **kw) -> Transformed:
    """RealNVP (Dinh et al. 2016): affine couplings with alternating halves and bounded scales."""
    return coupling_flow(key, dim, transformer=Affine(max_log_scale=max_log_scale), layers=layers, **kw)


def maf(key, dim: int, *, layers: int = 5, **kw) -> Transformed:
    """MAF (Papamakarios et al. 2017): affine MADE layers, density in one pass per layer."""
    return masked_autoregressive_flow(key, dim, transformer=Affine(), layers=layers, **kw)


def iaf(key, dim: int, *, layers: int = 5, **kw) -> Transformed:
    """IAF (Kingma et al. 2016): MAF's layers inverted, sampling in one pass per layer."""
    return masked_autoregressive_flow(key, dim, transformer=Affine(), layers=layers, invert=True, **kw)


def nsf(key, dim: int, *, layers: int = 8, knots: int = 8, bound: float = 4.0, **kw) -> Transformed:
    """Neural spline flow with coupling conditioners (Durkan et al. 2019, RQ-NSF (C))."""
    return coupling_flow(key, dim, transformer=RationalQuadraticSpline(knots=knots, bound=bound),
                         layers=layers, **kw)


def nsf_ar(key, dim: int, *, layers: int = 8, knots: int = 8, bound: float = 4.0, **kw) -> Transformed:
    """Neural spline flow with autoregressive (MADE) conditioners (RQ-NSF (AR))."""
    return masked_autoregressive_flow(key, dim, transformer=RationalQuadraticSpline(knots=knots, bound=bound),
                                      layers=layers, **kw)


def bnaf(key, dim: int, *, cond_dim: int | None = None, layers: int = 1, width: int = 16, depth: int = 2,
         permutation: str = "reverse", preprocess: Bijection | None = None, **kw) -> Transformed:
    """Block neural autoregressive flow (De Cao et al. 2019): ``layers`` × (a BNAF network with
    ``depth`` hidden layers of ``width`` units per coordinate, then a permutation). Density in one
    pass per layer; sampling inverts each layer by bisection, ``dim × 50`` passes
    (:class:`~geoflow.bijections.BlockAutoregressive`)."""
    if kw:
        raise ValueError(f"bnaf takes no {', '.join(kw)}")

    def layer(k):
        bk, pk = jax.random.split(k)
        block = BlockAutoregressive(dim, hidden=width, depth=depth, cond_dim=cond_dim, key=bk)
        return Chain([block, _mixer(pk, dim, permutation)])

    return _finish(key, layer, dim, layers, preprocess=preprocess)


def residual(key, dim: int, *, cond_dim: int | None = None, layers: int = 8, width: int = 64, depth: int = 2,
             coeff: float = 0.9, log_det: str | None = None, preprocess: Bijection | None = None,
             **kw) -> Transformed:
    """Residual flow (Behrmann et al. 2019; Chen et al. 2019): ``layers`` × (ActNorm, invertible
    residual block of spectrally normalised dense layers). ``log_det`` defaults to ``"exact"``
    up to 16 dimensions and to the Russian-roulette ``"series"`` (``log_prob`` then takes
    ``key=``) above."""
    if kw:
        raise ValueError(f"residual flows take no {', '.join(kw)}")
    log_det = ("exact" if dim <= 16 else "series") if log_det is None else log_det

    def layer(k):
        block = ResidualBlock((dim,), cond_dim=cond_dim, width=width, depth=depth, coeff=coeff, log_det=log_det, key=k)
        return Chain([block, ActNorm(dim)])

    return _finish(key, layer, dim, layers, preprocess=preprocess)


CONSTRUCTORS = {"nice": nice, "realnvp": realnvp, "maf": maf, "iaf": iaf, "nsf": nsf, "nsf-ar": nsf_ar, "bnaf": bnaf,
                "residual": residual}


def make_flow(name: str, key, dim: int, **kw) -> Transformed:
    """Build a classic flow by its command-line name (one of ``MODELS``)."""
    try:
        constructor = CONSTRUCTORS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}") from None
    return constructor(key, dim, **kw)
