"""fit: learning, NaN stopping, determinism, checkpoints, save/load, data parallelism."""

import json
import os
import subprocess
import sys
import textwrap
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import geoflow as gf
from geoflow.datasets import load_dataset
from geoflow.metrics import nll
from geoflow.train_data import step_keys


@pytest.fixture(scope="module")
def moons():
    return load_dataset("moons", n_train=4000, n_val=1000, n_test=2000)


def flaky(model, x, c, key):
    """Maximum likelihood, but NaN on a few per cent of steps, decided by the step's key."""
    ml = gf.maximum_likelihood(model, x, c, key)
    return jnp.where(jax.random.uniform(key) < 0.03, jnp.nan, ml)


def _small(seed=0):
    # These tests are about fit, not the transformer: an affine MAF compiles in half the time
    # of a spline flow (4 s against 9 s for its training chunk), and compiling is most of the suite.
    return gf.maf(jax.random.key(seed), 2, layers=4, width=32)


def test_fit_lowers_validation_nll(moons):
    model = _small()
    before = nll(model, moons.val)
    trained, hist = gf.fit(model, moons.train, key=jax.random.key(1), steps=600, val_data=moons.val,
                           progress=False)
    after = nll(trained, moons.val)
    assert after < before - 0.8, (before, after)
    assert hist.val_loss[-1] < hist.val_loss[0]
    assert hist.best_val_loss == pytest.approx(min(hist.val_loss))
    assert after == pytest.approx(hist.best_val_loss, abs=1e-4)  # best model restored


def test_a_validation_metric_selects_the_model_and_drives_patience(moons):
    """``val_metric`` replaces the loss as the validation figure: the model returned is the one it
    scored best (seen through the callback), and patience counts its evaluations."""
    scores, seen = iter([3.0, 1.0, 2.0, 5.0, 4.0, 0.5]), {}
    metric = lambda model, x, c: next(scores) + 0.0 * float(nll(model, x))

    def remember(step, model, history):
        seen[step] = model
    trained, hist = gf.fit(_small(), moons.train, key=jax.random.key(1), steps=600, eval_every=100, val_data=moons.val,
                           val_metric=metric, patience=3, callback=remember, progress=False)
    assert hist.val_loss == [3.0, 1.0, 2.0, 5.0, 4.0] and hist.stop_reason == "early_stopping"
    assert hist.best_step == 200 and hist.best_val_loss == 1.0
    assert bool(eqx.tree_equal(trained, seen[200]))
    with pytest.raises(ValueError, match="val_metric needs validation data"):
        gf.fit(_small(), moons.train, key=jax.random.key(1), steps=10, val_fraction=0.0, val_metric=metric,
               progress=False)


def test_fit_is_deterministic(moons):
    a, _ = gf.fit(_small(), moons.train, key=jax.random.key(3), steps=200, progress=False)
    b, _ = gf.fit(_small(), moons.train, key=jax.random.key(3), steps=200, progress=False)
    assert eqx.tree_equal(a, b)


def test_nan_stops_training_and_returns_last_good_model(moons):
    with pytest.warns(RuntimeWarning, match="NaN/inf at step"):
        model, hist = gf.fit(_small(), moons.train, key=jax.random.key(4), loss=flaky, steps=2000,
                             val_data=moons.val, progress=False, eval_every=50)
    assert hist.stop_reason == "nan"
    assert 0 < hist.steps[-1] < 2000
    assert all(np.isfinite(np.asarray(a)).all() for a in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array)))
    assert np.isfinite(nll(model, moons.val))


def test_nan_stop_keeps_exactly_the_last_good_parameters(moons):
    kw = dict(key=jax.random.key(4), loss=flaky, val_fraction=0.0, progress=False, eval_every=50,
              schedule="constant", warmup_steps=0)
    with pytest.warns(RuntimeWarning):
        model, hist = gf.fit(_small(), moons.train, steps=2000, **kw)
    bad = hist.steps[-1]
    # training for exactly `bad` steps (all good) reaches the same parameters
    ref, ref_hist = gf.fit(_small(), moons.train, steps=bad, **kw)
    assert ref_hist.stop_reason == "completed"
    assert eqx.tree_equal(model, ref)


def infinite_on_steps(fit_key, steps):
    """Maximum likelihood, but infinite on exactly the given steps of a ``fit`` run with
    ``fit_key``: the loss recognises those steps' loss keys (``fit`` draws its step keys from the
    second of three splits of its key)."""
    train_key = jax.random.split(fit_key, 3)[1]
    marked = jnp.stack([jax.random.key_data(step_keys(train_key, s)[1]) for s in steps])

    def loss(model, x, c, key):
        hit = jnp.any(jnp.all(jax.random.key_data(key) == marked, axis=-1))
        return jnp.where(hit, jnp.inf, gf.maximum_likelihood(model, x, c, key))
    return loss


def test_skip_nonfinite_skips_exactly_the_broken_steps_and_trains_on(moons):
    key = jax.random.key(6)
    kw = dict(key=key, steps=200, eval_every=50, val_fraction=0.0, progress=False, skip_nonfinite=2)
    model, hist = gf.fit(_small(), moons.train, loss=infinite_on_steps(key, [30, 31, 77, 150]), **kw)
    assert hist.stop_reason == "completed" and hist.steps[-1] == 200
    assert hist.skipped_steps == [30, 31, 77, 150]
    assert np.isfinite(hist.train_loss).all()  # the chunk means are over the applied steps
    assert np.isfinite(nll(model, moons.val))
    # three in a row is one more than allowed: the third stops training as a NaN does without skipping
    with pytest.warns(RuntimeWarning, match="NaN/inf at step 42 \\(after 2 consecutive skipped steps\\)"):
        _, hist = gf.fit(_small(), moons.train, loss=infinite_on_steps(key, [30, 40, 41, 42]), **kw)
    assert hist.stop_reason == "nan" and hist.steps[-1] == 42 and hist.skipped_steps == [30, 40, 41]


def test_a_run_of_skipped_steps_is_carried_across_a_resume(tmp_path, moons):
    """Five broken steps 98–102 with four allowed stop the run at 102, whether or not it was
    checkpointed and resumed at step 100, in the middle of the run of broken steps."""
    key = jax.random.key(7)
    kw = dict(key=key, steps=300, eval_every=50, val_fraction=0.0, progress=False, skip_nonfinite=4,
              loss=infinite_on_steps(key, range(98, 103)))
    with pytest.warns(RuntimeWarning):
        full, full_hist = gf.fit(_small(), moons.train, **kw)
    assert full_hist.steps[-1] == 102 and full_hist.skipped_steps == [98, 99, 100, 101]
    ckpt = tmp_path / "ckpt.eqx"
    _, part = gf.fit(_small(), moons.train, checkpoint=ckpt, callback=lambda step, m, h: step >= 100, **kw)
    assert part.skipped_steps == [98, 99]
    with pytest.warns(RuntimeWarning):
        resumed, hist = gf.fit(_small(), moons.train, checkpoint=ckpt, resume=True, **kw)
    assert hist.steps == full_hist.steps and hist.skipped_steps == full_hist.skipped_steps
    assert eqx.tree_equal(resumed, full)


def test_a_checkpoint_of_the_older_layout_resumes(tmp_path, moons):
    """Checkpoints written before ``History`` moved to ``geoflow.train_state`` and gained
    ``skipped_steps`` and ``cpu_time`` name ``geoflow.train.History`` without those fields: they
    still resume."""
    kw = dict(key=jax.random.key(5), steps=200, val_fraction=0.0, progress=False, eval_every=100)
    ckpt = tmp_path / "ckpt.eqx"
    gf.fit(_small(), moons.train, checkpoint=ckpt, callback=lambda step, m, h: step >= 100, **kw)
    with np.load(ckpt) as f:
        arrays = dict(f)
    structure = json.loads(arrays["structure"].tobytes())
    history = structure["tree"]["dict"]["history"]
    assert history["class"] == "geoflow.train_state.History"
    history["class"] = "geoflow.train.History"
    del history["fields"]["skipped_steps"], history["fields"]["cpu_time"]
    arrays["structure"] = np.frombuffer(json.dumps(structure).encode(), np.uint8)
    with open(ckpt, "wb") as f:
        np.savez(f, **arrays)
    resumed, hist = gf.fit(_small(), moons.train, checkpoint=ckpt, resume=True, **kw)
    full, _ = gf.fit(_small(), moons.train, **kw)
    assert hist.steps == [100, 200] and hist.skipped_steps == []
    assert eqx.tree_equal(resumed, full)
    assert np.isnan(hist.cpu_time)  # the first 100 steps' CPU time was not kept: unknown, not zero


def test_save_load_round_trip_exactly(tmp_path):
    model = gf.maf(jax.random.key(0), 3, cond_dim=2, layers=2, width=8, order="random")
    model = jax.tree.map(lambda a: a + 0.1 if eqx.is_inexact_array(a) else a, model)
    path = gf.save(tmp_path / "m.eqx", model)
    loaded = gf.load(path)
    assert eqx.tree_equal(model, loaded)
    x, c = jnp.ones((4, 3)), jnp.zeros((4, 2))
    np.testing.assert_array_equal(model.log_prob(x, c), loaded.log_prob(x, c))
    with pytest.raises(FileNotFoundError, match="no saved model"):
        gf.load(tmp_path / "missing.eqx")
    (tmp_path / "junk.eqx").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="not a geoflow save file"):
        gf.load(tmp_path / "junk.eqx")


def test_resume_from_checkpoint_matches_uninterrupted_run(tmp_path, moons):
    kw = dict(key=jax.random.key(5), steps=400, val_data=moons.val, progress=False, eval_every=100)
    full, full_hist = gf.fit(_small(), moons.train, **kw)
    ckpt = tmp_path / "ckpt.pkl"
    _, part = gf.fit(_small(), moons.train, checkpoint=ckpt, callback=lambda step, m, h: step >= 200, **kw)
    assert part.stop_reason == "callback" and int(gf.load(ckpt)["step"]) == 200
    resumed, hist = gf.fit(_small(), moons.train, checkpoint=ckpt, resume=True, **kw)
    assert hist.steps == full_hist.steps
    assert eqx.tree_equal(resumed, full)
    # the clock runs across the resume: a finished run resumed again reports the whole run's time and rate
    again, finished = gf.fit(_small(), moons.train, checkpoint=ckpt, resume=True, **kw)
    assert eqx.tree_equal(again, full) and finished.steps == full_hist.steps
    assert hist.wall_time > part.wall_time > 0 and finished.wall_time == pytest.approx(hist.wall_time, rel=0.5)
    assert finished.steps_per_second == pytest.approx(hist.steps_per_second, rel=0.5)
    # so does the CPU clock: the resumed run adds its own steps' to the checkpoint's, and a finished
    # run adds nothing
    assert hist.cpu_time > part.cpu_time > 0 and finished.cpu_time == hist.cpu_time


def test_the_cpu_clock_leaves_the_callback_out(moons):
    """A callback that spends CPU time (a long run's sampling, say) does not count as training."""
    def busy(step, model, history):
        start = time.process_time()
        while time.process_time() - start < 0.25:
            pass

    kw = dict(key=jax.random.key(5), steps=400, val_fraction=0.0, progress=False, eval_every=100)
    gf.fit(_small(), moons.train, **kw)  # compiled, so the timed runs differ only in the callback
    start = time.process_time()
    _, quiet = gf.fit(_small(), moons.train, **kw)
    between = time.process_time() - start
    start = time.process_time()
    _, hist = gf.fit(_small(), moons.train, callback=busy, **kw)
    busy_total = time.process_time() - start
    assert 0 < quiet.cpu_time <= between and busy_total - hist.cpu_time >= 4 * 0.25


def test_bad_training_data_is_rejected():
    model = _small()
    with pytest.raises(ValueError, match="NaN or inf in 1 example"):
        gf.fit(model, np.array([[0.0, 1.0], [np.nan, 0.0]]), key=jax.random.key(0), steps=1, progress=False)
    with pytest.raises(ValueError, match=r"expected \(\.\.\., 2\)"):
        gf.fit(model, np.ones((10, 3)), key=jax.random.key(0), steps=1, progress=False)
    with pytest.raises(ValueError, match="empty"):
        gf.fit(model, np.ones((0, 2)), key=jax.random.key(0), steps=1, progress=False)


def test_conditional_fit_learns_the_condition():
    rng = np.random.default_rng(0)
    c = rng.integers(0, 2, (4000, 1)).astype(np.float32)
    x = rng.standard_normal((4000, 2)).astype(np.float32) * 0.3 + 3 * (2 * c - 1)
    model = gf.nsf(jax.random.key(0), 2, cond_dim=1, layers=3, width=32, bound=6.0)
    model, _ = gf.fit(model, (x, c), key=jax.random.key(1), steps=600, progress=False)
    pt = jnp.array([3.0, 3.0])
    assert float(model.log_prob(pt, jnp.array([1.0]))) > float(model.log_prob(pt, jnp.array([0.0]))) + 5


MULTI_DEVICE = textwrap.dedent("""
    import json, jax, numpy as np, geoflow as gf
    from geoflow.datasets import sample_toy
    assert len(jax.devices()) == 4, jax.devices()
    x = sample_toy("moons", 4000, seed=0)
    model = gf.nsf(jax.random.key(0), 2, layers=3, width=32)
    kw = dict(key=jax.random.key(1), steps=300, batch_size=256, eval_every=50, progress=False)
    _, single = gf.fit(model, x, **kw)
    _, multi = gf.fit(model, x, devices=4, **kw)
    # OT-CFM calls POT on the host; inside a sharded program that stalled the all-reduce
    from geoflow.continuous import cfm, flow_matching
    fm, ot = flow_matching(jax.random.key(0), 2, width=16, depth=2), cfm("ot-cfm")
    kw.update(steps=40, batch_size=128, eval_every=20)
    _, ot_single = gf.fit(fm, x, loss=ot, **kw)
    _, ot_multi = gf.fit(fm, x, loss=ot, devices=4, **kw)
    print(json.dumps({"single": single.train_loss, "multi": multi.train_loss,
                      "vs": single.val_loss, "vm": multi.val_loss,
                      "ot_single": ot_single.train_loss + ot_single.val_loss,
                      "ot_multi": ot_multi.train_loss + ot_multi.val_loss}))
""")


@pytest.mark.slow
def test_data_parallel_training_matches_single_device():
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4".strip()
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", MULTI_DEVICE], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(res["multi"], res["single"], rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(res["vm"], res["vs"], rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(res["ot_multi"], res["ot_single"], rtol=2e-3, atol=2e-3)


ONE_COMPILE_ON_A_MESH = textwrap.dedent("""
    import jax, geoflow as gf
    from geoflow.datasets import sample_toy
    assert len(jax.devices()) == 2, jax.devices()
    compiles = []

    def listener(event, duration, **kw):
        if "backend_compile" in event:
            compiles.append(event)

    callback_devices = set()

    def after(step, model, history):  # from the second chunk on, every compile is counted
        callback_devices.update(d for leaf in jax.tree.leaves(model) if isinstance(leaf, jax.Array)
                                for d in leaf.devices())
        if step == 100:
            jax.monitoring.register_event_duration_secs_listener(listener)

    model = gf.maf(jax.random.key(0), 2, layers=2, width=16)
    trained, history = gf.fit(model, sample_toy("moons", 2000, seed=0), key=jax.random.key(1), steps=400,
                              batch_size=64, eval_every=100, val_fraction=0.0, progress=False, devices=2,
                              callback=after)
    assert history.steps == [100, 200, 300, 400]
    assert len(callback_devices) == 1, callback_devices  # the callback's model on one device
    returned = {d for leaf in jax.tree.leaves(trained) if isinstance(leaf, jax.Array) for d in leaf.devices()}
    assert len(returned) == 1, returned  # and so is the model fit returns
    print(len(compiles))
""")


def test_a_chunk_on_a_device_mesh_compiles_once():
    """Everything a chunk carries starts replicated over the mesh, as the chunk returns it: a
    step counter left on the default device made the second chunk compile again (7 s for the
    light protein network, 80 s for a multi-scale image flow). The callback and the caller get
    the model on one device, so what they compute with it runs once."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2".strip()
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", ONE_COMPILE_ON_A_MESH], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "0"


def test_second_fit_with_same_shapes_does_not_recompile(moons):
    compiles = []

    def listener(event, duration, **kw):
        if "backend_compile" in event:
            compiles.append(event)

    kw = dict(key=jax.random.key(6), steps=200, val_data=moons.val, progress=False)
    gf.fit(_small(), moons.train, **kw)
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        gf.fit(_small(seed=9), moons.train, **kw)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compiles == []


def test_short_last_chunk_reuses_the_compiled_chunk_and_trains_every_step(moons):
    import optax

    compiles = []

    def listener(event, duration, **kw):
        if "backend_compile" in event:
            compiles.append(event)

    opt = optax.adam(1e-3)
    kw = dict(key=jax.random.key(6), val_fraction=0.0, progress=False, optimizer=opt)
    gf.fit(_small(), moons.train, steps=200, eval_every=100, **kw)
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        short, history = gf.fit(_small(), moons.train, steps=250, eval_every=100, **kw)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compiles == []
    assert history.steps == [100, 200, 250] and np.isfinite(history.train_loss).all()
    # the same 250 steps in chunks of 50: skipped steps of the padded chunk changed nothing
    even, _ = gf.fit(_small(), moons.train, steps=250, eval_every=50, **kw)
    for a, b in zip(jax.tree.leaves(eqx.filter(short, eqx.is_array)), jax.tree.leaves(eqx.filter(even, eqx.is_array))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


class _Point(eqx.Module):
    """A model that is only a parameter vector, so a fit's parameter path is known exactly."""

    theta: jax.Array
    shape: tuple = eqx.field(static=True, default=(1,))
    label: str = eqx.field(static=True, default="")  # a static setting that training does not read


def _climb(model, x, condition, key):
    """Gradient −1 on every coordinate: plain SGD at rate lr moves θ to θ₀ + lr·k after k steps."""
    return -jnp.sum(model.theta)


def _expected_average(theta0, lr, steps, decay):
    ema = np.array(theta0, dtype=np.float64)
    for s in range(steps):
        d = min(decay, (1 + s) / (10 + s))
        ema = d * ema + (1 - d) * (theta0 + lr * (s + 1))
    return ema


def test_ema_is_the_moving_average_of_the_parameter_path():
    import optax

    theta0 = np.array([0.0, 1.0, -2.0], np.float32)
    # 25 steps in chunks of 10: the average is carried across chunks and through the padded last one
    kw = dict(key=jax.random.key(0), loss=_climb, optimizer=optax.sgd(0.1), steps=25, eval_every=10,
              val_fraction=0.0, progress=False)
    raw, _ = gf.fit(_Point(jnp.asarray(theta0)), np.zeros((8, 1)), **kw)
    np.testing.assert_allclose(raw.theta, theta0 + 2.5, rtol=1e-6)
    averaged, _ = gf.fit(_Point(jnp.asarray(theta0)), np.zeros((8, 1)), ema_decay=0.9, **kw)
    np.testing.assert_allclose(averaged.theta, _expected_average(theta0, 0.1, 25, 0.9), rtol=1e-5)
    assert np.all(np.asarray(averaged.theta) < theta0 + 2.5 - 0.2)  # it lags the raw path
    with pytest.raises(ValueError, match=r"ema_decay must be in \[0, 1\)"):
        gf.fit(_Point(jnp.asarray(theta0)), np.zeros((8, 1)), ema_decay=1.0, **kw)


def test_resume_with_ema_matches_uninterrupted_run(tmp_path):
    import optax

    theta0 = jnp.zeros(3)
    kw = dict(key=jax.random.key(0), loss=_climb, optimizer=optax.sgd(0.1), steps=40, eval_every=10,
              val_fraction=0.0, progress=False, ema_decay=0.95)
    full, _ = gf.fit(_Point(theta0), np.zeros((8, 1)), **kw)
    ckpt = tmp_path / "ckpt.pkl"
    gf.fit(_Point(theta0), np.zeros((8, 1)), checkpoint=ckpt, callback=lambda step, m, h: step >= 20, **kw)
    resumed, _ = gf.fit(_Point(theta0), np.zeros((8, 1)), checkpoint=ckpt, resume=True, **kw)
    np.testing.assert_allclose(resumed.theta, full.theta, rtol=1e-6)
    np.testing.assert_allclose(full.theta, _expected_average(np.zeros(3), 0.1, 40, 0.95), rtol=1e-5)
    no_average = {**kw, "ema_decay": None}
    gf.fit(_Point(theta0), np.zeros((8, 1)), checkpoint=tmp_path / "plain.pkl", **no_average)
    with pytest.raises(ValueError, match="holds no parameter average"):
        gf.fit(_Point(theta0), np.zeros((8, 1)), checkpoint=tmp_path / "plain.pkl", resume=True, **kw)


def test_resume_keeps_the_given_models_static_fields_and_refuses_another_models_checkpoint(tmp_path):
    """A run resumed with a model that differs from the checkpoint's only in a static field (a
    sampler's setting, say) continues the saved parameters, optimizer moments and average, and
    returns the model given, also when no step is left; trainable arrays of another shape are
    refused by name."""
    import optax

    data, theta0 = np.zeros((8, 1)), jnp.zeros(3)
    kw = dict(key=jax.random.key(0), loss=_climb, optimizer=optax.adam(0.1), steps=40, eval_every=10,
              val_fraction=0.0, progress=False, ema_decay=0.9)
    full, _ = gf.fit(_Point(theta0), data, **kw)
    ckpt = tmp_path / "ckpt.pkl"
    gf.fit(_Point(theta0), data, checkpoint=ckpt, callback=lambda step, m, h: step >= 20, **kw)
    resumed, _ = gf.fit(_Point(theta0, label="resumed"), data, checkpoint=ckpt, resume=True, **kw)
    assert resumed.label == "resumed"
    np.testing.assert_allclose(resumed.theta, full.theta, rtol=1e-6)
    finished, _ = gf.fit(_Point(theta0, label="finished"), data, checkpoint=ckpt, resume=True, **kw)
    assert finished.label == "finished"
    np.testing.assert_allclose(finished.theta, full.theta, rtol=1e-6)
    with pytest.raises(ValueError, match=r"another model: the trainable \.theta is float32\[3\] there and "
                                         r"float32\[4\] in the model given"):
        gf.fit(_Point(jnp.zeros(4)), data, checkpoint=ckpt, resume=True, **kw)


def test_fixed_distribution_arrays_are_not_trained():
    """Bounds, fitted moments, prior means and the IGSO(3) tables are fixed: ``trainable`` leaves
    them out, so fit with weight decay cannot shrink them (``stop_gradient`` alone would not: weight
    decay acts on every parameter the optimizer holds)."""
    from manifolds import SO3, GeodesicFlowMatching, rfm
    from manifolds.distributions import IGSO3, WrappedNormal, WrappedNormalMixtureSO3

    fixed = [gf.Uniform(-jnp.ones(2), jnp.ones(2)), gf.bijections.Standardize(jnp.zeros(2), jnp.ones(2)),
             IGSO3(0.5), WrappedNormal(SO3(), jnp.eye(3), 0.3), WrappedNormalMixtureSO3.random(jax.random.key(0), 4)]
    for d in fixed:
        assert not jax.tree.leaves(eqx.filter(d, gf.nn.trainable(d))), type(d).__name__
    model = rfm(jax.random.key(0), SO3(), prior=IGSO3(0.5), width=16, depth=2)
    data = IGSO3(0.3).sample(jax.random.key(1), 256)
    trained, _ = gf.fit(model, data, key=jax.random.key(2), loss=GeodesicFlowMatching(), steps=20, batch_size=64,
                        weight_decay=0.5, learning_rate=1e-2, val_fraction=0.0, progress=False)
    np.testing.assert_array_equal(trained.base.table.value, model.base.table.value)
    np.testing.assert_array_equal(trained.base.mean, jnp.eye(3))


@pytest.mark.parametrize("bad, message", [
    ({"eval_every": 0}, "eval_every must be a positive integer"),
    ({"steps": 0}, "steps must be a positive integer"),
    ({"steps": 2.5}, "steps must be a positive integer"),
    ({"batch_size": -4}, "batch_size must be a positive integer"),
    ({"patience": 0}, "patience"),
    ({"learning_rate": float("nan")}, "learning_rate must be a positive finite number"),
    ({"learning_rate": 0.0}, "learning_rate must be a positive finite number"),
    ({"warmup_steps": 5000}, "warmup_steps must be an integer in"),
    ({"schedule": "linear"}, "unknown schedule"),
    ({"clip_norm": 0.0}, "clip_norm must be positive"),
    ({"val_fraction": 1.0}, "val_fraction must be in"),
    ({"ema_decay": 1.0}, "ema_decay must be in"),
    ({"skip_nonfinite": -1}, "skip_nonfinite must be a non-negative integer"),
    ({"devices": 0}, "devices=0 but"),
    ({"devices": "gpu"}, "devices must be None, 'all'"),
])
def test_every_fit_argument_is_checked_before_training(bad, message):
    """A bad value is refused at once, before the model compiles; ``eval_every=0`` used to loop forever."""
    flow = gf.nsf(jax.random.key(0), 2, layers=2, width=8)
    data = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
    with pytest.raises(ValueError, match=message):
        gf.fit(flow, data, key=jax.random.key(1), **{"steps": 100, "progress": False, **bad})


def test_data_on_disk_trains_exactly_as_in_memory(tmp_path):
    """A memory-mapped ``.npy`` is read chunk by chunk, the rows each chunk's steps draw: the
    run is the in-memory run, bit for bit (losses, validation, parameters); a non-finite row is
    named when it is read; what cannot work from disk is refused by name."""
    from geoflow.datasets import sample_toy

    x = sample_toy("moons", 3000, seed=0).astype(np.float32)
    val = sample_toy("moons", 300, seed=1)
    np.save(tmp_path / "x.npy", x)
    on_disk = np.load(tmp_path / "x.npy", mmap_mode="r")
    model = gf.nsf(jax.random.key(0), 2, layers=2, width=16)
    kw = dict(key=jax.random.key(1), steps=70, batch_size=64, eval_every=30, progress=False, val_data=val)
    in_memory, h_memory = gf.fit(model, x, **kw)
    streamed, h_disk = gf.fit(model, on_disk, **kw)
    assert h_disk.train_loss == h_memory.train_loss and h_disk.val_loss == h_memory.val_loss
    leaves = lambda m: jax.tree.leaves(eqx.filter(m, eqx.is_inexact_array))
    assert all(np.array_equal(a, b) for a, b in zip(leaves(streamed), leaves(in_memory)))

    x[:: 7] = np.nan  # every seventh row: the first chunk draws some of them
    np.save(tmp_path / "bad.npy", x)
    with pytest.raises(ValueError, match=r"NaN or inf in row\(s\) \[0, 7"):
        gf.fit(model, np.load(tmp_path / "bad.npy", mmap_mode="r"), **kw)
    with pytest.raises(ValueError, match="val_data"):
        gf.fit(model, on_disk, key=jax.random.key(1), steps=10, progress=False)
    with pytest.raises(ValueError, match="shape"):
        gf.fit(gf.nsf(jax.random.key(0), 3, layers=2, width=16), on_disk, **kw)
    with pytest.raises(ValueError, match="prepare nor check"):
        gf.fit(gf.continuous.flow_matching(jax.random.key(0), 2, width=16, depth=2), on_disk,
               loss=gf.continuous.cfm("ot-cfm"), **kw)
