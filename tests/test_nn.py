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
