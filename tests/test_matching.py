"""Flow matching: paths and their targets, parameterisation conversions, couplings, the loss
in ``fit``, guidance, data-to-data transport, likelihoods, reflow and distillation."""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import geoflow as gf
from geoflow.continuous import (AffinePath, BridgePath, CondOT, Cosine, FlowMatching, Guided, Polynomial,
                                VariancePreserving, cfm, couple, distill, fixed, flow_matching, reflow,
                                sinkhorn_log_plan, squared_distances, straightness)
from geoflow.continuous.paths import Exponential
from geoflow.datasets.toy2d import sample_toy
from geoflow.metrics import sliced_wasserstein


def sw(a, b):
    return sliced_wasserstein(a, b, jax.random.key(0))

PATHS = [AffinePath(CondOT()), AffinePath(CondOT(sigma_min=0.1)), AffinePath(Polynomial(3.0)),
         AffinePath(VariancePreserving()), AffinePath(Cosine()), AffinePath(CondOT(), sigma=0.1),
         BridgePath(0.5)]


@pytest.mark.parametrize("path", PATHS, ids=lambda p: type(p).__name__ + type(getattr(p, "scheduler", p)).__name__)
def test_target_is_the_time_derivative_of_the_interpolant(path):
    k0, k1, ke = jax.random.split(jax.random.key(0), 3)
    x0, x1, eps = (jax.random.normal(k, (3,)) for k in (k0, k1, ke))
    for t in (0.1, 0.37, 0.8):
        xt, dxt = jax.jvp(lambda s: path.sample(s, x0, x1, eps)[0], (jnp.float32(t),), (jnp.float32(1.0),))
        np.testing.assert_allclose(path.sample(t, x0, x1, eps)[1], dxt, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("scheduler", [CondOT(), Polynomial(2.0), VariancePreserving(), Cosine()],
                         ids=lambda s: type(s).__name__)
def test_parameterisation_conversions_round_trip(scheduler):
    path = AffinePath(scheduler)
    x0, x1 = jax.random.normal(jax.random.key(1), (2, 4))
    t = 0.6
    xt, v = path.sample(t, x0, x1, jnp.zeros(4))
    np.testing.assert_allclose(path.x1_from_velocity(t, xt, v), x1, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(path.noise_from_velocity(t, xt, v), x0, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(path.velocity_from_x1(t, xt, x1), v, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(path.velocity_from_noise(t, xt, x0), v, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("scheduler", [CondOT(), Polynomial(2.0), Exponential(10.0)], ids=lambda s: type(s).__name__)
def test_remaining_rate_turns_a_clean_prediction_into_the_velocity(scheduler):
    """``u_t = rate(t)·(x₁ − x_t)`` on paths with ``σ = 1 − α``, and Exponential's closed form
    keeps its digits in float32 where ``1 − α_t`` has lost them."""
    path = AffinePath(scheduler)
    x0, x1 = jax.random.normal(jax.random.key(1), (2, 4))
    for t in (0.05, 0.5, 0.9):
        xt, v = path.sample(jnp.float32(t), x0, x1, jnp.zeros(4))
        np.testing.assert_allclose(scheduler.remaining_rate(jnp.float32(t)) * (x1 - xt), v, rtol=2e-4, atol=2e-4)
    if isinstance(scheduler, Exponential):
        exact = 10.0 / -np.expm1(-10.0 * (1 - float(np.float32(0.999))))
        assert float(scheduler.remaining_rate(jnp.float32(0.999))) == pytest.approx(exact, rel=1e-5)


def test_minibatch_ot_lowers_the_transport_cost():
    x0 = jax.random.normal(jax.random.key(0), (256, 2))
    x1 = jnp.asarray(sample_toy("8gaussians", 256, seed=1))
    cost = lambda pairs: float(jnp.mean(jnp.sum((pairs - x1) ** 2, -1)))
    independent = cost(couple("independent", x0, x1, jax.random.key(2)))
    exact = cost(jax.jit(lambda a, b: couple("exact", a, b, jax.random.key(2)))(x0, x1))
    entropic = cost(couple("sinkhorn", x0, x1, jax.random.key(2)))
    assert exact < entropic < independent
    assert exact < 0.5 * independent
    # the exact coupling is a permutation: every source point used once
    paired = couple("exact", x0, x1, jax.random.key(2))
    assert len(np.unique(np.asarray(paired), axis=0)) == 256



def test_stacked_assignments_are_each_optimal():
    """A vmapped exact assignment hands the host a stack, solved in threads: each permutation
    must reach the optimal cost of SciPy's Hungarian solver on its own problem."""
    from scipy.optimize import linear_sum_assignment

    from geoflow.continuous import exact_assignment

    costs = jax.vmap(lambda k: squared_distances(*jax.random.normal(k, (2, 64, 3))))(jax.random.split(jax.random.key(0), 6))
    perms = np.asarray(jax.jit(jax.vmap(exact_assignment))(costs))
    for cost, perm in zip(np.asarray(costs, np.float64), perms):
        rows, cols = linear_sum_assignment(cost)
        assert sorted(perm.tolist()) == list(range(64))
        np.testing.assert_allclose(cost[np.arange(64), perm].sum(), cost[rows, cols].sum(), rtol=1e-9)


def test_prepared_pairing_is_the_inline_one():
    """OT-CFM's ``prepare`` (what fit solves ahead of a chunk) gives the very pairing, and loss,
    that the loss computes inline; other couplings, or a trainable source, prepare nothing."""
    model = flow_matching(jax.random.key(0), 2, width=16, depth=2)
    x1 = jnp.asarray(sample_toy("moons", 1500, seed=0))  # above the 1,024-point block
    loss, key = cfm("ot-cfm"), jax.random.key(4)
    prepared = jax.jit(lambda x, k: loss.prepare(model, x, None, k))(x1, key)
    x0 = model.base.sample(jax.random.split(key, 5)[0], 1500)
    np.testing.assert_array_equal(x0[prepared], couple("exact", x0, x1, key))
    np.testing.assert_allclose(loss(model, x1, None, key, prepared=prepared), loss(model, x1, None, key), rtol=1e-6)
    assert cfm("i-cfm").prepare(model, x1, None, key) is None
    trainable_source = eqx.tree_at(lambda m: m.base, model, gf.DiagonalNormal(jnp.zeros(2), 1.0))
    assert loss.prepare(trainable_source, x1, None, key) is None


def test_fit_with_prepared_assignments_trains_as_inline():
    """fit solves OT-CFM's assignments for a chunk before its scan: the training run must match
    one whose loss solves each step's assignment inside the step."""
    x = sample_toy("8gaussians", 2000, seed=0)
    model = flow_matching(jax.random.key(0), 2, width=16, depth=2)
    loss = cfm("ot-cfm")
    run = lambda l: gf.fit(model, x, key=jax.random.key(1), loss=l, steps=30, batch_size=128, eval_every=20,
                           val_fraction=0.0, progress=False)
    (ahead, h_ahead), (inline, h_inline) = run(loss), run(lambda m, xb, c, k: loss(m, xb, c, k))
    np.testing.assert_allclose(h_ahead.train_loss, h_inline.train_loss, rtol=1e-4)
    for a, b in zip(jax.tree.leaves(eqx.filter(ahead, eqx.is_array)), jax.tree.leaves(eqx.filter(inline, eqx.is_array))):
        np.testing.assert_allclose(a, b, atol=1e-5)

def test_sinkhorn_plan_has_uniform_marginals():
    cost = squared_distances(jax.random.normal(jax.random.key(0), (50, 2)), jax.random.normal(jax.random.key(1), (50, 2)))
    log_plan, error = sinkhorn_log_plan(cost, 0.5, tol=1e-5)
    plan = jnp.exp(log_plan)
    assert error <= 1e-5
    np.testing.assert_allclose(plan.sum(0), 1 / 50, rtol=1e-4)
    np.testing.assert_allclose(plan.sum(1), 1 / 50, rtol=1e-3)


def test_sinkhorn_converges_at_sb_cfm_epsilon():
    """SB-CFM's default σ = 0.1 (ε = 0.02) on 512 points of a data-scale cost: plain Sinkhorn
    stopped at its cap 1.65× off the tolerance. The plan has the form exp((f + g − C)/ε) by
    construction, so uniform marginals make it the unique entropic optimum."""
    x1 = jnp.asarray(sample_toy("8gaussians", 512, seed=0))
    cost = squared_distances(x1, jax.random.normal(jax.random.key(0), (512, 2)))
    log_plan, error = jax.jit(lambda c: sinkhorn_log_plan(c, 0.02))(cost)
    assert error <= 1e-3
    plan = np.exp(np.asarray(log_plan, np.float64))
    assert np.abs(plan.sum(1) * 512 - 1).mean() <= 1.01e-3
    assert np.abs(plan.sum(0) * 512 - 1).mean() <= 1e-4


def test_sinkhorn_warns_when_it_stops_at_its_cap():
    x1 = jnp.asarray(sample_toy("8gaussians", 256, seed=0))
    x0 = jax.random.normal(jax.random.key(0), (256, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the converged default raises nothing
        jax.block_until_ready(couple("sinkhorn", x0, x1, jax.random.key(1), epsilon=0.02))
    with pytest.warns(RuntimeWarning, match="iteration cap with row marginals"):
        jax.block_until_ready(couple("sinkhorn", x0, x1, jax.random.key(1), epsilon=1e-5))
        jax.effects_barrier()


def _train(loss, steps=600, source=None, data="8gaussians", seed=0):
    x = sample_toy(data, 5000, seed=seed)
    src = None if source is None else sample_toy(source, 5000, seed=seed + 1)
    model = flow_matching(jax.random.key(seed), 2, width=64, depth=3, source=src, solver=fixed(20, "midpoint"))
    model, _ = gf.fit(model, x, key=jax.random.key(seed + 1), loss=loss, steps=steps, batch_size=256,
                      learning_rate=3e-3, eval_every=200, val_fraction=0.05, progress=False)
    return model


@pytest.fixture(scope="module")
def ot_model():
    return _train(cfm("ot-cfm", sigma=0.05), steps=1000)


def test_flow_matching_density_integrates_to_one(ot_model):
    lim, m = 8.0, 120
    g = jnp.linspace(-lim, lim, m)
    pts = jnp.stack(jnp.meshgrid(g, g), -1).reshape(-1, 2)
    mass = jnp.sum(jnp.exp(ot_model.log_prob(pts))) * (g[1] - g[0]) ** 2
    assert abs(float(mass) - 1.0) < 0.02


def test_flow_matching_learns_and_its_likelihood_is_finite(ot_model):
    test = sample_toy("8gaussians", 2000, seed=9)
    samples = ot_model.sample(jax.random.key(3), 2000)
    noise = jax.random.normal(jax.random.key(4), (2000, 2)) * 2
    assert sw(samples, test) < 0.4 * sw(noise, test)  # two data samples are 0.12 apart
    nll = -float(ot_model.log_prob(test[:500]).mean())
    assert nll < 3.6  # the data's entropy is 2.83; a standard normal scores far worse (> 8)


def test_reflow_straightens_and_distillation_stays_close(ot_model):
    base = _train(cfm("i-cfm", sigma=0.0), steps=600)
    x0 = jax.random.normal(jax.random.key(7), (500, 2))
    before = float(straightness(base, x0))
    straighter, _ = reflow(base, jax.random.key(8), pairs=5000, steps=400, batch_size=256, progress=False,
                           val_fraction=0.0)
    after = float(straightness(straighter, x0))
    assert after < 0.7 * before
    one_step, _ = distill(straighter, jax.random.key(9), pairs=5000, steps=400, batch_size=256,
                          progress=False, val_fraction=0.0)
    assert one_step.bijection.solver.steps == 1
    test = sample_toy("8gaussians", 3000, seed=11)
    many = sw(straighter.sample(jax.random.key(1), 3000), test)
    one = sw(one_step.sample(jax.random.key(1), 3000), test)
    assert one < 3.0 * many + 0.05
    x = one_step.sample(jax.random.key(2), 4)
    for refused in (lambda: one_step.log_prob(x), lambda: one_step.bijection.inverse(x[0]),
                    lambda: one_step.sample_and_log_prob(jax.random.key(3), 4)):
        with pytest.raises(ValueError, match="only samples"):
            refused()
    assert np.all(np.isfinite(np.asarray(straighter.log_prob(x))))  # the teacher keeps its density


def test_data_to_data_transport_moves_the_source_onto_the_target():
    model = _train(cfm("ot-cfm", sigma=0.05), steps=800, source="8gaussians", data="moons")
    test = sample_toy("moons", 2000, seed=5)
    moved = model.sample(jax.random.key(0), 2000)
    source = sample_toy("8gaussians", 2000, seed=6)
    assert sw(moved, test) < 0.3 * sw(source, test)
    with pytest.raises(ValueError, match="no density"):
        model.log_prob(test[:3])


def test_frozen_source_samples_are_not_trained():
    src = sample_toy("8gaussians", 500, seed=0)
    model = flow_matching(jax.random.key(0), 2, width=8, depth=1, source=src)
    trained, _ = gf.fit(model, sample_toy("moons", 500, seed=1), key=jax.random.key(1), loss=cfm("i-cfm"),
                        steps=20, batch_size=64, weight_decay=0.1, progress=False)
    np.testing.assert_array_equal(trained.base.samples.value, model.base.samples.value)


def test_conditional_flow_matching_with_guidance():
    x = sample_toy("8gaussians", 4000, seed=0)
    labels = (x[:, 0] > 0).astype(np.float32)[:, None]
    model = flow_matching(jax.random.key(0), 2, width=32, depth=2, cond_dim=1, solver=fixed(20, "midpoint"))
    model, _ = gf.fit(model, (x, labels), key=jax.random.key(1), loss=FlowMatching(condition_dropout=0.2),
                      steps=600, batch_size=256, progress=False)
    right = model.sample(jax.random.key(2), (), condition=jnp.ones((1000, 1)))
    assert float(jnp.mean(right[:, 0] > 0)) > 0.8
    guided = eqx.tree_at(lambda m: m.bijection.field, model, Guided(model.bijection.field, 2.0))
    right_guided = guided.sample(jax.random.key(2), (), condition=jnp.ones((1000, 1)))
    assert float(jnp.mean(right_guided[:, 0] > 0)) >= float(jnp.mean(right[:, 0] > 0))
    plain = eqx.tree_at(lambda m: m.bijection.field, model, Guided(model.bijection.field, 0.0))
    np.testing.assert_allclose(plain.sample(jax.random.key(2), (), condition=jnp.ones((5, 1))),
                               model.sample(jax.random.key(2), (), condition=jnp.ones((5, 1))), atol=1e-6)


def test_flow_matching_errors_are_clear():
    model = flow_matching(jax.random.key(0), 2, width=8, depth=1, cond_dim=2)
    with pytest.raises(ValueError, match="condition"):
        cfm("i-cfm")(model, jnp.ones((4, 2)), jnp.ones((4, 3)), jax.random.key(0))
    with pytest.raises(ValueError, match="ODEFlow"):
        cfm("i-cfm")(gf.nsf(jax.random.key(0), 2), jnp.ones((4, 2)), None, jax.random.key(0))
    with pytest.raises(ValueError, match="coupling"):
        FlowMatching(coupling="hungarian")
    with pytest.raises(ValueError, match="variant"):
        cfm("ddpm")


def test_minibatch_ot_within_each_condition_gives_every_class_an_unbiased_source():
    """Two classes far apart: minibatch OT over the mixed batch hands each class the source
    draws nearest its data (their mean is pulled towards the class), so a conditional model
    would learn from a biased source; paired within each condition, each class's source draws
    are exactly the draws labelled with it (an unbiased half of N(0, I)), matched by OT among
    themselves. The loss trains with either pairing, through ``prepare`` or inline alike."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import geoflow as gf
    from geoflow.continuous import FlowMatching
    from geoflow.continuous.couplings import exact_pairing
    from geoflow.continuous.paths import AffinePath

    n = 512
    labels = (np.arange(n) % 2).astype(np.float32)
    condition = np.stack([labels, 1 - labels], 1)
    x1 = np.stack([np.where(labels == 1, 4.0, -4.0), np.zeros(n)], 1) + 0.3 * np.random.default_rng(0).normal(size=(n, 2))
    x0 = np.asarray(jax.random.normal(jax.random.key(1), (n, 2)))
    mixed = np.asarray(exact_pairing(jnp.asarray(x0), jnp.asarray(x1)))
    within = np.asarray(exact_pairing(jnp.asarray(x0), jnp.asarray(x1), condition=jnp.asarray(condition)))
    right = labels == 1
    assert x0[mixed[right], 0].mean() > 0.5  # plain OT: the right class gets the right-hand draws
    assert abs(x0[within[right], 0].mean()) < 0.15
    assert set(within[right]) == set(np.flatnonzero(right))  # no pair crosses a condition
    # within each class it is still the optimal pairing of those draws
    for side in (right, ~right):
        idx = np.flatnonzero(side)
        alone = np.asarray(exact_pairing(jnp.asarray(x0[idx]), jnp.asarray(x1[idx])))
        np.testing.assert_array_equal(within[idx], idx[alone])

    model = gf.continuous.flow_matching(jax.random.key(0), 2, width=16, depth=2, cond_dim=2)
    loss = FlowMatching(AffinePath(sigma=0.1), coupling="exact", within_condition=True)
    key = jax.random.key(3)
    prepared = loss.prepare(model, jnp.asarray(x1[:64]), jnp.asarray(condition[:64]), key)
    np.testing.assert_allclose(loss(model, jnp.asarray(x1[:64]), jnp.asarray(condition[:64]), key, prepared=prepared),
                               loss(model, jnp.asarray(x1[:64]), jnp.asarray(condition[:64]), key), rtol=1e-6)
    with pytest.raises(ValueError, match="within_condition"):
        FlowMatching(coupling="sinkhorn", within_condition=True)


def test_a_field_trained_on_one_schedule_is_exact_on_another():
    """For Gaussian data the marginal velocity of every affine path is known in closed form:
    the CondOT field, changed to the cosine or the variance-preserving schedule, is that
    schedule's field (to float32 accuracy, across the interval and at its ends), and a model
    sampling along the new path reaches the same distribution."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np

    import geoflow as gf
    from geoflow.continuous import CondOT, Cosine, ODEFlow, ScheduleChanged, VariancePreserving, fixed, with_schedule

    mean, spread = jnp.array([2.0, -1.0]), 0.5

    class GaussianField(eqx.Module):  # x₀ ~ N(0, I), x₁ ~ N(mean, spread² I), independent
        scheduler: eqx.Module
        shape: tuple = (2,)
        cond_shape: None = None

        def __call__(self, t, x, condition=None):
            a, s, da, ds = self.scheduler.with_derivatives(t)
            gain = (a * da * spread**2 + s * ds) / (a**2 * spread**2 + s**2)
            return da * mean + gain * (x - a * mean)

    trained = GaussianField(CondOT())
    x = jax.random.normal(jax.random.key(0), (8, 2)) * 2
    for target in (Cosine(), VariancePreserving()):
        changed, exact = ScheduleChanged(trained, CondOT(), target), GaussianField(target)
        for r in (0.05, 0.3, 0.7, 0.95, 0.999):
            got = jax.vmap(lambda xi: changed(r, xi))(x)
            want = jax.vmap(lambda xi: exact(r, xi))(x)
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * float(jnp.max(jnp.abs(want))))
    # the change is undone by changing back, and sampling along the cosine path lands on the data
    there_and_back = ScheduleChanged(ScheduleChanged(trained, CondOT(), Cosine()), Cosine(), CondOT())
    np.testing.assert_allclose(jax.vmap(lambda xi: there_and_back(0.4, xi))(x),
                               jax.vmap(lambda xi: trained(0.4, xi))(x), rtol=1e-4, atol=1e-4)
    model = gf.Transformed(gf.StandardNormal(2), ODEFlow(trained, fixed(200, "heun")))
    draws = with_schedule(model, CondOT(), Cosine()).sample(jax.random.key(1), 4000)
    np.testing.assert_allclose(draws.mean(0), mean, atol=0.05)
    np.testing.assert_allclose(draws.std(0), [spread, spread], atol=0.03)


def test_likelihood_during_sampling_on_a_manifold_and_under_guidance():
    """``sample_and_log_prob`` integrates the state and its log-density in one pass; the
    log-density it returns is the one ``log_prob`` computes for the same points, on S² (the
    Riemannian divergence) and for a classifier-free-guided field (the guided ODE's density)."""
    from geoflow.continuous import ODESolver, ode_flow_of
    from helpers import perturb
    from manifolds import Sphere, rfm

    solver = ODESolver(rtol=1e-8, atol=1e-8)  # the two passes agree to the solver's tolerance
    sphere = perturb(rfm(jax.random.key(0), Sphere(2), width=32, depth=2, solver=solver), jax.random.key(1), 0.1)
    x, lp = sphere.sample_and_log_prob(jax.random.key(2), 16)
    np.testing.assert_allclose(jnp.linalg.norm(x, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(sphere.log_prob(x), lp, atol=5e-4)

    conditional = perturb(gf.continuous.flow_matching(jax.random.key(3), 2, width=32, depth=2, cond_dim=3, solver=solver),
                          jax.random.key(4), 0.3)
    guided = eqx.tree_at(lambda m: m.bijection.field, conditional, Guided(ode_flow_of(conditional).field, 2.0))
    c = jax.random.normal(jax.random.key(5), (16, 3))
    x, lp = guided.sample_and_log_prob(jax.random.key(6), (), condition=c)
    np.testing.assert_allclose(guided.log_prob(x, c), lp, atol=5e-4)
    assert not np.allclose(conditional.log_prob(x, c), lp, atol=1e-2)  # guidance changes the density


def test_meanflow_samples_in_one_step_where_flow_matching_collapses():
    """Gaussian data N((2, −1), diag(0.5², 1.5²)) from a standard normal: MeanFlow's one jump
    lands on the data's mean and spread; the same network trained without jumps (plain flow
    matching, ``jump_fraction=0``) and sampled in one step collapses towards the mean, because
    the instantaneous velocity at t = 0 points every draw at E[x₁]."""
    from geoflow.continuous import MeanFlow, MeanFlowLoss

    mean, spread = np.array([2.0, -1.0]), np.array([0.5, 1.5])
    data = (mean + spread * np.random.default_rng(0).normal(size=(8192, 2))).astype(np.float32)

    def one_step(jump_fraction):
        model = MeanFlow(2, key=jax.random.key(0), width=64, depth=3)
        model, _ = gf.fit(model, data, key=jax.random.key(1), loss=MeanFlowLoss(jump_fraction=jump_fraction),
                          steps=3000, batch_size=256, learning_rate=3e-3, val_fraction=0.0, progress=False)
        return np.asarray(model.sample(jax.random.key(2), 20000, steps=1))

    jumps = one_step(0.25)
    np.testing.assert_allclose(jumps.mean(0), mean, atol=0.1)
    np.testing.assert_allclose(jumps.std(0), spread, atol=0.15)
    assert one_step(0.0).std(0)[1] < 0.5  # 1.5 in the data
    with pytest.raises(ValueError, match="jump_fraction"):
        MeanFlowLoss(jump_fraction=1.5)
