"""Discrete flow matching: the rates solve the Kolmogorov forward equation of the path, the
sampler with the exact posterior reproduces the distribution, the ELBO bounds (and for the
masking source equals) the log-likelihood, training tightens it, bad input is refused."""

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import geoflow as gf
from discrete import DiscreteFlow, DiscreteFlowMatching, ExactDenoiser, MixturePath, dfm, posterior_rates

L, V = 2, 3


def _small_distribution(seed=0, length=L, vocab=V):
    support = np.array(list(itertools.product(range(vocab), repeat=length)), np.int32)
    probs = np.random.default_rng(seed).dirichlet(np.ones(len(support)))
    return support, probs


def _paths():
    custom = np.array([0.5, 0.3, 0.2])
    return [MixturePath(V, "mask"), MixturePath(V, "uniform", "cosine"), MixturePath(V, custom, "polynomial")]


@pytest.mark.parametrize("path", _paths(), ids=["mask-linear", "uniform-cosine", "custom-polynomial"])
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_rates_satisfy_the_kolmogorov_forward_equation(path, eta):
    with jax.enable_x64(True):
        support, probs = _small_distribution()
        denoiser = ExactDenoiser(path, support, probs)
        states = jnp.array(list(itertools.product(range(path.num_states), repeat=L)), jnp.int32)
        index = {tuple(map(int, s)): i for i, s in enumerate(states)}

        def marginal(t):  # p_t(x) = Σ p(x₁) Πᵢ p_t(xⁱ | x₁ⁱ)
            cond = path.conditional_probs(jnp.asarray(support), t)  # (N, L, S)
            per = jax.vmap(lambda s: jnp.prod(jnp.take_along_axis(cond, s[None, :, None], 2)[..., 0], axis=1))(states)
            return per @ probs

        for t in (0.2, 0.5, 0.8):
            t = jnp.asarray(t, jnp.float64)
            p = marginal(t)
            q = np.zeros((len(states), len(states)))
            for a, s in enumerate(states):
                rates = np.asarray(posterior_rates(path, jnp.exp(denoiser(s, t)), s, t, eta))
                for i, y in itertools.product(range(L), range(path.num_states)):
                    if y != s[i] and rates[i, y] > 0:
                        q[a, index[tuple(int(v) for v in s.at[i].set(y))]] = rates[i, y]
            q -= np.diag(q.sum(1))
            h = 1e-5
            dp_dt = (marginal(t + h) - marginal(t - h)) / (2 * h)
            np.testing.assert_allclose(np.asarray(p) @ q, dp_dt, atol=2e-6)


@pytest.mark.parametrize("source,eta,method,corrector", [("mask", 0.0, "euler", 0), ("mask", 1.0, "tau-leaping", 0),
                                                         ("uniform", 0.0, "euler", 0), ("uniform", 1.0, "euler", 0),
                                                         ("uniform", 0.0, "euler", 2)])
@pytest.mark.slow
def test_sampler_with_the_exact_posterior_reproduces_the_distribution(source, eta, method, corrector):
    support, probs = _small_distribution(seed=1)
    path = MixturePath(V, source)
    model = DiscreteFlow(path, ExactDenoiser(path, support, probs), L)
    n = 20_000
    x = np.asarray(model.sample(jax.random.key(0), n, steps=400, eta=eta, method=method, corrector_steps=corrector))
    counts = np.bincount(x[:, 0] * V + x[:, 1], minlength=V**L)
    assert stats.chisquare(counts, probs * n).pvalue > 1e-3, (counts, probs * n)


def test_elbo_is_exact_for_masking_and_a_bound_for_uniform_with_the_exact_posterior():
    support, probs = _small_distribution(seed=2)
    log_p = np.log(probs)
    for source in ("mask", "uniform"):
        path = MixturePath(V, source)
        model = DiscreteFlow(path, ExactDenoiser(path, support, probs), L)
        elbo = np.asarray(model.elbo(support, jax.random.key(1), samples=4096))
        if source == "mask":  # any-order autoregressive: the bound is tight
            np.testing.assert_allclose(elbo, log_p, atol=0.05)
        else:
            assert np.all(elbo < log_p + 0.02) and np.mean(log_p - elbo) > 0.05


class _TimeDependentDenoiser(eqx.Module):
    """Logits that depend on ``t`` and on which positions are masked, so the ELBO's time
    integral matters (the exact posterior of a masking path does not depend on ``t``)."""

    base: jax.Array
    slope: jax.Array
    per_mask: jax.Array
    cond_shape: None = eqx.field(static=True, default=None)

    def __call__(self, x, t, condition=None, keep=None):
        masked = (x >= self.base.shape[-1]).astype(jnp.float32)
        return self.base + 6.0 * t * self.slope + jnp.einsum("j,jlv->lv", masked, self.per_mask)


def _masked_elbo_by_quadrature(model, x1, nodes=200):
    """``−Σ_M ∫ dκ (1−κ)^{|M|−1} κ^{L−|M|} Σ_{i∈M} −log p(x₁ⁱ | x₁ with M masked, t(κ))`` over
    every mask ``M``, by Gauss–Legendre in ``κ`` (the linear scheduler: ``t = κ``)."""
    length = len(x1)
    u, w = np.polynomial.legendre.leggauss(nodes)
    kappa, w = 0.5 * (u + 1), 0.5 * w
    total = 0.0
    for mask in itertools.product([False, True], repeat=length):
        mask = np.array(mask)
        k = mask.sum()
        if k == 0:
            continue
        xt = jnp.where(mask, model.path.mask_token, x1)
        log_p = jax.vmap(lambda t: jax.nn.log_softmax(model.logits(xt, t), -1))(jnp.asarray(kappa, jnp.float32))
        nll = -np.asarray(log_p)[:, np.arange(length), x1][:, mask].sum(1)
        total += np.sum(w * (1 - kappa) ** (k - 1) * kappa ** (length - k) * nll)
    return -total


def test_masked_elbo_matches_quadrature_for_a_time_dependent_denoiser():
    length, vocab = 3, 3
    keys = jax.random.split(jax.random.key(0), 3)
    denoiser = _TimeDependentDenoiser(jax.random.normal(keys[0], (length, vocab)),
                                      jax.random.normal(keys[1], (length, vocab)),
                                      jax.random.normal(keys[2], (length, length, vocab)))
    model = DiscreteFlow(MixturePath(vocab, "mask"), denoiser, length)
    x1 = np.array([[0, 2, 1], [1, 1, 0]], np.int32)
    exact = np.array([_masked_elbo_by_quadrature(model, x) for x in x1])
    closed_form = np.asarray(model.elbo(x1, jax.random.key(1), samples=200_000))
    np.testing.assert_allclose(closed_form, exact, atol=0.06)  # Monte Carlo error ≈ 0.01; κ ~ Beta(k, L−k+1) is 0.2 off
    # the generic estimator's weight κ̇/(1−κ) makes it heavy-tailed near t = 1: a looser check
    by_time = np.asarray(model.elbo_by_time(x1, jax.random.key(2), samples=200_000))
    np.testing.assert_allclose(by_time, exact, atol=0.15)


def test_infilling_clamps_known_positions_and_samples_the_conditional():
    support, probs = _small_distribution(seed=3)
    path = MixturePath(V, "mask")
    model = DiscreteFlow(path, ExactDenoiser(path, support, probs), L)
    x = np.asarray(model.sample(jax.random.key(0), 8000, steps=50, known=jnp.array([2, -1])))
    assert np.all(x[:, 0] == 2)
    conditional = probs[support[:, 0] == 2] / probs[support[:, 0] == 2].sum()
    counts = np.bincount(x[:, 1], minlength=V)
    assert stats.chisquare(counts, conditional * len(x)).pvalue > 1e-3


@pytest.mark.slow
def test_training_tightens_the_elbo_to_the_true_log_likelihood():
    support, probs = _small_distribution(seed=4, length=3, vocab=4)
    rng = np.random.default_rng(0)
    data = support[rng.choice(len(support), size=20_000, p=probs)]
    model = dfm(jax.random.key(0), 3, 4, source="mask", width=128, depth=2, embed_dim=16)
    model, _ = gf.fit(model, data, key=jax.random.key(1), loss=DiscreteFlowMatching(), steps=2000,
                      batch_size=256, learning_rate=3e-3, progress=False)
    test = support[rng.choice(len(support), size=2000, p=probs)]
    elbo = float(np.mean(model.elbo(test, jax.random.key(2), samples=64)))
    true_ll = float(np.mean(np.log(probs[test[:, 0] * 16 + test[:, 1] * 4 + test[:, 2]])))
    assert elbo < true_ll + 0.02  # a bound (up to Monte Carlo error)
    assert true_ll - elbo < 0.05, (elbo, true_ll)  # and tight after training


def test_bad_input_gets_clear_errors():
    model = dfm(jax.random.key(0), 4, 5, width=16, depth=1, embed_dim=8)
    fit = lambda data: gf.fit(model, data, key=jax.random.key(0), loss=DiscreteFlowMatching(), steps=2, progress=False)
    with pytest.raises(ValueError, match=r"outside the vocabulary \(e.g. 7\); expected integers in \[0, 5\)"):
        fit(np.array([[0, 1, 2, 7]] * 8))
    with pytest.raises(ValueError, match=r"shape \(8, 3\); expected \(..., 4\)"):
        fit(np.zeros((8, 3), np.int32))
    with pytest.raises(ValueError, match="empty"):
        fit(np.zeros((0, 4), np.int32))
    with pytest.raises(ValueError, match="non-integer"):
        fit(np.full((8, 4), 0.5))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.elbo(np.array([[0, 1, 2, -1]]), jax.random.key(0))
    with pytest.raises(ValueError, match="known has shape"):
        model.sample(jax.random.key(0), 2, known=jnp.array([1, 2]))
    with pytest.raises(ValueError, match="unknown source"):
        MixturePath(5, "gaussian")
    with pytest.raises(ValueError, match="summing to 1"):
        MixturePath(3, [0.5, 0.6, 0.1])


def test_toy_data_have_their_exact_answers():
    from discrete.datasets import (checkerboard_tokens, checkerboard_tokens_log_prob, load_token_data, sorted_ones,
                                   sorted_ones_counts)

    x = checkerboard_tokens(50_000, seed=0)
    assert x.min() >= 0 and x.max() < 128 and np.all(np.isfinite(checkerboard_tokens_log_prob(x)))
    cells = np.unique(x[:, 0] * 128 + x[:, 1])
    assert len(cells) > 0.99 * 8192 * (1 - np.exp(-50_000 / 8192))  # fills its 8192 cells
    assert load_token_data("checkerboard").true_nll == pytest.approx(9.011, abs=1e-3)
    valid, hist = sorted_ones_counts(sorted_ones(11_000, seed=1))
    assert valid == 1.0 and stats.chisquare(hist).pvalue > 1e-3
    assert sorted_ones_counts(np.array([[1, 0, 1, 0]]))[0] == 0.0


def test_smiles_tokenizer_round_trips_and_metrics_count_failures(tmp_path):
    from pathlib import Path

    from discrete.datasets import SmilesTokenizer, load_qm9_smiles, read_smiles, smiles_metrics

    fixture = Path(__file__).parent / "qm9_smiles_sample.txt"
    data = load_qm9_smiles(fixture)
    smiles = read_smiles(fixture)
    assert len(data.train) + len(data.val) + len(data.test) == len(smiles) == 400
    assert sorted(data.tokenizer.decode(np.concatenate([data.train, data.val, data.test]))) == sorted(smiles)
    tok = SmilesTokenizer.fit(["C[NH3+]CCl"], "atom")
    assert tok.split("C[NH3+]CCl") == ["C", "[NH3+]", "C", "Cl"]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.encode(["CBr"], 8)
    with pytest.raises(ValueError, match="at most 2"):
        tok.encode(["CCC"], 2)
    m = smiles_metrics(["CCO", "OCC", "C1CC", "", "c1ccccc1"], training=["CCO"])
    assert (m["valid"], m["uniqueness"], m["novelty"]) == (3, 2 / 3, 1 / 2)
    csv_file = tmp_path / "part.csv"
    csv_file.write_text('Index,SMILES\n1,"C"\n2,"CC#N"\n')
    assert read_smiles(csv_file) == ["C", "CC#N"] and read_smiles(tmp_path) == ["C", "CC#N"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_smiles(tmp_path / "missing.txt")


def test_conditional_generation_with_guidance():
    """Class 0 → all zeros, class 1 → all ones: the context decides, with and without guidance."""
    rng = np.random.default_rng(0)
    labels = rng.integers(2, size=4000)
    tokens = np.repeat(labels[:, None], 4, axis=1).astype(np.int32)
    context = np.eye(2, dtype=np.float32)[labels]
    model = dfm(jax.random.key(0), 4, 2, source="uniform", cond_dim=2, width=64, depth=2, embed_dim=16)
    model, _ = gf.fit(model, (tokens, context), key=jax.random.key(1), loss=DiscreteFlowMatching(condition_dropout=0.2),
                      steps=400, batch_size=256, learning_rate=3e-3, progress=False)
    for label in (0, 1):
        for guidance in (0.0, 2.0):
            x = np.asarray(model.sample(jax.random.key(2), 200, condition=jnp.eye(2)[label], steps=20, guidance=guidance))
            assert np.mean(np.all(x == label, axis=1)) > 0.9, (label, guidance)
    unconditional = np.asarray(model.sample(jax.random.key(3), 400, steps=20))  # the null context: both classes
    assert 0.2 < np.mean(unconditional[:, 0]) < 0.8
