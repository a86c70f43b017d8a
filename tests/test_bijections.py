"""Every bijection: log-det against autodiff, inverse against forward, tails of splines."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import geoflow as gf
from geoflow.bijections import (
    BlockAutoregressive, Additive, Affine, Chain, Coupling, Elementwise, Invert, Logit, MaskedAutoregressive, Permute,
    RationalQuadraticSpline, Reverse, Stack, Standardize, Exp, Householder, LULinear, LeakyTanh, LocScale,
    MonotoneInverse, Power, Sigmoid, SoftPlus, Tanh, HeavyTails,
)

from helpers import perturb, to_f64

DIM, COND = 4, 3
SPLINE = RationalQuadraticSpline(knots=6, bound=3.0)


def _stack(k):
    def layer(kk):
        return Chain([Coupling(transformer=Affine(), dim=DIM, width=16, depth=1, key=kk), Reverse(DIM)])
    return Stack.from_init(layer, jax.random.split(k, 3))


BIJECTIONS = {
    "coupling-additive": lambda k: Coupling(transformer=Additive(), dim=DIM, width=16, depth=2, key=k),
    "coupling-affine": lambda k: Coupling(transformer=Affine(), dim=DIM, width=16, depth=2, key=k),
    "coupling-spline": lambda k: Coupling(transformer=SPLINE, dim=DIM, width=16, depth=2, key=k),
    "coupling-affine-cond": lambda k: Coupling(transformer=Affine(), dim=DIM, cond_dim=COND, width=16, key=k),
    "coupling-spline-cond": lambda k: Coupling(transformer=SPLINE, dim=DIM, cond_dim=COND, width=16, key=k),
    "made-affine": lambda k: MaskedAutoregressive(transformer=Affine(), dim=DIM, width=16, depth=2, key=k),
    "made-spline": lambda k: MaskedAutoregressive(transformer=SPLINE, dim=DIM, width=16, depth=2, key=k),
    "made-random-order": lambda k: MaskedAutoregressive(transformer=Affine(), dim=DIM, width=16, order="random", key=k),
    "made-spline-cond": lambda k: MaskedAutoregressive(transformer=SPLINE, dim=DIM, cond_dim=COND, width=16, key=k),
    "iaf-cond": lambda k: Invert(MaskedAutoregressive(transformer=Affine(), dim=DIM, cond_dim=COND, width=16, key=k)),
    "elementwise-spline": lambda k: Elementwise(SPLINE, DIM),
    "elementwise-scale": lambda k: Elementwise(Affine(shift=False), DIM),
    "permute": lambda k: Permute(jax.random.permutation(k, DIM)),
    "reverse": lambda k: Reverse(DIM),
    "stack": _stack,
    "chain": lambda k: Chain([Coupling(transformer=SPLINE, dim=DIM, width=8, key=k), Permute(jnp.array([2, 0, 3, 1]))]),
    "standardize": lambda k: Standardize(jnp.arange(DIM) * 0.3, 1.0 + jnp.arange(DIM) * 0.5),
    "leaky-tanh": lambda k: LeakyTanh(DIM, max_val=0.8),  # N(0, 1) inputs fall on both sides of ±0.8
    "heavy-tails": lambda k: HeavyTails(DIM, threshold=0.8),  # likewise
    "loc-scale": lambda k: LocScale(jnp.arange(DIM) * 0.5, 1.0 + jnp.arange(DIM) * 0.3),
    "lu-linear": lambda k: LULinear(DIM, key=k),
    "householder": lambda k: Householder(DIM, 3, key=k),
    "bnaf": lambda k: BlockAutoregressive(DIM, hidden=4, depth=2, key=k),
    "bnaf-cond": lambda k: BlockAutoregressive(DIM, hidden=4, cond_dim=COND, key=k),
    "monotone-inverse": lambda k: MonotoneInverse(lambda x, a: x * jnp.exp(a) + x**3, jnp.zeros(DIM), DIM),
}


def _inputs(bij, key, dtype=jnp.float32):
    kx, kc = jax.random.split(key)
    x = jax.random.normal(kx, (DIM,), dtype)
    c = None if bij.cond_shape is None else jax.random.normal(kc, bij.cond_shape, dtype)
    return x, c


@pytest.mark.parametrize("name", sorted(BIJECTIONS))
def test_log_det_matches_autodiff(name):
    with jax.enable_x64(True):
        bij = to_f64(perturb(BIJECTIONS[name](jax.random.key(0)), jax.random.key(1)))
        # compiled once for the three inputs: op by op, an iterative inverse (BNAF's) takes minutes
        @jax.jit
        def both_ways(x, c):
            y, ld = bij.forward_and_log_det(x, c)
            _, ld_inv = bij.inverse_and_log_det(y, c)
            jac = jax.jacfwd(lambda v: bij.forward(v, c))(x)
            jac_inv = jax.jacfwd(lambda v: bij.inverse(v, c))(y)
            return ld, ld_inv, jnp.linalg.slogdet(jac)[1], jnp.linalg.slogdet(jac_inv)[1]

        for seed in range(3):
            ld, ld_inv, autodiff, autodiff_inv = both_ways(*_inputs(bij, jax.random.key(10 + seed), jnp.float64))
            np.testing.assert_allclose(ld, autodiff, atol=1e-5)
            np.testing.assert_allclose(ld_inv, autodiff_inv, atol=1e-5)
            np.testing.assert_allclose(ld_inv, -ld, atol=1e-8)


@pytest.mark.parametrize("name", sorted(BIJECTIONS))
def test_inverse_inverts_forward_float32(name):
    # moderate parameters: a strongly perturbed spline can have a bin with slope ~1e-2, where
    # float32 rounding of y alone moves the exact inverse by more than 1e-5
    bij = perturb(BIJECTIONS[name](jax.random.key(0)), jax.random.key(1), scale=0.1)
    for seed in range(3):
        x, c = _inputs(bij, jax.random.key(20 + seed))
        np.testing.assert_allclose(bij.inverse(bij.forward(x, c), c), x, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(bij.forward(bij.inverse(x, c), c), x, atol=1e-5, rtol=1e-5)


def test_logit_log_det_and_inverse():
    with jax.enable_x64(True):
        bij = Logit(DIM, alpha=0.05)
        y = jax.random.uniform(jax.random.key(0), (DIM,), jnp.float64)
        x, ld = bij.inverse_and_log_det(y)
        np.testing.assert_allclose(ld, jnp.linalg.slogdet(jax.jacfwd(bij.inverse)(y))[1], atol=1e-8)
        _, ld_f = bij.forward_and_log_det(x)
        np.testing.assert_allclose(ld_f, jnp.linalg.slogdet(jax.jacfwd(bij.forward)(x))[1], atol=1e-8)
        np.testing.assert_allclose(bij.forward(x), y, atol=1e-10)


def test_heavy_tails_give_a_normalised_density_that_prices_far_values_logarithmically():
    with jax.enable_x64(True):
        a = 1.5
        heavy = gf.Transformed(gf.StandardNormal((1,)), HeavyTails(1, threshold=a))
        # quadrature in t with z = sinh(t): the tails reach far, and the grid must follow them
        t = jnp.linspace(-14.0, 14.0, 400_001)
        density = jnp.exp(heavy.log_prob(jnp.sinh(t)[:, None])) * jnp.cosh(t)
        np.testing.assert_allclose(jnp.trapezoid(density, t), 1.0, atol=1e-6)
        inside = jnp.linspace(-a, a, 7)[:, None]
        np.testing.assert_allclose(heavy.log_prob(inside), gf.StandardNormal((1,)).log_prob(inside), atol=1e-12)
        far = jnp.array([[1e3], [-1e6]])
        cost = -heavy.log_prob(far)
        excess = jnp.log1p(jnp.abs(far[:, 0]) - a)
        expected = 0.5 * (a + excess) ** 2 + excess + 0.5 * jnp.log(2 * jnp.pi)
        np.testing.assert_allclose(cost, expected, rtol=1e-10)
        assert float(cost[1]) < 140.0  # a standard normal: 5·10¹¹ nats


def test_heavy_tails_act_on_any_array_shape_and_refuse_bad_settings():
    tails = HeavyTails((2, 3, 3), threshold=2.0)
    x = 3.0 * jax.random.normal(jax.random.key(0), (2, 3, 3))
    y, log_det = tails.forward_and_log_det(x)
    np.testing.assert_allclose(log_det, jnp.sum(jnp.maximum(jnp.abs(x) - 2.0, 0.0)), rtol=1e-6)
    np.testing.assert_allclose(tails.inverse(y), x, atol=1e-5)
    with pytest.raises(ValueError, match="threshold > 0"):
        HeavyTails(3, threshold=0.0)
    with pytest.raises(ValueError, match="positive sizes"):
        HeavyTails((2, 0))


def test_made_is_autoregressive():
    """Output i of MADE depends only on inputs of smaller degree (random order included)."""
    made = perturb(MaskedAutoregressive(transformer=Affine(), dim=5, width=16,
                                        order="random", key=jax.random.key(0)), jax.random.key(1))
    x = jax.random.normal(jax.random.key(2), (5,))
    jac = jax.jacfwd(made.inverse)(x)
    nonzero = np.abs(np.asarray(jac)) > 0
    assert np.linalg.matrix_rank(nonzero.astype(float)) == 5
    # some permutation makes it lower-triangular: count of dependencies is a permutation of 1..5
    assert sorted(nonzero.sum(1).tolist()) == [1, 2, 3, 4, 5]


def test_spline_far_outside_interval_is_finite_with_finite_gradients():
    bij = perturb(Elementwise(SPLINE, 3), jax.random.key(0), scale=1.0)
    x = jnp.array([-1e6, 2.999, 1e6])

    def total(b, v):
        y, ld = b.forward_and_log_det(v)
        xi, ldi = b.inverse_and_log_det(v)
        return jnp.sum(y) + ld + jnp.sum(xi) + ldi

    value, grads = jax.value_and_grad(total, argnums=(0, 1))(bij, x)
    assert np.isfinite(value)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    y = bij.forward(x)
    np.testing.assert_array_equal(np.asarray(y)[[0, 2]], [-1e6, 1e6])  # identity tails


def test_spline_is_identity_at_zero_parameters_and_monotone():
    spline = RationalQuadraticSpline(knots=8, bound=4.0)
    x = jnp.linspace(-5, 5, 1001)
    y, ld = spline.forward(x, tuple(jnp.zeros((spline.num_params, x.size))))
    np.testing.assert_allclose(y, x, atol=1e-5)
    params = tuple(jax.random.normal(jax.random.key(0), (spline.num_params, 1)) * 2)
    ys, lds = jax.vmap(lambda v: spline.forward(v[None], params))(x)
    assert np.all(np.diff(np.asarray(ys[:, 0])) >= 0)
    assert np.all(np.isfinite(np.asarray(lds)))  # log-derivative finite: strictly increasing


def test_stack_compiles_one_layer_regardless_of_depth():
    """The scanned stack traces its layer once: the jaxpr size does not grow with depth."""
    def size(n):
        def layer(k):
            return Coupling(transformer=SPLINE, dim=DIM, width=8, key=k)
        stack = Stack.from_init(layer, jax.random.split(jax.random.key(0), n))
        return len(str(jax.make_jaxpr(stack.forward)(jnp.ones(DIM))))

    assert size(16) <= size(2) * 1.05


def test_permute_rejects_non_permutation():
    with pytest.raises(ValueError, match="permutation of 0..2"):
        Permute(jnp.array([0, 0, 1]))


def test_chain_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same event shape"):
        Chain([Reverse(2), Reverse(3)])


@pytest.mark.parametrize("make, domain", [
    (Exp, lambda u: u), (SoftPlus, lambda u: u), (Sigmoid, lambda u: u), (Tanh, lambda u: u),
    (lambda d: Power(d, 2.5), lambda u: jnp.exp(u)),
], ids=["exp", "softplus", "sigmoid", "tanh", "power"])
def test_scalar_bijections_on_their_domains(make, domain):
    """Maps onto part of ℝ: log-det against autodiff both ways and round trips, on inputs of the
    forward's domain (and, for the inverse, its range)."""
    with jax.enable_x64(True):
        bij = make(DIM)
        x = domain(jax.random.normal(jax.random.key(3), (DIM,), jnp.float64))
        y, ld = bij.forward_and_log_det(x)
        np.testing.assert_allclose(ld, jnp.linalg.slogdet(jax.jacfwd(bij.forward)(x))[1], atol=1e-8)
        back, ld_inv = bij.inverse_and_log_det(y)
        np.testing.assert_allclose(back, x, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(ld_inv, jnp.linalg.slogdet(jax.jacfwd(bij.inverse)(y))[1], atol=1e-8)
    # float32 far in the tails: finite log-dets (no log(0) of a saturated derivative)
    far = jnp.array([-40.0, -5.0, 5.0, 40.0])
    if not isinstance(bij, (Exp, Power)):
        assert bool(jnp.isfinite(make(DIM).forward_and_log_det(far)[1]))


def test_bnaf_is_autoregressive_and_increasing_in_its_own_coordinate():
    """BNAF's Jacobian is lower-triangular with a positive diagonal and nonzero entries below it
    (each output reads every earlier input), for the network pass and for the bisection inverse."""
    bnaf = perturb(BlockAutoregressive(5, hidden=6, depth=2, key=jax.random.key(0)), jax.random.key(1), scale=0.5)
    y = 2.0 * jax.random.normal(jax.random.key(2), (5,))
    for jac in (jax.jacfwd(bnaf.inverse)(y), jax.jacfwd(bnaf.forward)(y)):
        jac = np.asarray(jac)
        assert np.all(np.triu(jac, 1) == 0) and np.all(np.diag(jac) > 0)
        assert np.all(np.abs(jac[np.tril_indices(5, -1)]) > 1e-6)


@pytest.mark.slow
def test_bnaf_learns_a_bimodal_density_no_gaussian_fits():
    """Two well-separated modes: BNAF's fitted NLL is far below the best Gaussian's (the fitted
    Gaussian pays for the empty middle), and close to the data's own entropy."""
    key = jax.random.key(0)
    centres = jnp.array([[-2.5, 0.0], [2.5, 0.0]])
    x = centres[jax.random.bernoulli(key, 0.5, (4000,)).astype(int)] + 0.4 * jax.random.normal(key, (4000, 2))
    flow = gf.bnaf(jax.random.key(1), 2, layers=2, width=16)
    flow, _ = gf.fit(flow, x, key=jax.random.key(2), steps=1500, batch_size=256, learning_rate=1e-2, progress=False)
    nll = -float(flow.log_prob(x).mean())
    gaussian = float(0.5 * jnp.linalg.slogdet(2 * jnp.pi * jnp.e * jnp.cov(x.T))[1])
    entropy = float(jnp.log(2.0) + jnp.log(2 * jnp.pi * jnp.e * 0.16))  # two disjoint modes of variance 0.4²
    assert nll < gaussian - 0.8 and nll < entropy + 0.25, (nll, gaussian, entropy)


def test_monotone_inverse_trains_through_its_bisection():
    """The bisection's inverse carries the implicit gradient: d x / d a of ``x = f⁻¹(y; a)``
    equals −∂f/∂a / f′, checked against the closed form of an affine f."""
    bij = MonotoneInverse(lambda x, a: x * jnp.exp(a[0]) + a[1], jnp.array([0.3, -0.2]), 1)
    y = jnp.array([1.7])
    grad = jax.grad(lambda p: MonotoneInverse(bij.f, p, 1).inverse(y)[0])(bij.params)
    a, b = bij.params
    # x = (y − b) e^{−a}: dx/da = −(y − b) e^{−a}, dx/db = −e^{−a}
    np.testing.assert_allclose(grad, [-(1.7 - b) * jnp.exp(-a), -jnp.exp(-a)], rtol=1e-5)
    with pytest.raises(ValueError, match="bracket"):
        MonotoneInverse(bij.f, bij.params, 1, low=1.0, high=-1.0)
