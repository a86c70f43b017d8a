"""Image flows: Glow's layers, multi-scale RealNVP and Glow, residual flows, dequantisation,
pixel-space bits/dim, the MNIST loader."""

import gzip
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geoflow import fit
from geoflow.bijections import (
    ActNorm, Chain, ImageCoupling, InvertibleConv1x1, Logit, MultiScale, ResidualBlock, SplitPrior, Stack,
    TriangularAffine, squeeze, unsqueeze,
)
from geoflow.dequantization import (
    UniformDequantization, VariationalDequantization, VariationalDequantizer, VariationallyDequantized,
    bound_batched,
)
from geoflow.distributions import StandardNormal, Transformed
from geoflow.bijections.base import needs_data_init
from geoflow.datasets.locations import shared_data
from geoflow.image_flows import glow, realnvp_multiscale, residual_image_flow, sample_at_temperature
from geoflow.nn import conv_chw
from helpers import perturb, to_f64

MNIST = shared_data("mnist.npz") if shared_data("mnist.npz").is_file() else None
needs_mnist = pytest.mark.skipif(MNIST is None, reason="the shared data folder ($GEOFLOW_DATA) holds no mnist.npz")


def check_bijection(bijection, x, atol=1e-6):
    """Inverse ∘ forward is the identity and both log-determinants match autodiff (float64)."""
    with jax.enable_x64(True):
        bijection, x = to_f64(bijection), jnp.asarray(x, jnp.float64)
        n = x.size

        @jax.jit
        def check(bijection, x):
            y, ld_forward = bijection.forward_and_log_det(x)
            back, ld_inverse = bijection.inverse_and_log_det(y)
            jac = jax.jacfwd(lambda v: bijection.forward(v.reshape(x.shape)).ravel())(x.ravel())
            return back, ld_forward, ld_inverse, jnp.linalg.slogdet(jac)[1], jac.shape == (n, n)

        back, ld_forward, ld_inverse, expected, _ = check(bijection, x)
        np.testing.assert_allclose(back, x, atol=atol)
        np.testing.assert_allclose(ld_forward, expected, rtol=1e-7, atol=atol)
        np.testing.assert_allclose(ld_inverse, -expected, rtol=1e-7, atol=atol)


def test_squeeze_round_trip_and_layout():
    x = jnp.arange(2 * 4 * 6, dtype=float).reshape(2, 4, 6)
    s = squeeze(x)
    assert s.shape == (8, 2, 3)
    np.testing.assert_array_equal(unsqueeze(s), x)
    # channel 0..3 of the squeezed image are the four corners of each 2×2 patch of channel 0
    np.testing.assert_array_equal(s[:4, 0, 0], [x[0, 0, 0], x[0, 0, 1], x[0, 1, 0], x[0, 1, 1]])
    with pytest.raises(ValueError, match="divisible by 2"):
        squeeze(jnp.zeros((1, 3, 4)))


@pytest.mark.parametrize("shape", [(2, 4, 4), (4, 4, 4)])
def test_image_layers_log_det_and_inverse(shape):
    keys = jax.random.split(jax.random.key(0), 8)
    x = jax.random.normal(keys[0], shape)
    layers = [
        perturb(ActNorm(shape), keys[1]),
        InvertibleConv1x1(shape, key=keys[2]),
        perturb(ImageCoupling(shape, mask="channel", parity=1, width=8, blocks=1, key=keys[3]), keys[4]),
        perturb(ImageCoupling(shape, mask="checkerboard", parity=0, width=8, key=keys[5]), keys[6]),
        perturb(ImageCoupling(shape, mask="channel", width=8, scale="contracting", key=keys[3]), keys[4]),
        perturb(ImageCoupling(shape, mask="checkerboard", width=8, scale="contracting", key=keys[5]), keys[6]),
        ResidualBlock(shape, width=8, log_det="exact", key=keys[7]),
    ]
    for layer in layers:
        check_bijection(layer, x)


@pytest.mark.parametrize("mask", ["channel", "checkerboard"])
def test_a_contracting_coupling_never_expands_the_data_to_latent_pass(mask):
    """Glow's scale: on inputs far outside anything trained on (values of ±1000, where a
    network's output is huge), the data → latent pass shrinks every moved value's sensitivity
    (∂ out / ∂ in ≤ 1, read by a JVP), while the bounded scale of the same network expands some
    by up to exp(3)."""
    k_net, k_perturb, k_x = jax.random.split(jax.random.key(7), 3)
    x = 1000.0 * jax.random.normal(k_x, (4, 4, 4))

    def sensitivity(scale):
        layer = perturb(ImageCoupling((4, 4, 4), mask=mask, width=8, scale=scale, key=k_net), k_perturb)
        out, ld = layer.inverse_and_log_det(x)
        moved = (out != x) & jnp.isfinite(out)  # the fixed half passes through unchanged
        # the moved half's derivative is exp(−s) elementwise: its JVP along the moved inputs
        tangent = jax.jvp(lambda v: layer.inverse(v), (x,), (moved.astype(x.dtype),))[1]
        return np.asarray(tangent)[np.asarray(moved)], float(ld)

    contracting, ld = sensitivity("contracting")
    assert contracting.size > 0 and np.all(contracting <= 1.0) and ld <= 0.0
    bounded, _ = sensitivity("bounded")
    assert np.max(bounded) > 1.5  # the test can fail: the same network under the ±3 bound expands
    assert np.max(bounded) <= math.exp(3.0) * (1 + 1e-5)


def test_image_coupling_refuses_an_unknown_scale():
    with pytest.raises(ValueError, match="unknown coupling scale 'sigmoid'; expected one of"):
        ImageCoupling((2, 4, 4), scale="sigmoid", key=jax.random.key(0))
    with pytest.raises(ValueError, match="unknown coupling scale 'sigmoid'; expected one of"):
        glow(jax.random.key(0), (1, 4, 4), depth=1, width=8, coupling_scale="sigmoid")


def test_glow_builds_the_coupling_scale_it_is_given():
    couplings = lambda model: [leaf for leaf in jax.tree.leaves(model, is_leaf=lambda x: isinstance(x, ImageCoupling))
                               if isinstance(leaf, ImageCoupling)]
    for scale in ("contracting", "bounded"):
        found = couplings(glow(jax.random.key(0), (1, 4, 4), depth=1, width=8, coupling_scale=scale))
        assert found and {c.scale for c in found} == {scale}
    assert {c.scale for c in couplings(glow(jax.random.key(0), (1, 4, 4), depth=1, width=8))} == {"contracting"}


def test_split_prior_and_multiscale_log_det_on_a_tiny_image():
    k1, k2, k3, k4 = jax.random.split(jax.random.key(1), 4)
    shape = (1, 4, 4)
    steps = perturb(ImageCoupling((4, 2, 2), mask="channel", width=8, key=k1), k2)
    inner = perturb(ImageCoupling((2, 2, 2), mask="checkerboard", width=8, key=k3), k2)
    prior = perturb(SplitPrior(2, 2, 8, key=k4), k3)
    before = perturb(ActNorm(shape), k4)
    check_bijection(MultiScale(shape, steps, inner, prior, before), jax.random.normal(k1, shape))


def test_a_floored_split_prior_expands_the_latent_pass_by_at_most_exp_of_the_floor():
    """On a kept half far outside anything trained on (values of ±1000), the prior network's raw
    log σ reaches −100s; the floored prior's ε = (z − μ)/σ still grows by at most exp(4) per
    value, by a JVP and by its log-determinant, while the unbounded prior of the same network
    expands far beyond it (so the test can fail)."""
    k_net, k_perturb, k_kept, k_z = jax.random.split(jax.random.key(3), 4)
    kept = 1000.0 * jax.random.normal(k_kept, (2, 4, 4))
    z = jax.random.normal(k_z, (2, 4, 4))

    def sensitivity(min_log_std):
        prior = perturb(SplitPrior(2, 2, 8, min_log_std=min_log_std, key=k_net), k_perturb)
        _, log_det = prior.inverse(z, kept)
        # ε is elementwise in z, so a JVP along ones reads every ∂ε/∂z = 1/σ
        tangent = jax.jvp(lambda v: prior.inverse(v, kept)[0], (z,), (jnp.ones_like(z),))[1]
        return np.asarray(tangent), float(log_det)

    floored, log_det = sensitivity(-4.0)
    assert np.max(floored) <= math.exp(4.0) * (1 + 1e-5)
    assert np.max(floored) > math.exp(3.5)  # the floor is reached, not only respected
    assert log_det <= 4.0 * z.size
    unbounded, _ = sensitivity(None)
    assert np.max(unbounded) > 1e3 * math.exp(4.0)


def test_split_prior_refuses_a_floor_that_is_not_negative():
    for floor in (0.0, 2.0):
        with pytest.raises(ValueError, match="min_log_std must be negative"):
            SplitPrior(2, 2, 8, min_log_std=floor, key=jax.random.key(0))


@pytest.mark.parametrize("make", [
    lambda k: glow(k, (1, 4, 4), depth=1, width=8),
    lambda k: realnvp_multiscale(k, (1, 4, 4), couplings=2, width=8, blocks=1),
    lambda k: residual_image_flow(k, (1, 4, 4), depth=1, width=8, log_det="exact"),
], ids=["glow", "realnvp-ms", "residual"])
@pytest.mark.slow
def test_multiscale_models_log_det_and_inverse(make):
    model = perturb(make(jax.random.key(2)), jax.random.key(3), scale=0.1)
    pixels = jax.random.uniform(jax.random.key(4), (1, 4, 4), minval=1.0, maxval=255.0)
    check_bijection(model.bijection, model.bijection.inverse(pixels), atol=1e-5)


@pytest.mark.parametrize("kernel, bias", [(3, True), (1, True), (3, False), (5, True)])
def test_patch_product_convolution_equals_equinox_and_its_gradient(kernel, bias):
    """conv_chw (patches @ kernel, channels-last inside) computes eqx.nn.Conv2d's values and the
    same gradients with respect to the image and the weights."""
    layer = eqx.nn.Conv2d(3, 5, kernel, padding=kernel // 2, use_bias=bias, key=jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (3, 6, 7))
    np.testing.assert_allclose(conv_chw(layer, x), layer(x), atol=1e-5)
    linear_part = layer(x) - (0.0 if layer.bias is None else layer.bias)
    np.testing.assert_allclose(conv_chw(layer, x, bias=False), linear_part, atol=1e-5)
    loss = lambda f: lambda layer, x: jnp.sum(jnp.sin(f(layer, x)))
    ours = jax.grad(loss(conv_chw), argnums=(0, 1))(layer, x)
    theirs = jax.grad(loss(lambda l, x: l(x)), argnums=(0, 1))(layer, x)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_patch_product_convolution_rejects_what_it_does_not_compute():
    strided = eqx.nn.Conv2d(2, 2, 3, stride=2, padding=1, key=jax.random.key(0))
    with pytest.raises(ValueError, match="stride-1.*'same' zero padding"):
        conv_chw(strided, jnp.ones((2, 8, 8)))
    unpadded = eqx.nn.Conv2d(2, 2, 3, key=jax.random.key(0))
    with pytest.raises(ValueError, match="padding"):
        conv_chw(unpadded, jnp.ones((2, 8, 8)))


def test_lu_convolution_determinant_against_slogdet():
    conv = perturb(InvertibleConv1x1((6, 3, 5), key=jax.random.key(5)), jax.random.key(6))
    sign, logabs = jnp.linalg.slogdet(conv.weight)
    _, log_det = conv.forward_and_log_det(jnp.zeros((6, 3, 5)))
    np.testing.assert_allclose(log_det, 15 * logabs, rtol=1e-5)
    # the 1×1 convolution applies the same matrix at every pixel
    x = jax.random.normal(jax.random.key(7), (6, 3, 5))
    np.testing.assert_allclose(conv.forward(x)[:, 1, 2], conv.weight @ x[:, 1, 2], rtol=1e-5, atol=1e-6)


def test_actnorm_data_init_gives_zero_mean_unit_variance_per_channel():
    y = 3.0 + 2.5 * jax.random.normal(jax.random.key(8), (64, 3, 4, 4)) * jnp.array([1.0, 0.1, 4.0])[:, None, None]
    layer, latent = ActNorm((3, 4, 4)).data_init(y)
    assert layer.initialized
    np.testing.assert_allclose(latent.mean(axis=(0, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(latent.std(axis=(0, 2, 3)), 1.0, atol=1e-4)
    again, _ = layer.data_init(y + 10)  # initialized once: later data leave it alone
    np.testing.assert_array_equal(again.bias, layer.bias)


def test_stack_data_init_matches_initializing_each_layer_in_turn():
    """A Stack initializes in a scan; the result is the layers initialized one by one, latent
    side last, each on the previous layer's latents."""
    make = lambda k: Chain([ActNorm((2, 4, 4)), InvertibleConv1x1((2, 4, 4), key=k)])
    stack = Stack.from_init(make, jax.random.split(jax.random.key(20), 3))
    y = 1.5 + 3.0 * jax.random.normal(jax.random.key(21), (32, 2, 4, 4))
    initialized, latent = stack.data_init(y)
    assert needs_data_init(stack) and needs_data_init([stack]) and not needs_data_init(initialized)
    layer_of = lambda stacked, i: eqx.combine(jax.tree.map(lambda a: a[i], eqx.filter(stacked, eqx.is_array)),
                                              eqx.filter(stacked, eqx.is_array, inverse=True))
    expected_latent = y
    for i in reversed(range(3)):
        layer, expected_latent = layer_of(stack.layers, i).data_init(expected_latent)
        np.testing.assert_allclose(initialized.layers.bijections[0].bias[i], layer.bijections[0].bias, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(initialized.layers.bijections[0].log_scale[i], layer.bijections[0].log_scale,
                                   rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(latent, expected_latent, rtol=1e-4, atol=1e-5)
    # the data-side layer (the last) sees the data; its ActNorm sees them through the 1×1
    # convolution's inverse and leaves them with zero mean and unit variance per channel
    last = layer_of(initialized.layers, 2)
    after_actnorm = jax.vmap(lambda image: last.bijections[0].inverse(last.bijections[1].inverse(image)))(y)
    np.testing.assert_allclose(after_actnorm.mean(axis=(0, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(after_actnorm.std(axis=(0, 2, 3)), 1.0, atol=1e-4)


def test_temperature_scales_the_base_noise():
    model = glow(jax.random.key(11), (1, 4, 4), depth=1, width=8)
    cold = sample_at_temperature(model, jax.random.key(12), 8, 0.0001)
    # near T = 0 every sample is the image the zero latent maps to
    np.testing.assert_allclose(cold, jnp.broadcast_to(model.bijection.forward(jnp.zeros((1, 4, 4))), cold.shape), atol=0.1)
    with pytest.raises(ValueError, match="temperature must be positive"):
        sample_at_temperature(model, jax.random.key(12), 8, 0.0)


# ---- pixel-space likelihoods -----------------------------------------------------------------

def test_logit_with_levels_puts_the_density_in_pixel_space():
    logit = Logit((1, 2, 2), alpha=0.05, levels=256)
    check_bijection(logit, jax.random.normal(jax.random.key(13), (1, 2, 2)))
    # the log-determinant includes the 1/256 of the rescaling
    y = jnp.full((1, 2, 2), 128.0)
    _, ld = logit.inverse_and_log_det(y)
    p = 0.05 + 0.9 * 0.5
    np.testing.assert_allclose(ld, 4 * (math.log(0.9 / 256) - math.log(p * (1 - p))), rtol=1e-6)


@needs_mnist
def test_gaussian_on_logit_mnist_reproduces_the_maf_baseline():
    from geoflow.datasets.mnist import load_mnist

    arrays = load_mnist(MNIST)
    rng = np.random.default_rng(0)
    train = arrays["x_train"][:50_000].reshape(-1, 784) + rng.uniform(size=(50_000, 784))
    test = arrays["x_test"].reshape(-1, 784) + rng.uniform(size=(10_000, 784))
    logit = Logit(784, alpha=1e-6, levels=256)
    with jax.enable_x64(True):
        z_train = jax.vmap(logit.inverse)(jnp.asarray(train))
        model = Transformed(StandardNormal(784), Chain([TriangularAffine.fit(z_train), logit]))
        pixel_ll = np.asarray(model.log_prob(jnp.asarray(test)))
        logit_ll = pixel_ll - np.asarray(jax.vmap(lambda y: logit.inverse_and_log_det(y)[1])(jnp.asarray(test)))
    # MAF paper, Table 2: Gaussian −1366.9 ± 1.4 nats (test log-likelihood in logit space)
    assert abs(logit_ll.mean() - (-1366.9)) < 3.0
    stderr = logit_ll.std() / math.sqrt(len(logit_ll))
    assert 0.5 < 2 * stderr < 2.5
    # the same model in pixel space: about 2.0 bits/dim, and the two differ exactly by the logit Jacobian
    bpd = -pixel_ll.mean() / (784 * math.log(2))
    assert 1.9 < bpd < 2.1
    jac = np.log((1 - 2e-6) / 256) - np.log((p := 1e-6 + (1 - 2e-6) * test / 256) * (1 - p))
    np.testing.assert_allclose(pixel_ll - logit_ll, jac.sum(1), rtol=1e-9)


def test_triangular_affine_fit_and_log_det():
    x = jax.random.normal(jax.random.key(14), (500, 3)) @ jnp.array([[2.0, 0, 0], [1.0, 0.5, 0], [0, -1.0, 1.0]]).T
    bij = TriangularAffine.fit(x)
    np.testing.assert_allclose(bij.lower @ bij.lower.T, np.cov(np.asarray(x), rowvar=False, bias=True), rtol=1e-4, atol=1e-5)
    check_bijection(perturb(bij, jax.random.key(15), 0.1), jnp.array([0.3, -1.0, 2.0]))


# ---- residual flows --------------------------------------------------------------------------

def test_russian_roulette_estimate_averages_to_the_exact_log_det():
    block = ResidualBlock((4,), width=16, coeff=0.9, n_exact=1, p=0.5, key=jax.random.key(16))
    y = jax.random.normal(jax.random.key(17), (4,))
    exact = block.exact_log_det(y)
    draws = jax.jit(jax.vmap(lambda k: block.series_log_det(y, k)))(jax.random.split(jax.random.key(18), 20_000))
    stderr = float(draws.std() / math.sqrt(draws.size))
    assert abs(float(draws.mean() - exact)) < 4 * stderr + 1e-4, (float(draws.mean()), float(exact), stderr)
    # the gradient estimate (Neumann series) averages to the gradient of the exact log-det
    grad_exact = jax.grad(block.exact_log_det)(y)
    grad_draws = jax.jit(jax.vmap(jax.grad(block.series_log_det), in_axes=(None, 0)))(y, jax.random.split(jax.random.key(19), 20_000))
    se = grad_draws.std(0) / math.sqrt(20_000)
    assert np.all(np.abs(grad_draws.mean(0) - grad_exact) < 5 * se + 1e-3)


def test_russian_roulette_parameter_gradient_averages_to_the_exact_one():
    """The gradient that trains the network: through every convolution's weight and bias of an
    image block, the Neumann-series surrogate averages to the exact log-det's gradient. The
    block is built near ``g(y) = 0.6 y`` (centre-tap kernels, hidden units biased into
    LipSwish's linear part, plus noise), so the terms the roulette reweights (k ≥ 2) are large
    enough that leaving out their ``1 / P(N ≥ k)`` fails the test."""
    block = ResidualBlock((1, 4, 4), width=16, coeff=0.9, n_exact=1, p=0.5, key=jax.random.key(16))
    keys = iter(jax.random.split(jax.random.key(4), 6))

    def near_identity(conv, hidden):
        centre = jnp.zeros_like(conv.weight).at[..., 1, 1].set(1.0) if conv.weight.shape[-1] == 3 else \
            jnp.eye(conv.weight.shape[0])[..., None, None]
        weight = centre + 0.1 * jax.random.normal(next(keys), conv.weight.shape)
        bias = (4.0 if hidden else 0.0) + 0.1 * jax.random.normal(next(keys), conv.bias.shape)
        return eqx.tree_at(lambda c: (c.weight, c.bias), conv, (weight, bias))

    layers = tuple(eqx.tree_at(lambda s: s.layer, layer, near_identity(layer.layer, i < len(block.layers) - 1))
                   for i, layer in enumerate(block.layers))
    block = eqx.tree_at(lambda b: b.layers, block, layers)
    y = jax.random.normal(jax.random.key(3), (1, 4, 4))
    assert float(jnp.linalg.norm(block.residual(y)) / jnp.linalg.norm(y)) > 0.4
    params, static = eqx.partition(block, eqx.is_inexact_array)
    exact = jax.grad(lambda p: eqx.combine(p, static).exact_log_det(y))(params)
    draws = jax.jit(jax.vmap(lambda k: jax.grad(lambda p: eqx.combine(p, static).series_log_det(y, k))(params)))(
        jax.random.split(jax.random.key(5), 20_000))
    checked = 0
    for want, got in zip(jax.tree.leaves(exact), jax.tree.leaves(draws)):
        se = got.std(0) / math.sqrt(got.shape[0])
        assert np.all(np.abs(got.mean(0) - want) < 5 * se + 1e-4), (want, got.mean(0), se)
        checked += int(np.count_nonzero(want))
    assert checked > 500  # the weights and biases of all three convolutions take part


def test_residual_fixed_point_inverse_reaches_1e_5_and_fails_loudly():
    block = ResidualBlock((1, 4, 4), width=8, tol=1e-7, key=jax.random.key(20))
    latent = jax.random.normal(jax.random.key(21), (1, 4, 4))
    data = block.forward(latent)
    assert float(jnp.max(jnp.abs(data + block.residual(data) - latent))) < 1e-5
    stuck = ResidualBlock((1, 4, 4), width=8, tol=1e-7, max_iter=1, key=jax.random.key(20))
    with pytest.raises(Exception, match="did not converge"):
        jax.block_until_ready(stuck.forward(latent))


@pytest.mark.parametrize("shape", [(6,), (2, 5, 5)], ids=["dense", "conv"])
def test_spectral_normalisation_bounds_every_layer_after_perturbations(shape):
    """Each normalised layer's true operator norm (SVD of its matrix, built from the layer's
    Jacobian) stays ≤ ``coeff`` after random perturbations of the weights, including ones
    whose top singular values nearly tie, where a restarted power iteration falls short."""
    coeff = 0.7
    block = ResidualBlock(shape, width=24, coeff=coeff, key=jax.random.key(22))
    n = math.prod(shape)
    for trial in range(4):
        keys = jax.random.split(jax.random.key(100 + trial), len(block.layers))
        perturbed = eqx.tree_at(lambda b: [l.layer.weight for l in b.layers], block,
                                [l.layer.weight + (3.0 + trial) * jax.random.normal(k, l.layer.weight.shape)
                                 for l, k in zip(block.layers, keys)])
        for layer in perturbed.layers:
            x = jnp.zeros(layer.in_shape)
            matrix = jax.jacfwd(lambda v: layer(v).reshape(-1))(x).reshape(-1, math.prod(layer.in_shape))
            assert float(jnp.linalg.norm(matrix, 2)) <= coeff * (1 + 1e-5)
        jac = jax.jacfwd(lambda v: perturbed.residual(v.reshape(shape)).reshape(-1))(jnp.ones(n))
        assert float(jnp.linalg.norm(jac, 2)) <= coeff ** len(block.layers) * (1 + 1e-5) + 1e-6


# ---- dequantisation --------------------------------------------------------------------------

@pytest.mark.parametrize("base", ["logistic", "normal"])
def test_dequantizer_density_is_its_base_through_the_jacobian_of_the_noise_map(base):
    """``log q(u | x) = log p_base(ε) − log |det ∂u/∂ε|`` with the Jacobian by autodiff, for
    couplings that are not the identity, so that every term (base, couplings, sigmoid) counts."""
    with jax.enable_x64(True):
        deq = to_f64(perturb(VariationalDequantizer((1, 2, 2), levels=4, couplings=2, width=8, base=base,
                                                    key=jax.random.key(30)), jax.random.key(31), scale=0.5))
        x, key = jnp.array([[[0.0, 3.0], [1.0, 2.0]]]), jax.random.key(32)
        u, log_q = deq.sample_and_log_prob(key, x)
        eps = jax.random.logistic(key, deq.shape) if base == "logistic" else jax.random.normal(key, deq.shape)
        noise_map = lambda e: jax.nn.sigmoid(deq.flow.forward_and_log_det(e.reshape(deq.shape), x / 4 - 0.5)[0]).ravel()
        np.testing.assert_allclose(noise_map(eps.ravel()), u.ravel(), rtol=1e-12)
        if base == "logistic":
            log_base = jnp.sum(jax.nn.log_sigmoid(eps) + jax.nn.log_sigmoid(-eps))
        else:
            log_base = jax.scipy.stats.norm.logpdf(eps).sum()
        log_det = jnp.linalg.slogdet(jax.jacfwd(noise_map)(eps.ravel()))[1]
        np.testing.assert_allclose(float(log_q), float(log_base - log_det), rtol=1e-9)


def test_a_fresh_dequantizer_is_uniform_noise():
    """The couplings start as the identity and the logistic base's sigmoid is uniform, so a fresh
    dequantizer is uniform dequantisation: ``log q = 0`` and the draws pass a uniformity test."""
    from scipy import stats

    deq = VariationalDequantizer((1, 8, 8), levels=17, couplings=2, width=8, key=jax.random.key(33))
    x = jnp.floor(17 * jax.random.uniform(jax.random.key(34), (1, 8, 8)))
    u, log_q = jax.vmap(deq.sample_and_log_prob, in_axes=(0, None))(jax.random.split(jax.random.key(35), 200), x)
    np.testing.assert_allclose(log_q, 0.0, atol=1e-4)
    assert stats.kstest(np.asarray(u).ravel(), "uniform").pvalue > 0.01
    normal = VariationalDequantizer((1, 8, 8), levels=17, couplings=2, width=8, base="normal", key=jax.random.key(33))
    assert stats.kstest(np.asarray(jax.vmap(normal.sample_and_log_prob, in_axes=(0, None))(
        jax.random.split(jax.random.key(35), 200), x)[0]).ravel(), "uniform").pvalue < 1e-6
    with pytest.raises(ValueError, match="dequantizer base"):
        VariationalDequantizer((1, 8, 8), base="gumbel", key=jax.random.key(0))


@pytest.mark.slow
def test_variational_dequantization_bound_beats_uniform_after_short_training():
    # toy discrete set: 1×2×2 images with 4 levels whose pixels are all equal (log P = −log 4)
    rng = np.random.default_rng(0)
    data = np.repeat(rng.integers(0, 4, size=(2000, 1, 1, 1)), 4, axis=-1).reshape(2000, 1, 2, 2).astype(np.float32)

    def flow(key):
        k1, k2, k3 = jax.random.split(key, 3)
        layers = [ImageCoupling((1, 2, 2), mask="checkerboard", parity=i % 2, width=16, key=k) for i, k in
                  enumerate(jax.random.split(k1, 4))]
        return Transformed(StandardNormal((1, 2, 2)), Chain([*layers, Logit((1, 2, 2), alpha=0.01, levels=4)]))

    kw = dict(steps=400, batch_size=128, learning_rate=3e-3, val_fraction=0.0, eval_every=200, progress=False)
    uniform, _ = fit(flow(jax.random.key(24)), data, key=jax.random.key(25), loss=UniformDequantization(), **kw)
    model = VariationallyDequantized(flow(jax.random.key(24)),
                                     VariationalDequantizer((1, 2, 2), levels=4, couplings=2, width=16, key=jax.random.key(26)))
    variational, _ = fit(model, data, key=jax.random.key(25), loss=VariationalDequantization(), **kw)
    # bound_batched scores each model by its own bound, in batches (300: the last one is shorter)
    uniform_lb = float(np.mean(bound_batched(uniform, data, jax.random.key(27), batch_size=300)))
    variational_lb = float(np.mean(bound_batched(variational, data, jax.random.key(27), batch_size=300)))
    assert abs(variational_lb - float(jnp.mean(variational.elbo(data, jax.random.key(28), samples=4)))) < 0.02
    print(f"bounds: variational {variational_lb:.3f}, uniform {uniform_lb:.3f}, log P {-math.log(4):.3f}")
    assert variational_lb >= uniform_lb
    assert variational_lb <= -math.log(4) + 0.05  # a bound: never above the true log-likelihood (up to MC noise)


# ---- MNIST loader ----------------------------------------------------------------------------

@needs_mnist
def test_mnist_download_checks_sha256_and_caches(tmp_path):
    from geoflow.datasets.mnist import MNIST_FILES, download_mnist, encode_idx, load_mnist

    arrays = load_mnist(MNIST)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for key, (file, _) in MNIST_FILES.items():  # a local mirror of the original gzipped IDX files
        (mirror / (file + ".gz")).write_bytes(gzip.compress(encode_idx(arrays[key]), compresslevel=1))
    cache = tmp_path / "cache"
    download_mnist(cache, base_url=mirror.as_uri())
    loaded = load_mnist(cache_dir=cache)
    np.testing.assert_array_equal(loaded["x_test"], arrays["x_test"])
    np.testing.assert_array_equal(load_mnist(cache)["y_train"], arrays["y_train"])  # a folder path works too
    # a corrupted file on the mirror is refused by its checksum
    bad = arrays["x_test"].copy()
    bad[0, 0, 0] ^= 1
    (mirror / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(encode_idx(bad), compresslevel=1))
    with pytest.raises(ValueError, match="sha256"):
        download_mnist(tmp_path / "other", base_url=mirror.as_uri())


def test_mnist_without_a_file_or_download_is_a_clear_error(tmp_path):
    from geoflow.datasets.mnist import load_mnist

    with pytest.raises(FileNotFoundError, match="not in the cache"):
        load_mnist(cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_mnist(tmp_path / "missing.npz")


def test_digits_as_images():
    from geoflow.datasets import load_dataset, load_images

    images, vectors = load_images("digits"), load_dataset("digits")
    assert images.shape == (1, 8, 8) and images.levels == 17 and images.dim == 64
    assert set(np.unique(images.train)) <= set(range(17))
    # the same split as the dequantised vector set
    np.testing.assert_array_equal(np.floor(vectors.test * 17), images.test.reshape(-1, 64))
