"""CNFs: trace estimators, the augmented ODE against closed forms, normalisation, adjoints,
RNODE, stacking, and input errors."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.stats as jstats
import numpy as np
import pytest

import geoflow as gf
from geoflow.datasets import load_dataset
from geoflow.continuous import (ODEFlow, ODESolver, RegularizedLikelihood, cnf, exact_divergence, fixed,
                                hutchinson_divergence, probe)

from helpers import perturb


def _nonlinear(x):
    w = jnp.arange(1.0, 1.0 + x.size**2).reshape(x.size, x.size) / x.size**2
    return jnp.tanh(w @ x) * jnp.sin(x) + x**2


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_hutchinson_averages_to_the_exact_trace(kind):
    x = jnp.linspace(-1.0, 1.0, 5)
    value, trace, frob = exact_divergence(_nonlinear, x)
    np.testing.assert_allclose(value, _nonlinear(x), rtol=1e-6)
    np.testing.assert_allclose(trace, jnp.trace(jax.jacfwd(_nonlinear)(x)), rtol=1e-5)
    probes = jax.vmap(lambda k: probe(k, x.shape, kind))(jax.random.split(jax.random.key(0), 20_000))
    _, est, est_frob = jax.vmap(lambda e: hutchinson_divergence(_nonlinear, x, e))(probes)
    # standard error of the mean over 20k probes is well below these tolerances
    assert abs(float(est.mean() - trace)) < 0.05 * abs(float(trace)) + 0.02
    assert abs(float(est_frob.mean() - frob)) < 0.05 * float(frob)


class LinearField(eqx.Module):
    """``v(t, x) = A x``: the time-1 map is ``exp(A)``."""

    a: jax.Array
    shape: tuple = eqx.field(static=True, default=(3,))
    cond_shape: None = eqx.field(static=True, default=None)

    def __call__(self, t, x, condition=None, *, keep=None):
        return self.a @ x


def test_linear_field_gives_the_closed_form_gaussian_density():
    with jax.enable_x64(True):
        a = jnp.array([[0.3, -0.5, 0.1], [0.4, -0.2, 0.0], [0.0, 0.2, 0.5]])
        flow = gf.Transformed(gf.StandardNormal(3), ODEFlow(LinearField(a), ODESolver(rtol=1e-9, atol=1e-9)))
        m = jax.scipy.linalg.expm(a)
        y = jax.random.normal(jax.random.key(0), (7, 3))
        expected = jstats.multivariate_normal.logpdf(y, jnp.zeros(3), m @ m.T)
        np.testing.assert_allclose(flow.log_prob(y), expected, rtol=1e-7)
        np.testing.assert_allclose(flow.bijection.forward(y[0]), m @ y[0], rtol=1e-7)


def _small_cnf(trace="exact", **kw):
    return perturb(cnf(jax.random.key(0), 2, width=16, depth=2, trace=trace, **kw), jax.random.key(1), 0.3)


def test_cnf_density_integrates_to_one():
    flow = _small_cnf(solver=ODESolver(rtol=1e-4, atol=1e-4))
    lim, m = 7.0, 160
    g = jnp.linspace(-lim, lim, m)
    pts = jnp.stack(jnp.meshgrid(g, g), -1).reshape(-1, 2)
    mass = jnp.sum(jnp.exp(flow.log_prob(pts))) * (g[1] - g[0]) ** 2
    assert abs(float(mass) - 1.0) < 0.02


def test_inverse_inverts_and_sample_and_log_prob_agree():
    flow = _small_cnf()
    x, lp = flow.sample_and_log_prob(jax.random.key(2), 8)
    np.testing.assert_allclose(flow.log_prob(x), lp, atol=1e-3)
    z = jax.vmap(flow.bijection.inverse)(x)
    np.testing.assert_allclose(jax.vmap(flow.bijection.forward)(z), x, atol=1e-4)


def test_exact_and_hutchinson_log_densities_agree_in_expectation():
    exact = _small_cnf()
    hutch = eqx.tree_at(lambda m: m.bijection, exact, exact.bijection.with_trace("hutchinson-rademacher"))
    x = jax.random.normal(jax.random.key(3), (4, 2))
    keys = jax.random.split(jax.random.key(4), 400)
    estimates = jax.vmap(lambda k: hutch.log_prob(x, key=k))(keys)
    np.testing.assert_allclose(estimates.mean(0), exact.log_prob(x), atol=4 * float(estimates.std(0).max()) / 20 + 1e-3)
    with pytest.raises(ValueError, match="key="):
        hutch.log_prob(x)


@pytest.mark.slow
def test_backsolve_adjoint_gradient_matches_checkpointed_backprop():
    flow = _small_cnf(solver=ODESolver(rtol=1e-7, atol=1e-7))
    back = eqx.tree_at(lambda m: m.bijection.solver, flow, ODESolver(rtol=1e-7, atol=1e-7, adjoint="backsolve"))
    x = jax.random.normal(jax.random.key(5), (3, 2))
    grad = lambda m: eqx.filter_grad(lambda mm: -mm.log_prob(x).mean())(m)
    g1, g2 = jax.tree.leaves(grad(flow)), jax.tree.leaves(grad(back))
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-3)


def test_stacked_blocks_and_other_bijections_compose():
    flow = _small_cnf(blocks=2)
    chained = gf.Transformed(flow.base, gf.bijections.Chain([gf.bijections.Reverse(2), flow.bijection]))
    x = jax.random.normal(jax.random.key(6), (5, 2))
    np.testing.assert_allclose(chained.log_prob(x), flow.log_prob(x), atol=1e-5)  # reversal is volume-free
    blocks = flow.bijection.bijections
    hutch = eqx.tree_at(lambda m: m.bijection.bijections[1].bijections[1], chained, blocks[1].with_trace("hutchinson"))
    assert hutch.needs_key and jnp.all(jnp.isfinite(hutch.log_prob(x, key=jax.random.key(0))))


def test_rnode_penalties_are_the_integrals_of_a_known_field():
    # v = A x from x(0) = x0: kinetic = ∫‖e^{tA} A x0‖² dt, Jacobian norm = ‖A‖²_F (constant)
    with jax.enable_x64(True):
        a = jnp.array([[0.3, -0.5, 0.1], [0.4, -0.2, 0.0], [0.0, 0.2, 0.5]])
        flow = ODEFlow(LinearField(a), ODESolver(rtol=1e-9, atol=1e-9))
        x0 = jnp.array([0.5, -1.0, 2.0])
        r = flow.integrate(x0, penalties=True)
        ts = jnp.linspace(0, 1, 2001)
        speeds = jax.vmap(lambda t: jnp.sum((jax.scipy.linalg.expm(t * a) @ a @ x0) ** 2))(ts)
        np.testing.assert_allclose(r.kinetic, jnp.trapezoid(speeds, ts), rtol=1e-6)
        np.testing.assert_allclose(r.jacobian, jnp.sum(a**2), rtol=1e-8)
        assert int(r.num_steps) > 0 and int(r.nfe) == 6 * int(r.num_steps)


def test_rnode_training_lowers_the_regularised_loss():
    data = load_dataset("moons", seed=0, n_train=2000, n_val=200, n_test=10).train
    flow = cnf(jax.random.key(0), 2, width=16, depth=2, trace="hutchinson", solver=fixed(8, "heun"))
    loss = RegularizedLikelihood(kinetic=0.05, jacobian=0.05)
    trained, hist = gf.fit(flow, data, key=jax.random.key(1), loss=loss, steps=150, batch_size=128,
                           eval_every=50, progress=False)
    assert hist.val_loss[-1] < hist.val_loss[0] - 0.1


def test_too_few_steps_is_a_clear_error_not_a_hang():
    flow = eqx.tree_at(lambda m: m.bijection.solver, _small_cnf(), ODESolver(max_steps=2, rtol=1e-9, atol=1e-9))
    with pytest.raises(Exception, match="max_steps=2"):
        jax.block_until_ready(flow.log_prob(jnp.ones((2, 2))))


def test_wrong_context_shape_is_named():
    flow = cnf(jax.random.key(0), 2, width=8, depth=1, cond_dim=3)
    with pytest.raises(ValueError, match="condition"):
        flow.log_prob(jnp.ones((4, 2)), jnp.ones((4, 2)))
    with pytest.raises(ValueError, match="expected"):
        flow.log_prob(jnp.ones((4, 3)), jnp.ones((4, 3)))
    assert flow.log_prob(jnp.ones((4, 2)), jnp.ones((4, 3))).shape == (4,)
