"""Building blocks of geoflow.nn."""

import jax
import numpy as np

from geoflow.nn import MLP


def test_mlp_on_rows_equals_the_per_example_network():
    mlp = MLP(5, 3, 8, 2, key=jax.random.key(0), activation="silu")
    x = jax.random.normal(jax.random.key(1), (4, 6, 5))
    expected = jax.vmap(jax.vmap(mlp))(x)
    np.testing.assert_allclose(mlp.on_rows(x), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mlp.on_rows(x[0, 0]), mlp(x[0, 0]), rtol=1e-5, atol=1e-6)


def test_mixed_precision_rounds_the_products_and_keeps_the_rest_float32():
    """``compute_dtype="bfloat16"`` (mixed precision for accelerators): an MLP's products are
    really rounded (its output differs from float32's) but only by bfloat16's rounding, and its
    output is float32; a coupling flow on such conditioners stays exactly invertible (the
    conditioner sees the same input both ways) with a log-density within 0.02 nats of the
    float32 flow with the same parameters; a flow-matching field in bfloat16 integrates a
    float32 state to a log-density within 0.02 nats of the float32 model's."""
    import equinox as eqx
    import jax.numpy as jnp
    import pytest

    import geoflow as gf

    x = jax.random.normal(jax.random.key(0), (256, 4))
    full = MLP(4, 3, 32, 2, key=jax.random.key(1), activation="silu")
    half = MLP(4, 3, 32, 2, key=jax.random.key(1), activation="silu", compute_dtype="bfloat16")
    a, b = jax.vmap(full)(x), jax.vmap(half)(x)
    assert b.dtype == jnp.float32 and not np.array_equal(a, b)
    np.testing.assert_allclose(b, a, atol=0.02 * float(jnp.max(jnp.abs(a))))
    np.testing.assert_allclose(half.on_rows(x), b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="compute_dtype"):
        MLP(4, 3, 8, 1, key=jax.random.key(1), compute_dtype="int8")

    def perturbed(model):  # away from the identity start, the same way for both precisions
        params, static = eqx.partition(model, eqx.is_inexact_array)
        leaves, tree = jax.tree.flatten(params)
        keys = jax.random.split(jax.random.key(2), len(leaves))
        noisy = [p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]
        return eqx.combine(jax.tree.unflatten(tree, noisy), static)

    flow_full = perturbed(gf.nsf(jax.random.key(3), 4, layers=3, width=32))
    flow_half = perturbed(gf.nsf(jax.random.key(3), 4, layers=3, width=32, compute_dtype="bfloat16"))
    lp_full, lp_half = flow_full.log_prob(x), flow_half.log_prob(x)
    assert lp_half.dtype == jnp.float32 and not np.array_equal(lp_full, lp_half)
    np.testing.assert_allclose(lp_half, lp_full, atol=0.02)
    y = jax.vmap(flow_half.bijection.forward)(x)
    np.testing.assert_allclose(jax.vmap(flow_half.bijection.inverse)(y), x, atol=1e-5)

    solver = gf.continuous.fixed(16, "tsit5")
    cfm_full = perturbed(gf.continuous.flow_matching(jax.random.key(4), 4, width=32, depth=2, solver=solver))
    cfm_half = perturbed(gf.continuous.flow_matching(jax.random.key(4), 4, width=32, depth=2, solver=solver,
                                                     compute_dtype="bfloat16"))
    lp_full, lp_half = cfm_full.log_prob(x[:32]), cfm_half.log_prob(x[:32])
    assert lp_half.dtype == jnp.float32 and not np.array_equal(lp_full, lp_half)
    np.testing.assert_allclose(lp_half, lp_full, atol=0.02)


def test_scan_layers_applies_the_stacked_layers_in_order_however_it_is_compiled():
    """``scan_layers`` is ``carry = apply(layer_i, carry, x_i)`` over the stacked layers, first to
    last (last to first with ``reverse``), with each layer's own ``xs`` entry: the same values
    and gradients whether the loop is a scan, unrolled, or recomputed in the backward pass."""
    import equinox as eqx
    import jax.numpy as jnp

    from geoflow.nn import scan_layers

    layers = eqx.filter_vmap(lambda k: MLP(3, 3, 8, 1, key=k, activation="silu"))(jax.random.split(jax.random.key(0), 4))
    xs = jnp.arange(4.0)  # each layer's own input: a layer applied out of turn changes the result
    apply = lambda layer, h, x: jnp.tanh(layer(h) + x * h)
    h0 = jax.random.normal(jax.random.key(1), (3,))
    one = lambda i: jax.tree.map(lambda a: a[i] if eqx.is_array(a) else a, layers)

    def loop(h, order):
        for i in order:
            h = apply(one(i), h, xs[i])
        return h

    for reverse, order in ((False, [0, 1, 2, 3]), (True, [3, 2, 1, 0])):
        expected = loop(h0, order)
        expected_grad = jax.grad(lambda h: jnp.sum(loop(h, order) ** 2))(h0)
        for remat in (False, True):
            for unroll in (False, True):
                run = lambda h: scan_layers(layers, apply, h, xs, reverse=reverse, remat=remat, unroll=unroll)
                np.testing.assert_allclose(run(h0), expected, rtol=1e-5, atol=1e-6)
                np.testing.assert_allclose(jax.grad(lambda h: jnp.sum(run(h) ** 2))(h0), expected_grad,
                                           rtol=1e-5, atol=1e-6)
