"""The joint continuous + manifold + discrete sampler (``discrete.joint``): with the exact
posterior of a small joint data set it reproduces the data's joint law; geodesic and straight
steps follow their paths exactly for a fixed prediction; symmetric tokens stay symmetric."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import logsumexp

from discrete import Geodesic, Masked, MixturePath, Straight, joint_sample
from manifolds import Sphere

# four (point, label) pairs with unequal weights; two points share a label, one label (2) is
# carried by two points, so the sampler must keep each point with its own label
POINTS = jnp.array([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
LABELS = jnp.array([0, 1, 2, 2])
WEIGHTS = jnp.array([0.4, 0.3, 0.2, 0.1])
PATH = MixturePath(3)


def exact_posterior(states, t):
    """``(x̂₁, label logits)`` of the true posterior over the four pairs given ``(x_t, token_t)``
    on the straight path from N(0, I) and the masking path with κ_t = t."""
    x, token = states
    log_w = jnp.log(WEIGHTS) - 0.5 * jnp.sum((x - t * POINTS) ** 2, -1) / (1 - t) ** 2
    seen = token[0] != PATH.mask_token
    log_w = log_w + jnp.where(seen, jnp.where(LABELS == token[0], 0.0, -jnp.inf), 0.0)
    p = jax.nn.softmax(log_w)
    logits = jnp.stack([logsumexp(jnp.where(LABELS == k, log_w, -jnp.inf)) for k in range(3)])
    return p @ POINTS, logits[None]


def test_exact_posterior_sampler_reproduces_the_joint_law():
    n = 4000
    keys = jax.random.split(jax.random.key(0), n)

    def one(key):
        k0, k = jax.random.split(key)
        initial = (jax.random.normal(k0, (2,)), jnp.array([PATH.mask_token]))
        return joint_sample(exact_posterior, (Straight(), Masked(PATH)), initial, k, steps=100)

    x, label = jax.jit(jax.vmap(one))(keys)
    nearest = jnp.argmin(jnp.sum((x[:, None] - POINTS) ** 2, -1), 1)
    assert float(jnp.max(jnp.min(jnp.linalg.norm(x[:, None] - POINTS, axis=-1), 1))) < 1e-2  # every sample is a data point
    assert float(jnp.mean(label[:, 0] == LABELS[nearest])) == 1.0  # with its own label
    freq = np.bincount(np.asarray(nearest), minlength=4) / n
    sd = np.sqrt(WEIGHTS * (1 - WEIGHTS) / n)
    assert np.all(np.abs(freq - np.asarray(WEIGHTS)) < 4 * sd), freq


@pytest.mark.parametrize("t_end", [0.3, 0.75])
def test_fixed_prediction_moves_along_geodesic_and_straight_paths(t_end):
    sphere = Sphere(2)
    x0 = jnp.array([1.0, 0.0, 0.0])
    y = jnp.array([0.0, 0.6, 0.8])
    e0, e1 = jnp.array([0.5, -1.0]), jnp.array([2.0, 3.0])
    predict = lambda states, t: (jnp.broadcast_to(y, states[0].shape), e1)
    on_sphere, flat = joint_sample(predict, (Geodesic(sphere), Straight()), (jnp.stack([x0, x0]), e0),
                                   jax.random.key(0), steps=17, t_end=t_end)
    angle = t_end * jnp.pi / 2  # x0 ⟂ y: the geodesic is the quarter circle
    np.testing.assert_allclose(on_sphere, jnp.stack([jnp.cos(angle) * x0 + jnp.sin(angle) * y] * 2), atol=1e-5)
    np.testing.assert_allclose(flat, (1 - t_end) * e0 + t_end * e1, atol=1e-5)


def test_symmetric_tokens_stay_symmetric_and_inactive_ones_keep_their_value():
    n, path = 6, MixturePath(4)
    active = ~jnp.eye(n, dtype=bool)
    logits = jax.random.normal(jax.random.key(1), (n, n, 4))
    predict = lambda states, t: (logits,)
    initial = (jnp.where(active, path.mask_token, 0),)
    for seed in range(5):
        (bonds,) = joint_sample(predict, (Masked(path, symmetric=True),), initial, jax.random.key(seed), steps=20,
                                eta=0.5, active=(active,))
        np.testing.assert_array_equal(bonds, bonds.T)
        assert bool(jnp.all(jnp.diag(bonds) == 0)) and bool(jnp.all(bonds < 4))


def test_self_conditioning_reads_the_previous_predictions():
    """A predictor that counts: each prediction is the previous one plus 1, from ``first_previous``
    = 0, so the clean output after ``steps`` predictions is ``steps``."""
    predict = lambda states, t, previous: (previous[0] + 1.0,)
    (out,) = joint_sample(predict, (Straight(),), (jnp.zeros(3),), jax.random.key(0), steps=7,
                          first_previous=(jnp.zeros(3),))
    np.testing.assert_allclose(out, 7.0)
    with pytest.raises(ValueError, match="parts"):
        joint_sample(predict, (Straight(),), (jnp.zeros(3), jnp.zeros(2)), jax.random.key(0), steps=4)
