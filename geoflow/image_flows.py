"""Ready-made flows for images ``(channels, height, width)``: multi-scale RealNVP, Glow and a
multi-scale residual flow, each a :class:`~geoflow.Transformed` onto a standard normal.

Every constructor ends in the :class:`~geoflow.bijections.Logit` preprocessing with
``levels`` (256 for 8-bit images), so the model's density is over pixel values in
``[0, levels)``: feed uniformly dequantised pixels ``x + u`` and ``−log_prob / (D · log 2)`` is
bits/dim in the original pixel space (see :mod:`geoflow.dequantization`).

Every constructor also starts, next to the base, with :class:`~geoflow.bijections.HeavyTails`
(``tails=4.0``: the identity within 4 standard deviations): a multi-scale flow trained on MNIST
maps the odd test image it has not learned to latent values in the hundreds or thousands (a
coupling's shift extrapolating, a split prior's σ at its floor), and under a Gaussian latent one
such image costs 10⁶ nats, enough to move a 10,000-image test mean by 0.3 bits/dim. With
logarithmic tails it costs tens. ``tails=None`` builds the flow without them.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .bijections import ActNorm, Bijection, Chain, HeavyTails, Logit, Stack
from .bijections.glow import InvertibleConv1x1, check_image_shape
from .bijections.image_coupling import ImageCoupling
from .bijections.multiscale import MultiScale, SplitPrior
from .bijections.residual import ResidualBlock
from .distributions import StandardNormal, Transformed

IMAGE_MODELS = ("realnvp-ms", "glow", "residual")


def max_levels(shape) -> int:
    """How many times ``shape`` can be squeezed by 2 (each level of a multi-scale flow squeezes once)."""
    _, h, w = shape
    levels = 0
    while h % 2 == 0 and w % 2 == 0 and h > 1 and w > 1:
        h, w, levels = h // 2, w // 2, levels + 1
    return levels


def _check_levels(shape, levels: int) -> None:
    if not 1 <= levels <= max_levels(shape):
        raise ValueError(f"an image of shape {shape} allows 1..{max_levels(shape)} squeeze levels, got levels={levels}")


def _multiscale(key, shape, levels: int, make_steps, prior_width: int, make_before=None, make_final=None):
    """Nest ``levels`` :class:`MultiScale` levels. ``make_steps(key, squeezed_shape)`` builds each
    level's layers after the squeeze; ``make_before(key, shape)`` those before it (or ``None``);
    ``make_final(key, shape)`` the layers on the last kept half (or ``None``: the last level
    factors nothing out, as in Glow). Every factor-out gets a learned prior of ``prior_width``
    with :class:`SplitPrior`'s default floor on log σ."""
    c, h, w = shape
    k_steps, k_before, k_prior, k_inner = jax.random.split(key, 4)
    squeezed = (4 * c, h // 2, w // 2)
    kept = (2 * c, h // 2, w // 2)
    before = None if make_before is None else make_before(k_before, shape)
    steps = make_steps(k_steps, squeezed)
    if levels == 1:
        if make_final is None:
            return MultiScale(shape, steps, before=before)
        inner = make_final(k_inner, kept)
    else:
        inner = _multiscale(k_inner, kept, levels - 1, make_steps, prior_width, make_before, make_final)
    prior = SplitPrior(2 * c, 2 * c, prior_width, key=k_prior)
    return MultiScale(shape, steps, inner, prior, before)


def _finish(shape, bijection: Bijection, levels_of_data: int, alpha: float, tails: float | None) -> Transformed:
    """Standard normal → [heavy tails] → the image bijection → logit preprocessing."""
    layers = [bijection, Logit(shape, alpha=alpha, levels=levels_of_data)]
    return Transformed(StandardNormal(shape), Chain(layers if tails is None else [HeavyTails(shape, tails), *layers]))


def glow(key, shape, *, levels: int | None = None, depth: int = 8, width: int = 128,
         coupling_scale: str = "contracting", pixel_levels: int = 256, alpha: float = 0.05,
         tails: float | None = 4.0) -> Transformed:
    """Glow (Kingma & Dhariwal 2018): ``levels`` scales of ``depth`` steps of
    ActNorm → invertible 1×1 convolution (LU) → affine channel coupling, with a learned
    conditional prior at each factor-out.

    **Arguments:**
    - `shape`: ``(c, h, w)``; `levels`: squeeze levels (default: as many as fit, at most 3).
    - `depth`: steps per level (K); `width`: channels of the coupling networks.
    - `coupling_scale`: :class:`ImageCoupling`'s ``scale``: ``"contracting"`` (Glow's: the data →
      latent pass never expands an image through a coupling) or ``"bounded"`` (log-scales within
      ±3: learns faster at first, e.g. 2.30 against 2.98 bits/dim after 1,000 steps of notebook
      02, but its couplings sent one MNIST test image to 10¹⁴ bits/dim after 65 epochs). The
      split priors' log σ is floored softly at −4 (:class:`SplitPrior`), so neither part can
      send an image the model has not seen to an unbounded figure.
    - `pixel_levels`: the data range ``[0, pixel_levels)``; `alpha`: the logit margin; `tails`:
      the :class:`HeavyTails` threshold next to the base, or ``None`` (see the module docstring).
    """
    shape = check_image_shape(shape, "glow")
    levels = min(3, max_levels(shape)) if levels is None else levels
    _check_levels(shape, levels)

    def make_steps(k, s):
        def step(k_step):
            k_coupling, k_conv = jax.random.split(k_step)
            return Chain([ImageCoupling(s, mask="channel", width=width, scale=coupling_scale, key=k_coupling),
                          InvertibleConv1x1(s, key=k_conv), ActNorm(s)])

        return Stack.from_init(step, jax.random.split(k, depth))

    return _finish(shape, _multiscale(key, shape, levels, make_steps, width), pixel_levels, alpha, tails)


def realnvp_multiscale(key, shape, *, levels: int | None = None, couplings: int = 3, width: int = 64,
                       blocks: int = 2, pixel_levels: int = 256, alpha: float = 0.05,
                       tails: float | None = 4.0) -> Transformed:
    """Multi-scale RealNVP (Dinh et al. 2016): at each level ``couplings`` checkerboard
    couplings, a squeeze, ``couplings`` channel couplings, then half the channels factored out;
    four checkerboard couplings on the last kept half. Coupling networks are ResNets with
    ``blocks`` residual blocks; scales are bounded. ActNorm follows every coupling (the role
    batch normalisation plays in the paper, without batch statistics).
    """
    shape = check_image_shape(shape, "realnvp_multiscale")
    levels = min(3, max_levels(shape)) if levels is None else levels
    _check_levels(shape, levels)

    def alternating(mask, n):
        def make(k, s):
            keys = jax.random.split(k, n)
            layers = []
            for i in range(n):
                layers += [ImageCoupling(s, mask=mask, parity=i % 2, width=width, blocks=blocks, key=keys[i]), ActNorm(s)]
            return Chain(layers)

        return make

    return _finish(shape, _multiscale(key, shape, levels, alternating("channel", couplings), width,
                                      make_before=alternating("checkerboard", couplings),
                                      make_final=alternating("checkerboard", 4)), pixel_levels, alpha, tails)


def residual_image_flow(key, shape, *, levels: int | None = None, depth: int = 4, width: int = 64,
                        coeff: float = 0.9, log_det: str = "series", pixel_levels: int = 256,
                        alpha: float = 0.05, tails: float | None = 4.0) -> Transformed:
    """A multi-scale residual flow (Chen et al. 2019): at each level a squeeze, then ``depth``
    × (ActNorm, invertible residual block with spectrally normalised 3×3/1×1/3×3 convolutions),
    and a learned prior at each factor-out. ``log_det="series"`` (Russian roulette) makes
    ``log_prob`` and ``sample_and_log_prob`` take ``key=``."""
    shape = check_image_shape(shape, "residual_image_flow")
    levels = min(3, max_levels(shape)) if levels is None else levels
    _check_levels(shape, levels)

    def make_steps(k, s):
        def step(k_step):
            return Chain([ResidualBlock(s, width=width, coeff=coeff, log_det=log_det, key=k_step), ActNorm(s)])

        return Stack.from_init(step, jax.random.split(k, depth))

    return _finish(shape, _multiscale(key, shape, levels, make_steps, width), pixel_levels, alpha, tails)


IMAGE_CONSTRUCTORS = {"realnvp-ms": realnvp_multiscale, "glow": glow, "residual": residual_image_flow}


def make_image_flow(name: str, key, shape, **kw) -> Transformed:
    """Build an image flow by its command-line name (one of ``IMAGE_MODELS``)."""
    try:
        constructor = IMAGE_CONSTRUCTORS[name]
    except KeyError:
        raise ValueError(f"unknown image model {name!r}; expected one of {', '.join(IMAGE_MODELS)}") from None
    return constructor(key, shape, **kw)


def sample_at_temperature(flow: Transformed, key, n: int, temperature: float = 1.0):
    """``n`` samples with the base noise scaled by ``temperature`` (Glow's reduced-temperature
    sampling: ``T < 1`` trades diversity for cleaner samples). Needs a standard-normal base."""
    if not isinstance(flow.base, StandardNormal):
        raise ValueError(f"temperature sampling scales a standard normal base; this flow's base is {type(flow.base).__name__}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return _forward_batch(flow.bijection, temperature * jax.random.normal(key, (n, *flow.shape)),
                          jax.random.split(jax.random.fold_in(key, 1), n))


@eqx.filter_jit
def _forward_batch(bijection, latents, keys):
    return jax.vmap(lambda z, k: bijection.forward(z, key=k if bijection.needs_key else None))(latents, keys)


def clip_to_pixels(samples, pixel_levels: int = 256):
    """Continuous samples in ``[0, pixel_levels)`` → integer pixel values (floor, then clip)."""
    return jnp.clip(jnp.floor(samples), 0, pixel_levels - 1)
