"""The parametric families of ``geoflow.families`` against ``scipy.stats``: log-densities,
normalisation by quadrature, samples by a Kolmogorov–Smirnov test, and use as a flow's base."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

import geoflow as gf

LOC, SCALE = np.array([0.5, -1.0]), np.array([0.7, 2.0])
FAMILIES = [
    (gf.StudentT(3.5, LOC, SCALE), lambda i: stats.t(3.5, LOC[i], SCALE[i])),
    (gf.Laplace(LOC, SCALE), lambda i: stats.laplace(LOC[i], SCALE[i])),
    (gf.Cauchy(LOC, SCALE), lambda i: stats.cauchy(LOC[i], SCALE[i])),
    (gf.Logistic(LOC, SCALE), lambda i: stats.logistic(LOC[i], SCALE[i])),
    (gf.VonMises(LOC, [0.5, 12.0]), lambda i: stats.vonmises([0.5, 12.0][i], loc=LOC[i])),
]


@pytest.mark.parametrize("dist, reference", FAMILIES, ids=lambda v: type(v).__name__)
def test_family_matches_scipy(dist, reference):
    x = np.asarray(jax.random.uniform(jax.random.key(0), (64, 2), minval=-3.0, maxval=3.0))
    expected = sum(reference(i).logpdf(x[:, i]) for i in range(2))
    np.testing.assert_allclose(dist.log_prob(x), expected, rtol=1e-5, atol=1e-5)
    # each coordinate's density integrates to one (product form: coordinate 0 with 1 fixed)
    # on a grid u with x = loc + sinh(u), which reaches ±4,000 for the heavy tails
    u = np.linspace(-np.pi, np.pi, 20001) if isinstance(dist, gf.VonMises) else np.linspace(-9, 9, 40001)
    v, dv = (u, np.ones_like(u)) if isinstance(dist, gf.VonMises) else (LOC[0] + np.sinh(u), np.cosh(u))
    fixed = x[0, 1]
    points = np.stack([v, np.full_like(v, fixed)], -1)
    density = np.exp(np.asarray(dist.log_prob(points), np.float64) - reference(1).logpdf(fixed))
    assert abs(integrate.trapezoid(density * dv, u) - 1) < 2e-3
    # samples follow the marginals (KS at 4,000 draws)
    draws = np.asarray(dist.sample(jax.random.key(1), 4000))
    if isinstance(dist, gf.VonMises):  # scipy's support is [loc − π, loc + π), ours [−π, π)
        draws = np.mod(draws - LOC + np.pi, 2 * np.pi) + LOC - np.pi
    for i in range(2):
        assert stats.kstest(draws[:, i], reference(i).cdf).pvalue > 1e-3


def test_von_mises_is_zero_off_the_circle_and_samples_within_it():
    vm = gf.VonMises(np.array([3.0]), 50.0)  # mass near π wraps to −π
    draws = np.asarray(vm.sample(jax.random.key(2), 2000))
    assert np.all(np.abs(draws) <= np.pi) and (draws < 0).mean() > 0.01
    assert vm.log_prob(jnp.array([3.5])) == -jnp.inf


def test_gaussian_mixture_matches_scipy_and_samples_its_moments():
    means, scales, weights = np.array([[0.0, 0.0], [3.0, -1.0], [-2.0, 2.0]]), np.array([[1.0, 0.5], [0.3, 0.3], [2.0, 1.0]]), np.array([0.2, 0.5, 0.3])
    mix = gf.GaussianMixture(means, scales, weights)
    x = np.asarray(jax.random.normal(jax.random.key(0), (64, 2))) * 2
    expected = np.log(sum(w * stats.multivariate_normal(m, np.diag(s**2)).pdf(x) for m, s, w in zip(means, scales, weights)))
    np.testing.assert_allclose(mix.log_prob(x), expected, rtol=1e-5, atol=1e-5)
    draws = np.asarray(mix.sample(jax.random.key(1), 20000))
    mean = weights @ means
    second = sum(w * (np.diag(s**2) + np.outer(m, m)) for m, s, w in zip(means, scales, weights))
    np.testing.assert_allclose(draws.mean(0), mean, atol=0.05)
    np.testing.assert_allclose(np.cov(draws.T), second - np.outer(mean, mean), atol=0.1)
    with pytest.raises(ValueError, match="weights"):
        gf.GaussianMixture(means, 1.0, [1.0, 0.0, 1.0])


def test_families_as_a_flow_base_and_as_a_target():
    """A Student-t base under a flow keeps an exact density (it integrates to one); fitting a
    Laplace's parameters by maximum likelihood on Laplace data recovers them; bad parameters
    are refused by name."""
    flow = gf.nsf(jax.random.key(0), 2, layers=2, width=16)
    heavy = gf.Transformed(gf.StudentT(4.0, np.zeros(2), np.ones(2)), flow.bijection)
    grid = np.linspace(-40, 40, 801)
    xx, yy = np.meshgrid(grid, grid)
    mass = float(jnp.sum(jnp.exp(heavy.log_prob(jnp.stack([xx.ravel(), yy.ravel()], -1))))) * (grid[1] - grid[0]) ** 2
    assert abs(mass - 1) < 0.01
    data = np.asarray(gf.Laplace([1.0, -2.0], [0.5, 1.5]).sample(jax.random.key(3), 4000))
    fitted, _ = gf.fit(gf.Laplace([0.0, 0.0], [1.0, 1.0]), data, key=jax.random.key(4), steps=1500, batch_size=256,
                       learning_rate=3e-2, progress=False)
    np.testing.assert_allclose(fitted.loc, np.median(data, 0), atol=0.05)
    np.testing.assert_allclose(jnp.exp(fitted.log_scale), np.mean(np.abs(data - np.median(data, 0)), 0), rtol=0.05)
    for bad in (lambda: gf.StudentT(0.0), lambda: gf.Laplace(0.0, -1.0), lambda: gf.VonMises(0.0, 0.0)):
        with pytest.raises(ValueError):
            bad()
