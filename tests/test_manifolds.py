"""Manifolds: geometry against geomstats (the oracle), round trips, rotation conversions near
0 and π, priors, and Riemannian flow matching (normalisation, samples on the manifold, errors)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from geomstats.geometry.hypersphere import Hypersphere
from geomstats.geometry.special_orthogonal import SpecialOrthogonal

import geoflow as gf
import geoflow.metrics
from geoflow.continuous import ODESolver, fixed, with_solver
from manifolds import (SO3, GeodesicFlowMatching, Sphere, Torus, UniformOn, matrix_to_quaternion,
                       matrix_to_rotvec, quaternion_to_matrix, rfm, rotvec_to_matrix)


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


def _pairs(manifold, n=20, seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return manifold.random_uniform(k1, (n,)), manifold.random_uniform(k2, (n,))


def test_sphere_matches_geomstats():
    gs_sphere, s = Hypersphere(2), Sphere(2)
    x, y = _pairs(s)
    xn, yn = np.asarray(x), np.asarray(y)
    np.testing.assert_allclose(jax.vmap(s.log)(x, y), gs_sphere.metric.log(yn, xn), atol=1e-5)
    np.testing.assert_allclose(jax.vmap(s.dist)(x, y), gs_sphere.metric.dist(xn, yn), atol=1e-5)
    v = jax.vmap(s.to_tangent)(x, jax.random.normal(jax.random.key(1), x.shape))
    np.testing.assert_allclose(jax.vmap(s.exp)(x, v), gs_sphere.metric.exp(np.asarray(v), xn), atol=1e-5)
    geo = gs_sphere.metric.geodesic(initial_point=xn[0], end_point=yn[0])(np.array([0.3]))
    np.testing.assert_allclose(s.geodesic(x[0], y[0], 0.3), np.reshape(geo, -1), atol=1e-5)


@pytest.mark.parametrize("x64", [False, True], ids=["float32", "float64"])
def test_sphere_log_is_exact_up_to_the_cut_locus(x64):
    """Poles from latitude/longitude, exact antipodes, and pairs at π − 10⁻ᵏ: ``|log| = d`` and
    ``exp(x, log(x, y)) = y``. A floor inside the square root once gave |log| = 0.38 for the poles
    in float64 and 0 to 1.26 for exact antipodes."""
    with jax.enable_x64(x64):
        s = Sphere(2)
        dtype = jnp.float64 if x64 else jnp.float32
        eps = 1e-6 if x64 else 3e-3  # float32 resolves angles near π only to ~1e-3 (cos is flat there)
        north, south = s.from_lat_lon(jnp.array([90.0, 0.0], dtype)), s.from_lat_lon(jnp.array([-90.0, 0.0], dtype))
        x = s.random_uniform(jax.random.key(0), (6,)).astype(dtype)
        gaps = jnp.asarray([1e-1, 1e-3, 1e-5, 1e-8, 1e-14, 0.0], dtype)
        v = jax.vmap(s.to_tangent)(x, jax.random.normal(jax.random.key(1), x.shape, dtype))
        v = v / jnp.linalg.norm(v, axis=1, keepdims=True) * (jnp.pi - gaps)[:, None]
        y = jax.vmap(s.exp)(x, v)  # at distance π − gap along v
        xs, ys = jnp.concatenate([x, -x, north[None]]), jnp.concatenate([y, x, south[None]])
        logs = jax.vmap(s.log)(xs, ys)
        assert bool(jnp.all(jnp.isfinite(logs)))
        np.testing.assert_allclose(jnp.linalg.norm(logs, axis=1), jax.vmap(s.dist)(xs, ys), atol=1e-6)
        np.testing.assert_allclose(jax.vmap(s.dist)(x, -x), jnp.pi, atol=1e-6)
        np.testing.assert_allclose(jax.vmap(s.exp)(xs, logs), ys, atol=eps)
        np.testing.assert_allclose(jnp.sum(xs * logs, axis=1), 0.0, atol=1e-5)  # tangent


def _near_pi_rotations(n=10):
    axes = jax.random.normal(jax.random.key(3), (n, 3))
    axes = axes / jnp.linalg.norm(axes, axis=1, keepdims=True)
    angles = jnp.pi - jnp.logspace(-7, -1, n)
    return jax.vmap(rotvec_to_matrix)(axes * angles[:, None])


def test_so3_matches_geomstats_including_near_pi():
    gs_so3, so3 = SpecialOrthogonal(3), SO3()
    r, s = _pairs(so3)
    s = jnp.concatenate([s, jnp.einsum("nij,njk->nik", r[:10], _near_pi_rotations())])
    r = jnp.concatenate([r, r[:10]])
    rn, sn = np.asarray(r), np.asarray(s)
    np.testing.assert_allclose(jax.vmap(so3.dist)(r, s), gs_so3.metric.dist(rn, sn), atol=1e-5)
    logs = jax.vmap(so3.log)(r[:20], s[:20])  # the logarithm is unique away from π
    np.testing.assert_allclose(logs, gs_so3.metric.log(sn[:20], rn[:20]), atol=1e-5)
    np.testing.assert_allclose(jax.vmap(so3.exp)(r[:20], logs), gs_so3.metric.exp(np.asarray(logs), rn[:20]), atol=1e-5)
    near = jax.vmap(so3.exp)(r[20:], jax.vmap(so3.log)(r[20:], s[20:]))
    np.testing.assert_allclose(near, s[20:], atol=1e-6)  # exp∘log recovers the point even at angle ≈ π


def test_se3_matches_geomstats_canonical_left_metric():
    """geomstats' SE(3) metric is Frobenius on the rotation block (twice our ½ tr), so its
    distance is √2 times ours with translations weighted 1/√2; exp, log and geodesics agree."""
    from geomstats.geometry.special_euclidean import SpecialEuclidean

    from manifolds import SE3

    gs_se3, se3 = SpecialEuclidean(n=3), SE3(translation_scale=2**-0.5)
    p = gs_se3.random_point(6)
    to12 = lambda m: jnp.concatenate([jnp.asarray(m[..., :3, :3]).reshape(*m.shape[:-2], 9), jnp.asarray(m[..., :3, 3])], -1)
    x, y = to12(p[:3]), to12(p[3:])
    v = gs_se3.to_tangent(np.random.default_rng(0).normal(size=(3, 4, 4)), p[:3])
    np.testing.assert_allclose(jax.vmap(se3.exp)(x, to12(v)), to12(gs_se3.metric.exp(v, p[:3])), atol=1e-5)
    np.testing.assert_allclose(jax.vmap(se3.log)(x, y), to12(gs_se3.metric.log(p[3:], p[:3])), atol=1e-5)
    np.testing.assert_allclose(np.sqrt(2) * jax.vmap(se3.dist)(x, y), gs_se3.metric.dist(p[:3], p[3:]), atol=1e-5)
    geo = gs_se3.metric.geodesic(initial_point=p[0], end_point=p[3])(np.array([0.3]))
    np.testing.assert_allclose(se3.geodesic(x[0], y[0], 0.3), to12(np.reshape(geo, (4, 4))), atol=1e-5)


@pytest.mark.parametrize("manifold", [Sphere(2), Sphere(4), Torus(3), SO3()], ids=repr)
def test_exp_log_round_trip_and_idempotent_projections(manifold):
    x, y = _pairs(manifold, seed=4)
    v = jax.vmap(manifold.log)(x, y)
    np.testing.assert_allclose(jax.vmap(manifold.exp)(x, v), y, atol=1e-6)
    np.testing.assert_allclose(jax.vmap(manifold.to_tangent)(x, v), v, atol=1e-10)
    np.testing.assert_allclose(jax.vmap(manifold.proj)(y), y, atol=1e-10)
    assert bool(jnp.all(jax.vmap(manifold.belongs)(y)))
    np.testing.assert_allclose(jax.vmap(manifold.dist)(x, y), jax.vmap(manifold.norm)(x, v), rtol=1e-8)


def test_rotation_conversions_and_their_gradients_near_zero_and_pi():
    rots = jnp.concatenate([_near_pi_rotations(), jax.vmap(rotvec_to_matrix)(jnp.logspace(-9, -2, 5)[:, None] * jnp.ones(3))])
    w = jax.vmap(matrix_to_rotvec)(rots)
    np.testing.assert_allclose(jax.vmap(rotvec_to_matrix)(w), rots, atol=1e-9)
    np.testing.assert_allclose(jax.vmap(quaternion_to_matrix)(jax.vmap(matrix_to_quaternion)(rots)), rots, atol=1e-12)
    grads = jax.vmap(jax.grad(lambda r: jnp.sum(matrix_to_rotvec(r) ** 2)))(rots)
    assert bool(jnp.all(jnp.isfinite(grads)))
    assert bool(jnp.all(jnp.isfinite(jax.grad(lambda v: jnp.sum(rotvec_to_matrix(v)))(jnp.zeros(3)))))


def test_uniform_priors_are_normalised_and_haar():
    assert math.exp(Sphere(2).log_volume()) == pytest.approx(4 * math.pi)
    assert math.exp(SO3().log_volume()) == pytest.approx(8 * math.pi**2)
    # Haar measure on SO(3): the rotation angle has density (1 − cos θ)/π on [0, π]
    angles = jax.vmap(lambda r: jnp.linalg.norm(matrix_to_rotvec(r)))(SO3().random_uniform(jax.random.key(0), (40_000,)))
    hist, edges = np.histogram(np.asarray(angles), bins=10, range=(0, np.pi), density=True)
    centres = 0.5 * (edges[1:] + edges[:-1])
    np.testing.assert_allclose(hist, (1 - np.cos(centres)) / np.pi, atol=0.03)
    with pytest.raises(ValueError, match="not compact"):
        from manifolds import Euclidean

        UniformOn(Euclidean(2))


def fibonacci_sphere(n):
    i = jnp.arange(n) + 0.5
    polar, azimuth = jnp.arccos(1 - 2 * i / n), jnp.pi * (1 + 5**0.5) * i
    return jnp.stack([jnp.cos(azimuth) * jnp.sin(polar), jnp.sin(azimuth) * jnp.sin(polar), jnp.cos(polar)], -1)


@pytest.fixture(scope="module")
def sphere_model():
    with jax.enable_x64(False):
        s = Sphere(2)
        x = jax.vmap(s.proj)(0.4 * s.random_uniform(jax.random.key(0), (4000,)) + jnp.array([0.0, 0.0, 1.0]))
        model = rfm(jax.random.key(1), s, width=64, depth=3, solver=fixed(20, "midpoint"))
        model, _ = gf.fit(model, np.asarray(x), key=jax.random.key(2), loss=GeodesicFlowMatching(), steps=600,
                          batch_size=256, learning_rate=3e-3, progress=False)
        return model


def test_rfm_on_the_sphere_integrates_to_one_and_samples_stay_on_it(sphere_model):
    with jax.enable_x64(False):
        mass = jnp.mean(jnp.exp(sphere_model.log_prob(fibonacci_sphere(20_000)))) * 4 * jnp.pi
        assert abs(float(mass) - 1.0) < 0.02
        samples = sphere_model.sample(jax.random.key(3), 500)
        assert bool(jnp.all(jax.vmap(lambda p: Sphere(2).belongs(p, 1e-5))(samples)))
        assert float(samples[:, 2].mean()) > 0.8  # the data sit around the north pole
        with pytest.raises(Exception, match="off the"):
            jax.block_until_ready(sphere_model.log_prob(jnp.array([[1.0, 1.0, 0.0]])))


def test_rfm_log_prob_accuracy_is_set_by_the_solver(sphere_model):
    """The likelihood's accuracy is the solver's: two adaptive tolerances agree to 1e-3 nats
    per dimension, while the 20 midpoint steps the model trained with are an approximation."""
    with jax.enable_x64(False):
        x = fibonacci_sphere(64)
        coarse = gf.metrics.log_prob_batched(sphere_model, x, solver=ODESolver(rtol=1e-5, atol=1e-5))
        fine = gf.metrics.log_prob_batched(sphere_model, x, solver=ODESolver(rtol=1e-7, atol=1e-7))
        np.testing.assert_allclose(coarse / 2, fine / 2, atol=1e-3)


def test_fourier_features_are_fixed_and_the_field_stays_a_field_on_the_sphere():
    """The random frequencies are an input encoding, not parameters: training moves the MLP and
    leaves them alone; the flow they feed is still normalised on S²; bad sizes are refused."""
    with jax.enable_x64(False):
        s = Sphere(2)
        x = jax.vmap(s.proj)(0.2 * s.random_uniform(jax.random.key(0), (2000,)) + jnp.array([1.0, 0.0, 0.0]))
        model = rfm(jax.random.key(1), s, width=32, depth=2, fourier_features=16, fourier_scale=5.0,
                    solver=fixed(20, "midpoint"))
        field = lambda m: m.bijection.field
        lengths = jnp.linalg.norm(field(model).frequencies.value, axis=1)
        assert field(model).frequencies.value.shape == (8, 3) and bool(jnp.all((lengths >= 1) & (lengths <= 5)))
        trained, _ = gf.fit(model, np.asarray(x), key=jax.random.key(2), loss=GeodesicFlowMatching(), steps=200,
                            batch_size=256, learning_rate=3e-3, progress=False)
        assert bool(jnp.all(field(trained).frequencies.value == field(model).frequencies.value))
        assert not bool(jnp.all(field(trained).mlp.mlp.weights[0] == field(model).mlp.mlp.weights[0]))
        exact = with_solver(trained, ODESolver(rtol=1e-5, atol=1e-5))  # not the 20 training-time steps
        mass = jnp.mean(jnp.exp(exact.log_prob(fibonacci_sphere(20_000)))) * 4 * jnp.pi
        assert abs(float(mass) - 1.0) < 0.01
        assert float(exact.log_prob(x[:500]).mean()) > float(s.uniform_log_prob()) + 1.0
    for bad in (3, -2):
        with pytest.raises(ValueError, match="fourier_features"):
            rfm(jax.random.key(0), s, fourier_features=bad)
    with pytest.raises(ValueError, match="fourier_scale"):
        rfm(jax.random.key(0), s, fourier_features=4, fourier_scale=0.5)


@pytest.mark.parametrize("power", [1.0, 3.0])
def test_flow_matching_times_follow_the_stated_law(power):
    """``GeodesicFlowMatching(time_power=p)`` draws t with CDF ``1 − (1 − t)^{1/p}``
    (Kolmogorov–Smirnov at 20,000 draws); a power that is not positive is refused."""
    from scipy import stats

    from manifolds.matching import draw_times

    t = np.asarray(draw_times(jax.random.key(0), 20_000, power))
    assert stats.kstest(t, lambda s: 1 - (1 - s) ** (1 / power)).pvalue > 1e-3
    assert np.mean(t > 0.99) == pytest.approx(0.01 ** (1 / power), abs=0.01)
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="time_power"):
            GeodesicFlowMatching(time_power=bad)


def test_rfm_on_so3_integrates_to_one_against_the_uniform_measure():
    with jax.enable_x64(False):
        so3 = SO3()
        centre = rotvec_to_matrix(jnp.array([0.3, -0.2, 0.5]))
        noise = jax.vmap(rotvec_to_matrix)(0.3 * jax.random.normal(jax.random.key(0), (3000, 3)))
        data = jnp.einsum("ij,njk->nik", centre, noise)
        model = rfm(jax.random.key(1), so3, width=64, depth=3, solver=fixed(20, "midpoint"))
        model, _ = gf.fit(model, np.asarray(data), key=jax.random.key(2), loss=GeodesicFlowMatching(), steps=400,
                          batch_size=256, learning_rate=3e-3, progress=False)
        uniform = so3.random_uniform(jax.random.key(4), (20_000,))
        ratio = jnp.exp(model.log_prob(uniform) - so3.uniform_log_prob())
        mean, stderr = float(ratio.mean()), float(ratio.std() / jnp.sqrt(ratio.size))
        assert abs(mean - 1.0) < 4 * stderr + 0.02
        assert float(model.log_prob(data[:500]).mean()) > so3.uniform_log_prob() + 0.5  # learned something
        with pytest.raises(Exception, match="off the"):
            jax.block_until_ready(model.log_prob(2.0 * jnp.eye(3)[None]))


def test_products_powers_and_se3_round_trip_with_the_product_metric():
    from manifolds import SE3, Power, Product

    se3 = SE3(translation_scale=0.1)
    r = SO3().random_uniform(jax.random.key(0), (2,))
    t = jax.random.normal(jax.random.key(1), (2, 3))
    x, y = (jnp.concatenate([r[i].reshape(-1), t[i]]) for i in range(2))
    v = se3.log(x, y)
    np.testing.assert_allclose(se3.exp(x, v), y, atol=1e-9)
    rot, trans = se3.split(v)
    np.testing.assert_allclose(rot, SO3().log(r[0], r[1]), atol=1e-12)
    np.testing.assert_allclose(trans, t[1] - t[0], atol=1e-12)
    expected = np.sqrt(float(SO3().dist(r[0], r[1])) ** 2 + 0.01 * float(jnp.sum((t[1] - t[0]) ** 2)))
    assert float(se3.dist(x, y)) == pytest.approx(expected, rel=1e-9)
    assert float(se3.norm(x, v)) == pytest.approx(expected, rel=1e-9)
    for manifold in (Power(SO3(), 4), Product([Sphere(2), Torus(2)])):
        a, b = _pairs(manifold, n=3, seed=5)
        np.testing.assert_allclose(jax.vmap(manifold.exp)(a, jax.vmap(manifold.log)(a, b)), b, atol=1e-8)
        assert bool(jnp.all(jax.vmap(manifold.belongs)(b)))
    assert math.exp(Product([Sphere(2), Torus(2)]).log_volume()) == pytest.approx(4 * math.pi * (2 * math.pi) ** 2)


@pytest.mark.parametrize("eps", [0.1, 0.5, 1.0])
def test_igso3_is_normalised_and_samples_follow_its_angle_marginal(eps):
    from manifolds import IGSO3, igso3_density

    grid = np.linspace(0, np.pi, 20_001)
    marginal = (1 - np.cos(grid)) / np.pi * igso3_density(grid, eps, terms=max(2000, int(40 / eps)))
    assert np.trapezoid(marginal, grid) == pytest.approx(1.0, abs=1e-4)
    prior = IGSO3(eps, mean=rotvec_to_matrix(jnp.array([0.2, 0.1, -0.3])))
    with jax.enable_x64(False):
        uniform = SO3().random_uniform(jax.random.key(0), (200_000,))
        ratio = np.asarray(jnp.exp(prior.log_prob(uniform) - SO3().uniform_log_prob()), np.float64)
        assert abs(ratio.mean() - 1) < 4 * ratio.std() / np.sqrt(ratio.size) + 1e-3
        samples = prior.sample(jax.random.key(1), 20_000)
        assert bool(jnp.all(jax.vmap(SO3().belongs)(samples)))
        angles = np.asarray(jax.vmap(lambda r: jnp.linalg.norm(matrix_to_rotvec(prior.mean.T @ r)))(samples))
    mean_angle = np.trapezoid(grid * marginal, grid)
    assert abs(angles.mean() - mean_angle) < 4 * angles.std() / np.sqrt(angles.size)


@pytest.mark.parametrize("sigma", [0.3, 1.0])
def test_wrapped_normal_mixture_on_so3_is_normalised(sigma):
    from manifolds import WrappedNormalMixtureSO3

    with jax.enable_x64(False):
        mixture = WrappedNormalMixtureSO3(SO3().random_uniform(jax.random.key(0), (3,)), sigma)
        uniform = SO3().random_uniform(jax.random.key(1), (100_000,))
        ratio = np.asarray(jnp.exp(mixture.log_prob(uniform) - SO3().uniform_log_prob()), np.float64)
        assert abs(ratio.mean() - 1) < 4 * ratio.std() / np.sqrt(ratio.size) + 1e-3
        samples = mixture.sample(jax.random.key(2), 1000)
        assert bool(jnp.all(jax.vmap(SO3().belongs)(samples)))
        assert bool(jnp.all(jnp.isfinite(mixture.log_prob(jnp.broadcast_to(mixture.means[0], (2, 3, 3))))))


def _wrapped_normal_cases():
    from manifolds import Product

    return [(Sphere(1), 2.0), (Sphere(2), 0.5), (Sphere(3), 0.7), (Torus(2), 1.5), (SO3(), 0.6),
            (Product([Sphere(2), Torus(1)], scales=[1.0, 2.0]), 0.8)]


@pytest.mark.parametrize("manifold,sigma", _wrapped_normal_cases(), ids=["S1", "S2", "S3", "T2", "SO3", "S2xT1"])
def test_wrapped_normals_are_normalised_and_sample_their_density(manifold, sigma):
    """Against the uniform measure: E_u[p/u] = 1, and E_u[d(μ,x) p/u] = E_p[d(μ,x)] from samples."""
    from manifolds import WrappedNormal

    mean = manifold.random_uniform(jax.random.key(0))
    prior = WrappedNormal(manifold, mean, sigma)
    u = manifold.random_uniform(jax.random.key(1), (100_000,))
    ratio = np.asarray(jnp.exp(prior.log_prob(u) - manifold.uniform_log_prob()))
    assert abs(ratio.mean() - 1) < 4 * ratio.std() / np.sqrt(ratio.size) + 2e-3
    samples = prior.sample(jax.random.key(2), 10_000)
    assert bool(jnp.all(jax.vmap(manifold.belongs)(samples)))
    dist_u = np.asarray(jax.vmap(lambda p: manifold.dist(mean, p))(u)) * ratio
    dist_p = np.asarray(jax.vmap(lambda p: manifold.dist(mean, p))(samples))
    tol = 4 * np.hypot(dist_u.std() / np.sqrt(dist_u.size), dist_p.std() / np.sqrt(dist_p.size))
    assert abs(dist_u.mean() - dist_p.mean()) < tol


def test_wrapped_normal_on_the_sphere_integrates_to_one_on_a_lattice():
    from manifolds import WrappedNormal

    prior = WrappedNormal(Sphere(2), jnp.array([0.0, 0.6, 0.8]), 0.4)
    grid = fibonacci_sphere(100_000)
    assert float(jnp.mean(jnp.exp(prior.log_prob(grid))) * 4 * jnp.pi) == pytest.approx(1.0, abs=2e-3)
    with pytest.raises(Exception, match="off the"):
        WrappedNormal(Sphere(2), jnp.array([0.0, 0.0, 2.0]), 0.4)


def test_se3_prior_is_igso3_times_a_gaussian_in_the_product_volume():
    from manifolds import IGSO3, SE3, WrappedNormal, se3_prior

    se3 = SE3(translation_scale=0.5)
    prior = se3_prior(se3, rotation_eps=0.5, translation_loc=[1.0, 2.0, 3.0], translation_scale=2.0)
    x = prior.sample(jax.random.key(0), 3000)
    assert bool(jnp.all(jax.vmap(se3.belongs)(x)))
    rot, trans = x[:, :9].reshape(-1, 3, 3), x[:, 9:]
    np.testing.assert_allclose(trans.mean(0), [1, 2, 3], atol=0.15)
    np.testing.assert_allclose(trans.std(0), 2.0, rtol=0.08)
    expected = (IGSO3(0.5).log_prob(rot) - 0.5 * jnp.sum(((trans - jnp.array([1.0, 2, 3])) / 2) ** 2, -1)
                - 3 * jnp.log(2.0) - 1.5 * jnp.log(2 * jnp.pi) - 3 * jnp.log(0.5))
    np.testing.assert_allclose(prior.log_prob(x), expected, rtol=1e-5)
    # a wrapped normal on SE(3): translation spread σ / scale, rotation angle spread σ
    wn = WrappedNormal(se3, x[0], 0.3).sample(jax.random.key(1), 3000)
    np.testing.assert_allclose((wn[:, 9:] - x[0, 9:]).std(0), 0.6, rtol=0.08)


def test_rfm_on_the_torus_learns_a_checkerboard_and_integrates_to_one():
    from manifolds.datasets import torus_checkerboard, torus_checkerboard_log_prob

    x = torus_checkerboard(4000, seed=0)
    assert np.all(np.isfinite(torus_checkerboard_log_prob(x)))
    with jax.enable_x64(False):
        model = rfm(jax.random.key(0), Torus(2), width=64, depth=3, solver=fixed(20, "midpoint"))
        model, _ = gf.fit(model, x, key=jax.random.key(1), loss=GeodesicFlowMatching(), steps=1500, batch_size=256,
                          learning_rate=3e-3, progress=False)
        g = (jnp.arange(60) + 0.5) * 2 * jnp.pi / 60
        grid = jnp.stack(jnp.meshgrid(g, g), -1).reshape(-1, 2)
        density = jnp.exp(model.log_prob(grid))
        assert abs(float(density.mean() * 4 * jnp.pi**2) - 1.0) < 0.02
        dark = np.isfinite(torus_checkerboard_log_prob(np.asarray(grid)))
        assert float(density[dark].mean()) > 2 * float(density[~dark].mean())  # it learned the squares
        samples = model.sample(jax.random.key(2), 500)
        assert bool(jnp.all(jax.vmap(Torus(2).belongs)(samples)))
        # angles are periodic: [−π, π) (dihedral convention) or any finite angle is wrapped, not refused
        shifted = jnp.where(grid >= jnp.pi, grid - 2 * jnp.pi, grid)
        np.testing.assert_allclose(model.log_prob(shifted), model.log_prob(grid), atol=1e-4)
        np.testing.assert_allclose(model.log_prob(grid + 6 * jnp.pi), model.log_prob(grid), atol=1e-3)
        np.testing.assert_allclose(GeodesicFlowMatching().check_data(model, np.asarray(shifted)), grid, atol=1e-5)


def test_tangent_bases_are_orthonormal_and_span_the_tangent_projection():
    """The exact Riemannian divergence pushes only these directions through the field."""
    import jax
    import jax.numpy as jnp

    from manifolds import SO3, CentredPoints, Euclidean, Power, Product, Sphere, Torus
    from manifolds.base import Manifold

    with jax.enable_x64(True):
        so3 = SO3().random_uniform(jax.random.key(0)).astype(jnp.float64)
        sphere = Sphere(2).proj(jnp.array([0.3, -1.2, 0.5]))
        cases = [(Euclidean(3), jnp.ones(3)), (Torus(2), jnp.ones(2)), (Sphere(2), sphere), (SO3(), so3),
                 (CentredPoints(4, 3), CentredPoints(4, 3).proj(jnp.arange(12.0).reshape(4, 3) ** 1.5)),
                 (Power(SO3(), 3), SO3().random_uniform(jax.random.key(1), (3,)).astype(jnp.float64)),
                 (Product([Sphere(2), SO3()], scales=[1.0, 2.0]), jnp.concatenate([sphere, so3.reshape(-1)]))]
        for m, x in cases:
            n = int(np.prod(m.shape))
            projector = jax.vmap(lambda e: m.to_tangent(x, e.reshape(m.shape)).reshape(-1))(jnp.eye(n)).T
            for basis in (m.tangent_basis(x), Manifold.tangent_basis(m, x)):  # closed form and the default
                b = np.asarray(basis).reshape(m.dim, n)
                np.testing.assert_allclose(b @ b.T, np.eye(m.dim), atol=1e-12, err_msg=type(m).__name__)
                np.testing.assert_allclose(b.T @ b, projector, atol=1e-12, err_msg=type(m).__name__)


@pytest.mark.slow
def test_manifold_distributions_refuse_points_and_means_off_their_manifold():
    """Points of norm 2 and reflections were scored with finite log-densities; unchecked means
    were accepted. Both are now refused at the boundary, as the flow models do."""
    from manifolds import IGSO3, UniformOn, WrappedNormal, WrappedNormalMixtureSO3

    so3, sphere = SO3(), Sphere(2)
    reflection = jnp.diag(jnp.array([1.0, 1.0, -1.0]))
    rotations = so3.random_uniform(jax.random.key(0), (2,))
    cases = [(UniformOn(sphere), jnp.array([[0.0, 0.0, 2.0]])),
             (WrappedNormal(sphere, jnp.array([0.0, 0.0, 1.0]), 0.5), jnp.array([[0.0, 2.0, 0.0]])),
             (UniformOn(so3), reflection[None]),
             (IGSO3(0.5), 2 * jnp.eye(3)[None]),
             (WrappedNormalMixtureSO3(rotations, 0.3), reflection[None])]
    for dist, off in cases:
        on = dist.sample(jax.random.key(1), 3)
        assert bool(jnp.all(jnp.isfinite(dist.log_prob(on))))
        with pytest.raises(Exception, match="off the"):
            jax.block_until_ready(dist.log_prob(off))
    for build in (lambda: IGSO3(0.5, mean=reflection), lambda: WrappedNormalMixtureSO3(2 * rotations, 0.3),
                  lambda: WrappedNormal(sphere, jnp.array([0.0, 0.0, 3.0]), 0.5)):
        with pytest.raises(Exception, match="off the"):
            build()


@pytest.mark.parametrize("x64", [False, True], ids=["float32", "float64"])
def test_se3_group_exponential_matches_the_matrix_exponential_of_the_twist(x64):
    """Against ``scipy.linalg.expm`` of ``[[ω]×, v; 0, 0]``, at small, ordinary and near-π
    angles; the logarithm inverts it and the Jacobians are inverses."""
    from scipy.linalg import expm

    from manifolds import hat, left_jacobian, left_jacobian_inverse, twist_exp, twist_log

    with jax.enable_x64(x64):
        dtype = jnp.float64 if x64 else jnp.float32
        tol = 1e-10 if x64 else 2e-5
        rng = np.random.default_rng(0)
        for angle in (0.0, 1e-7, 1e-3, 0.009, 0.011, 0.5, 2.0, np.pi - 1e-3, np.pi - 1e-6):
            axis = rng.normal(size=3)
            omega = angle * axis / np.linalg.norm(axis)
            v = rng.normal(size=3) * 2
            twist = np.zeros((4, 4))
            twist[:3, :3], twist[:3, 3] = np.asarray(hat(jnp.asarray(omega))), v
            expected = expm(twist)
            r, t = twist_exp(jnp.asarray(np.concatenate([omega, v]), dtype))
            np.testing.assert_allclose(r, expected[:3, :3], atol=tol * 10)
            np.testing.assert_allclose(t, expected[:3, 3], atol=tol * 100)
            np.testing.assert_allclose(left_jacobian(jnp.asarray(omega, dtype)) @ left_jacobian_inverse(jnp.asarray(omega, dtype)),
                                       np.eye(3), atol=tol * 100)
            if angle < np.pi - 1e-4 or x64:  # near π the rotation vector itself is ill-conditioned in float32
                np.testing.assert_allclose(twist_log(jnp.asarray(expected[:3, :3], dtype), jnp.asarray(expected[:3, 3], dtype)),
                                           np.concatenate([omega, v]), atol=tol * 1e3 if angle > 3 else tol * 100)


@pytest.mark.parametrize("on_rotations", [False, True], ids=["S2", "SO3"])
def test_riemannian_solvers_converge_at_their_order_on_the_manifold(on_rotations):
    """A rotation with growing speed, ``ω(t) = ω₀(1 + 2t)`` (closed-form flow): the fixed-step
    Riemannian methods keep every iterate on the manifold and their errors at t = 1 shrink by
    about 2ᵖ when the steps double (p = 1, 2, 4)."""
    import equinox as eqx

    from geoflow.continuous import ODEFlow
    from manifolds import SO3, Sphere, UniformOn, hat, riemannian_sample, rotvec_to_matrix

    omega = jnp.array([0.3, -1.2, 2.0])

    class Spin(eqx.Module):
        shape: tuple = eqx.field(static=True)
        cond_shape: None = None

        def __call__(self, t, x, condition=None):
            w = omega * (1 + 2 * t)
            return x @ hat(w) if on_rotations else jnp.cross(w, x)

    manifold = SO3() if on_rotations else Sphere(2)
    model = gf.Transformed(UniformOn(manifold), ODEFlow(Spin(manifold.shape), manifold=manifold))
    x0 = model.base.sample(jax.random.key(0), 64)
    turn = rotvec_to_matrix(2.0 * omega)  # the flow turns by ∫₀¹ ω = 2ω₀ about a fixed axis
    truth = jax.vmap(lambda x: x @ turn)(x0) if on_rotations else x0 @ turn.T

    def error(method, steps):
        x = riemannian_sample(model, jax.random.key(0), 64, steps, method=method)
        assert bool(jnp.all(jax.vmap(lambda p: manifold.belongs(p, 1e-5))(x)))
        return float(jnp.max(jnp.abs(x - truth)))

    for method, order in (("euler", 1), ("midpoint", 2), ("rk4", 4)):
        coarse, fine = error(method, 16), error(method, 32)
        assert coarse / fine > 0.6 * 2**order, (method, coarse, fine)
    assert error("rk4", 32) < 1e-4
    with pytest.raises(ValueError, match="method"):
        riemannian_sample(model, jax.random.key(0), 4, 4, method="rk45")
