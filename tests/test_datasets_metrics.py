"""Data sets (seeding, known entropies) and metrics (against closed forms)."""

import math

import jax
import numpy as np
import pytest

from geoflow import metrics
from geoflow.datasets import DATASETS, LOG_PROBS, load_dataset, sample_toy


@pytest.mark.parametrize("name", [d for d in DATASETS if d != "digits"])
def test_toy_sets_are_seeded_and_finite(name):
    a, b, c = sample_toy(name, 500, seed=1), sample_toy(name, 500, seed=1), sample_toy(name, 500, seed=2)
    assert a.shape == (500, 2) and a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("name", ["8gaussians", "checkerboard"])
def test_reference_entropy_matches_monte_carlo(name):
    d = load_dataset(name, n_train=10, n_val=10, n_test=200_000)
    lp = LOG_PROBS[name](d.test.astype(np.float64))
    assert np.isfinite(lp).all()  # every sample lies in the support
    mc = -lp.mean()
    assert abs(mc - d.true_nll) < 4 * lp.std() / math.sqrt(len(lp)) + 1e-3


def test_checkerboard_entropy_is_log_32_and_8gaussians_is_sensible():
    assert load_dataset("checkerboard", n_test=10).true_nll == pytest.approx(math.log(32))
    sigma2 = (0.5 / math.sqrt(2)) ** 2
    separated = math.log(2 * math.pi * math.e * sigma2) + math.log(8)  # non-overlapping limit
    # neighbouring components are 6σ apart: their slight overlap lowers the entropy a little
    assert separated - 0.02 < load_dataset("8gaussians", n_test=10).true_nll < separated


def test_splits_are_disjoint_streams():
    d = load_dataset("moons", n_train=100, n_val=100, n_test=100)
    assert not np.allclose(d.train, d.val) and not np.allclose(d.train, d.test)


def test_digits_split_and_dequantisation():
    d = load_dataset("digits")
    assert d.dim == 64 and d.levels == 17
    assert len(d.train) + len(d.val) + len(d.test) == 1797
    allx = np.concatenate([d.train, d.val, d.test])
    assert allx.min() >= 0 and allx.max() < 1
    # floor(17 x) recovers the integer pixels, which the sklearn copy also has
    assert set(np.unique(np.floor(allx * 17)).astype(int)) <= set(range(17))
    np.testing.assert_array_equal(load_dataset("digits", seed=3).train.shape, d.train.shape)


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError, match="expected one of moons, 8gaussians"):
        load_dataset("mnist-ish")


def test_sliced_wasserstein_of_a_translation_in_1d_is_the_shift():
    x = np.random.default_rng(0).standard_normal((5000, 1)).astype(np.float32)
    assert metrics.sliced_wasserstein(x, x + 0.7, jax.random.key(0), 16) == pytest.approx(0.7, abs=1e-4)
    y = np.random.default_rng(1).standard_normal((5000, 1)).astype(np.float32)
    assert metrics.sliced_wasserstein(x, y, jax.random.key(0)) < 0.05


def test_bits_per_dim_convention():
    assert metrics.bits_per_dim(64 * math.log(2), 64) == pytest.approx(1.0)
    # dequantised data in [0, 1) with 256 levels: a uniform density scores exactly 8 bits/dim
    assert metrics.bits_per_dim(0.0, 10, levels=256) == pytest.approx(8.0)


def test_kl_of_the_true_density_is_zero():
    d = load_dataset("8gaussians", n_train=10, n_val=10, n_test=100_000)
    test_nll = -LOG_PROBS["8gaussians"](d.test.astype(np.float64)).mean()
    assert abs(metrics.kl_from_truth(test_nll, d.true_nll)) < 0.02
