"""Hidden Markov tasks: construction, sampling, the exact posterior, the Bayes and adjacent-token
losses, each against an independent reference (brute-force enumeration of every hidden path and
every completion, a NumPy forward-backward written here, hmmlearn's forward-backward,
chi-square tests on samples)."""
import itertools

import numpy as np
import pytest
from scipy import stats

import rgflow as rg
from conftest import random_stochastic


# --------------------------------------------------------------------------------------------
# References, independent of rgflow


def stationary_ref(T):
    """The stationary law of an irreducible T: the null vector of (T^T - I) with sum 1, from
    the SVD (not GTH, which the C core uses)."""
    H = T.shape[0]
    A = np.vstack([T.T - np.eye(H), np.ones((1, H))])
    b = np.zeros(H + 1)
    b[-1] = 1.0
    pi, *_ = np.linalg.lstsq(A, b, rcond=None)
    return pi


def random_emission(rng, H, V, zeros=0.0):
    """A random (H, V) row-stochastic emission matrix; `zeros` of the entries forced to 0, each
    row keeping at least its entry (h, h mod V)."""
    E = rng.random((H, V)) + 0.05
    if zeros:
        E[rng.random((H, V)) < zeros] = 0.0
        E[np.arange(H), np.arange(H) % V] += 0.2
    return E / E.sum(axis=1, keepdims=True)


def brute_token_law(T, pi, E, L):
    """Every token sequence of length L (rows of `xs`, (V^L, L)) and its probability
    P(x) = sum over all H^L hidden paths h of pi_h0 prod T[h_t-1, h_t] prod E[h_t, x_t]."""
    H, V = E.shape
    hs = np.array(list(itertools.product(range(H), repeat=L)))
    xs = np.array(list(itertools.product(range(V), repeat=L)))
    p_path = pi[hs[:, 0]] * np.prod(T[hs[:, :-1], hs[:, 1:]], axis=1)
    W = np.ones((len(hs), len(xs)))
    for t in range(L):
        W *= E[hs[:, t]][:, xs[:, t]]
    return xs, p_path @ W


def brute_posterior(xs, px, tokens, mask):
    """P(x_t = v | visible tokens) by conditioning the enumerated joint law; also returns the
    probability of the visible tokens of each sequence."""
    n, L = tokens.shape
    V = xs.max() + 1
    out = np.zeros((n, L, V))
    evidence = np.zeros(n)
    for i in range(n):
        vis = np.flatnonzero(~mask[i])
        keep = np.all(xs[:, vis] == tokens[i, vis], axis=1)
        w = px[keep]
        evidence[i] = w.sum()
        for t in range(L):
            out[i, t] = np.bincount(xs[keep, t], weights=w, minlength=V) / w.sum()
    return out, evidence


def forward_backward_ref(T, pi, E, tokens, mask):
    """Scaled forward-backward over the hidden states, vectorised over sequences.

    Returns the token posterior (n, L, V) (one-hot at visible positions) and the log
    normalisers: log P(visible tokens of sequence i) = sum_t log c_t."""
    n, L = tokens.shape
    H, V = E.shape
    e = np.where(mask[..., None], 1.0, E.T[np.where(mask, 0, tokens)])  # (n, L, H)
    alpha = np.empty((n, L, H))
    c = np.empty((n, L))
    for t in range(L):
        a = (pi[None, :] if t == 0 else alpha[:, t - 1] @ T) * e[:, t]
        c[:, t] = a.sum(axis=1)
        assert (c[:, t] > 0).all(), "reference: impossible visible tokens"
        alpha[:, t] = a / c[:, t, None]
    beta = np.ones((n, L, H))
    for t in range(L - 2, -1, -1):
        beta[:, t] = (e[:, t + 1] * beta[:, t + 1]) @ T.T / c[:, t + 1, None]
    gamma = alpha * beta
    # a property of the scaled recursions (a check of this reference, not of rgflow)
    np.testing.assert_allclose(gamma.sum(axis=2), 1.0, rtol=0, atol=1e-12)
    gamma /= gamma.sum(axis=2, keepdims=True)
    post = gamma @ E
    rows, pos = np.nonzero(~mask)
    post[rows, pos] = 0.0
    post[rows, pos, tokens[rows, pos]] = 1.0
    return post, np.log(c).sum(axis=1)


def total_variation(p, q):
    return 0.5 * np.abs(p - q).sum(axis=-1)


# --------------------------------------------------------------------------------------------
# Construction and attributes


def test_exported():
    assert rg.HiddenMarkovTask is rg.chains.HiddenMarkovTask
    assert "HiddenMarkovTask" in rg.__all__


def test_attributes_of_the_plain_constructor(rng):
    T = random_stochastic(rng, 3, zeros=0.3)
    E = random_emission(rng, 3, 5)
    task = rg.HiddenMarkovTask(T, E)
    assert (task.n_hidden, task.n_states) == (3, 5)
    assert task.noise is None
    np.testing.assert_array_equal(task.hidden.transition, T)
    assert task.emission.dtype == np.float64 and task.emission.shape == (3, 5)
    np.testing.assert_array_equal(task.emission, E)
    pi = stationary_ref(T)
    np.testing.assert_allclose(task.hidden_stationary, pi, rtol=0, atol=1e-13)
    np.testing.assert_array_equal(task.hidden_stationary, task.hidden.stationary)
    np.testing.assert_allclose(task.stationary, pi @ E, rtol=0, atol=1e-13)
    assert task.stationary.shape == (5,)
    p = pi @ E
    assert task.unigram_entropy == pytest.approx(-(p * np.log(p)).sum(), rel=1e-12)
    assert task.correlation_length == rg.MarkovChain(T).correlation_length
    # the emission is copied and exposed read-only
    before = E[0, 0]
    E[0, 0] = 7.0
    assert task.emission[0, 0] == before
    with pytest.raises(ValueError):
        task.emission[0, 0] = 0.5
    # a given stationary law is checked as MarkovChain checks it
    rg.HiddenMarkovTask(T, task.emission, stationary=pi)
    with pytest.raises(ValueError, match="stationary"):
        rg.HiddenMarkovTask(T, task.emission, stationary=np.full(3, 1 / 3))
    # other layouts of the same matrices
    for variant in (task.emission.tolist(), np.asfortranarray(task.emission),
                    np.repeat(task.emission, 2, axis=1)[:, ::2]):
        np.testing.assert_array_equal(rg.HiddenMarkovTask(T, variant).emission, task.emission)
    exact32 = np.array([[0.5, 0.25, 0.25], [0.125, 0.375, 0.5]], dtype=np.float32)
    np.testing.assert_array_equal(rg.HiddenMarkovTask(np.full((2, 2), 0.5), exact32).emission,
                                  exact32)


def test_noisy_and_random_factories():
    V, xi, noise = 6, 2.5, 0.2
    task = rg.HiddenMarkovTask.noisy(V, xi, noise)
    assert (task.n_hidden, task.n_states, task.noise) == (V, V, noise)
    np.testing.assert_array_equal(task.hidden.transition, rg.MarkovChain.lazy(V, xi).transition)
    np.testing.assert_allclose(task.emission, (1 - noise) * np.eye(V) + noise / V,
                               rtol=0, atol=1e-15)
    assert task.correlation_length == pytest.approx(xi, rel=1e-9)
    np.testing.assert_allclose(task.stationary, np.full(V, 1 / V), rtol=0, atol=1e-15)
    assert task.unigram_entropy == pytest.approx(np.log(V), rel=1e-13)
    rand = rg.HiddenMarkovTask.noisy(V, xi, noise, chain="random", seed=3)
    np.testing.assert_array_equal(rand.hidden.transition,
                                  rg.MarkovChain.random(V, xi, seed=3).transition)
    assert rand.correlation_length == pytest.approx(xi, rel=1e-9)
    np.testing.assert_allclose(rand.stationary, rand.hidden_stationary @ rand.emission,
                               rtol=0, atol=1e-15)

    H, V, xi, noise = 3, 5, 1.5, 0.1
    task = rg.HiddenMarkovTask.random(H, V, xi, noise=noise, seed=4)
    assert (task.n_hidden, task.n_states, task.noise) == (H, V, noise)
    np.testing.assert_array_equal(task.hidden.transition, rg.MarkovChain.lazy(H, xi).transition)
    R = np.random.default_rng(4).dirichlet(np.ones(V), size=H)
    np.testing.assert_allclose(task.emission, (1 - noise) * R + noise / V, rtol=0, atol=1e-15)
    rand = rg.HiddenMarkovTask.random(H, V, xi, noise=noise, chain="random", seed=4)
    np.testing.assert_array_equal(rand.hidden.transition,
                                  rg.MarkovChain.random(H, xi, seed=4).transition)
    np.testing.assert_allclose(rand.emission.sum(axis=1), 1.0, rtol=0, atol=1e-14)
    assert rand.emission.min() >= noise / V - 1e-16
    default = rg.HiddenMarkovTask.random(H, V, xi)
    assert default.noise == 0.0
    np.testing.assert_allclose(default.emission,
                               np.random.default_rng(0).dirichlet(np.ones(V), size=H),
                               rtol=0, atol=1e-15)


# --------------------------------------------------------------------------------------------
# Posterior: brute force over every hidden path and every completion


def brute_force_masks(rng, n, L):
    """Random masks (rate 0.5) plus the patterns that stress the recursions: all hidden,
    all but one hidden, one hidden, an adjacent masked run, both ends hidden."""
    mask = rng.random((n, L)) < 0.5
    mask[0] = True
    if L > 1:
        mask[1] = True
        mask[1, rng.integers(L)] = False
        mask[2] = False
        mask[2, L // 2] = True
        mask[3] = False
        mask[3, 1:min(L, 4)] = True
        mask[4] = False
        mask[4, [0, L - 1]] = True
    return mask


@pytest.mark.parametrize("H,V,L,zeros", [
    (2, 2, 6, 0.0), (2, 3, 6, 0.0), (3, 2, 6, 0.0), (3, 4, 5, 0.0), (2, 4, 6, 0.0),
    (3, 3, 6, 0.35), (2, 4, 5, 0.35), (3, 4, 1, 0.0), (2, 3, 2, 0.0)])
def test_posterior_matches_brute_force(rng, H, V, L, zeros):
    for trial in range(2):
        T = random_stochastic(rng, H, zeros=0.3 if H == 3 else 0.0)
        E = random_emission(rng, H, V, zeros=zeros)
        if zeros:
            assert (E == 0).any()
        task = rg.HiddenMarkovTask(T, E)
        pi = stationary_ref(T)
        np.testing.assert_allclose(task.hidden_stationary, pi, rtol=0, atol=1e-13)
        xs, px = brute_token_law(T, pi, E, L)
        assert px.sum() == pytest.approx(1.0, abs=1e-13)
        # the token marginal at every position is `stationary`
        for t in range(L):
            np.testing.assert_allclose(np.bincount(xs[:, t], weights=px, minlength=V),
                                       task.stationary, rtol=0, atol=1e-13)
        n = 8
        tokens = xs[rng.choice(len(xs), size=n, p=px / px.sum())].astype(np.int32)
        mask = brute_force_masks(rng, n, L)
        ref, evidence = brute_posterior(xs, px, tokens, mask)
        masked = np.where(mask, V, tokens).astype(np.int32)
        post = task.posterior(masked, mask)
        assert post.shape == (n, L, V) and post.dtype == np.float64
        np.testing.assert_allclose(post, ref, rtol=0, atol=1e-12)
        if zeros:  # impossible completions get exactly zero
            assert (post[ref == 0] == 0).all()
        # values at masked positions are ignored: any of [0, V] gives the same bits
        anything = np.where(mask, rng.integers(0, V + 1, size=mask.shape), tokens)
        np.testing.assert_array_equal(task.posterior(anything.astype(np.int32), mask), post)
        # all hidden: the posterior is the stationary token law at every position
        np.testing.assert_allclose(post[0], np.tile(task.stationary, (L, 1)), rtol=0, atol=1e-12)
        # the NumPy reference used below agrees with the enumeration, log-normalisers included
        fb, loglik = forward_backward_ref(T, pi, E, tokens, mask)
        np.testing.assert_allclose(fb, ref, rtol=0, atol=1e-12)
        np.testing.assert_allclose(loglik, np.log(evidence), rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------
# Posterior on long sequences: against the NumPy forward-backward


def test_posterior_matches_numpy_forward_backward_on_long_sequences():
    rng = np.random.default_rng(7)
    H, V, L = 4, 6, 2000
    T = rg.MarkovChain.random(H, 3.0, seed=1).transition
    E = random_emission(rng, H, V)
    E[:, V - 1] = 0.0
    E /= E.sum(axis=1, keepdims=True)
    E[:H - 1, V - 1] = 1e-100   # token V-1 all but pins the hidden state H-1 (rows still sum
    E[H - 1, V - 1] = 0.5       # to 1 in float64 after renormalising the last row)
    E[H - 1] /= E[H - 1].sum()
    task = rg.HiddenMarkovTask(T, E)
    tokens = task.sample(6, L, seed=2)
    # the pinning token appears, so the likelihood spans > 100 orders of magnitude per step
    assert (tokens == V - 1).sum() > 50
    masked, mask = rg.mask_tokens(tokens, rate=0.5, seed=3, mask_id=V)
    mask[1] = False                       # everything visible
    mask[2, 500:1500] = True              # a long masked run
    mask[3] = True                        # nothing visible
    mask[3, L // 2] = False
    masked = np.where(mask, V, tokens).astype(np.int32)
    post = task.posterior(masked, mask)
    ref, loglik = forward_backward_ref(T, stationary_ref(T), E, tokens, mask)
    # an unscaled forward pass would underflow (P(visible) < 1e-300), the posterior may not
    assert loglik[[0, 1, 2, 4, 5]].max() < np.log(1e-300)
    assert np.isfinite(post).all() and (post >= 0).all()
    np.testing.assert_allclose(post.sum(axis=2), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(post, ref, rtol=0, atol=1e-10)


def hmmlearn_posterior(T, pi, E, tokens, mask, implementation):
    """The token posterior from hmmlearn's forward-backward (its C recursions, not ours): a
    CategoricalHMM whose emission likelihood is 1 for every state at a masked position
    (hmmlearn's documented extension point for custom emissions), then gamma @ E."""
    from hmmlearn import hmm

    class MaskedCategoricalHMM(hmm.CategoricalHMM):
        def _compute_likelihood(self, X):
            x = X[:, 0]
            lik = np.ones((len(x), self.n_components))
            seen = x < self.n_features
            lik[seen] = self.emissionprob_[:, x[seen]].T
            return lik

        def _compute_log_likelihood(self, X):
            with np.errstate(divide="ignore"):
                return np.log(self._compute_likelihood(X))

    n, L = tokens.shape
    H, V = E.shape
    model = MaskedCategoricalHMM(n_components=H, n_features=V, implementation=implementation)
    model.startprob_, model.transmat_, model.emissionprob_ = pi, T, E
    X = np.where(mask, V, tokens).reshape(-1, 1)
    loglik, gamma = model.score_samples(X, lengths=[L] * n)
    post = (gamma @ E).reshape(n, L, V)
    rows, pos = np.nonzero(~mask)
    post[rows, pos] = 0.0
    post[rows, pos, tokens[rows, pos]] = 1.0
    logliks = [model.score(X[i * L:(i + 1) * L]) for i in range(n)]
    return post, np.array(logliks), loglik


@pytest.mark.parametrize("implementation", ["scaling", "log"])
def test_posterior_matches_hmmlearn_on_long_sequences(implementation):
    """hmmlearn (a test extra) as a second, external forward-backward: random tasks, lengths to
    2,000, half the tokens masked, likelihoods far below 1e-300."""
    pytest.importorskip("hmmlearn")
    rng = np.random.default_rng(11)
    for H, V, L, n, xi in [(3, 5, 2000, 3, 2.0), (6, 4, 700, 5, 9.0), (2, 9, 64, 40, 0.5)]:
        T = rg.MarkovChain.random(H, xi, seed=int(rng.integers(1000))).transition
        E = random_emission(rng, H, V)
        task = rg.HiddenMarkovTask(T, E)
        tokens = task.sample(n, L, seed=int(rng.integers(1000)))
        masked, mask = rg.mask_tokens(tokens, rate=0.5, seed=int(rng.integers(1000)),
                                      mask_id=V)
        post = task.posterior(masked, mask)
        ref, logliks, total = hmmlearn_posterior(T, stationary_ref(T), E, tokens, mask,
                                                 implementation)
        np.testing.assert_allclose(post, ref, rtol=0, atol=1e-10)
        # and hmmlearn agrees with this file's NumPy reference on log P(visible tokens)
        ours, loglik = forward_backward_ref(T, stationary_ref(T), E, tokens, mask)
        np.testing.assert_allclose(logliks, loglik, rtol=1e-10)
        np.testing.assert_allclose(total, loglik.sum(), rtol=1e-10)
        if L == 2000:   # an unscaled forward pass would underflow here
            assert loglik.max() < np.log(1e-300)


def test_tiny_emission_probabilities_do_not_underflow_to_impossible():
    """A visible token whose every emission probability is tiny (1e-200 after a state of
    probability 1e-200; a subnormal 1e-320) is possible: the posterior and the Bayes loss stay
    finite and equal hmmlearn's log-space recursions, where a plain product underflows to 0."""
    pytest.importorskip("hmmlearn")
    cases = [
        (np.array([[1 - 1e-200, 1e-200], [.5, .5]]), np.array([[1, 0], [1 - 1e-200, 1e-200]]),
         [0, 1, 0, 0], [0, 0, 0, 1]),
        (np.array([[.9, .1], [.2, .8]]), np.array([[.5, .5, 0], [.5, .5, 1e-320]]),
         [0, 2, 1, 0, 1, 2, 2], [1, 0, 1, 0, 1, 0, 1])]
    for T, E, tokens, mask in cases:
        task = rg.HiddenMarkovTask(T, E)
        tokens = np.array([tokens], dtype=np.int32)
        mask = np.array([mask], dtype=bool)
        masked = np.where(mask, E.shape[1], tokens).astype(np.int32)
        post = task.posterior(masked, mask)
        ref = hmmlearn_posterior(T, stationary_ref(T), E, tokens, mask, "log")[0]
        np.testing.assert_allclose(post, ref, rtol=1e-12, atol=0)
        assert np.isfinite(task.bayes_loss(tokens, mask))


# --------------------------------------------------------------------------------------------
# Bayes loss and the adjacent-token rule


def test_bayes_loss_equals_mean_of_posterior_log_probability():
    task = rg.HiddenMarkovTask.random(5, 7, 3.0, noise=0.1, chain="random", seed=4)
    tokens = task.sample(300, 20, seed=1)
    masked, mask = rg.mask_tokens(tokens, rate=0.2, seed=2, mask_id=7)
    post = task.posterior(masked, mask)
    ref = -np.log(np.take_along_axis(post, tokens[..., None].astype(np.int64),
                                     axis=2)[..., 0][mask]).mean()
    loss = task.bayes_loss(tokens, mask)
    assert isinstance(loss, float)
    assert loss == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize("H,V", [(2, 3), (3, 2), (3, 3)])
def test_adjacent_nll_matches_brute_force_enumeration(rng, H, V):
    """p(x_t | the visible ones of x_t-1, x_t+1) from the enumerated joint law of length-5
    sequences (stationary start), against adjacent_nll in np.nonzero(mask) order."""
    L = 5
    T = random_stochastic(rng, H, zeros=0.3 if H == 3 else 0.0)
    E = random_emission(rng, H, V)
    task = rg.HiddenMarkovTask(T, E)
    xs, px = brute_token_law(T, stationary_ref(T), E, L)
    tokens = xs[rng.choice(len(xs), size=6, p=px / px.sum())].astype(np.int32)
    mask = np.zeros((6, L), dtype=bool)
    # ends, a masked neighbour on either side, runs of 2 and 3
    mask[0, 0] = mask[1, 4] = mask[2, [1, 2]] = mask[3, [2, 3, 4]] = True
    mask[4, 2] = mask[5, [0, 1, 3]] = True
    nll = []
    for n, t in zip(*np.nonzero(mask)):
        keep = np.ones(len(xs), dtype=bool)
        for q in (t - 1, t + 1):
            if 0 <= q < L and not mask[n, q]:
                keep &= xs[:, q] == tokens[n, q]
        cond = np.bincount(xs[keep, t], weights=px[keep], minlength=V)
        nll.append(-np.log(cond[tokens[n, t]] / cond.sum()))
    got = task.adjacent_nll(tokens, mask)
    assert got.shape == (mask.sum(),) and got.dtype == np.float64
    np.testing.assert_allclose(got, nll, rtol=1e-12, atol=0)
    assert task.adjacent_loss(tokens, mask) == pytest.approx(np.mean(nll), rel=1e-12)
    assert task.adjacent_loss(tokens, mask.astype(np.uint8)) == task.adjacent_loss(tokens, mask)


def test_bayes_beats_adjacent_rule_when_tokens_are_not_markov():
    # noisy emissions: the token sequence is not Markov, so the two neighbours are not all
    # the relevant context and the full posterior must do better on a large batch
    task = rg.HiddenMarkovTask.noisy(8, 7.0, 0.3)
    tokens = task.sample(400, 32, seed=1)
    _, mask = rg.mask_tokens(tokens, rate=0.15, seed=2, mask_id=8)
    bayes, adjacent = task.bayes_loss(tokens, mask), task.adjacent_loss(tokens, mask)
    # measured: 1.335 < 1.576 < H(uniform on 8) = 2.079
    assert bayes < adjacent - 0.05 < task.unigram_entropy, (bayes, adjacent)


# --------------------------------------------------------------------------------------------
# Identity and uniform emission: the limits


@pytest.mark.parametrize("chain", ["lazy", "random"])
def test_identity_emission_is_the_hidden_chain(chain):
    V = 5
    task = rg.HiddenMarkovTask.noisy(V, 3.0, 0.0, chain=chain, seed=2)
    np.testing.assert_array_equal(task.emission, np.eye(V))
    assert task.noise == 0.0
    tokens = task.sample(50, 40, seed=7)
    assert tokens.dtype == np.int32
    np.testing.assert_array_equal(tokens, task.hidden.sample(50, 40, seed=7))
    toks, states = task.sample(50, 40, seed=7, hidden_states=True)
    np.testing.assert_array_equal(toks, states)
    masked, mask = rg.mask_tokens(tokens, rate=0.3, seed=1, mask_id=V)
    np.testing.assert_allclose(task.posterior(masked, mask), task.hidden.posterior(masked, mask),
                               rtol=0, atol=1e-12)
    assert task.bayes_loss(tokens, mask) == pytest.approx(task.hidden.bayes_loss(tokens, mask),
                                                          rel=0, abs=1e-12)
    np.testing.assert_allclose(task.adjacent_nll(tokens, mask),
                               task.hidden.adjacent_nll(tokens, mask), rtol=0, atol=1e-12)


def test_uniform_emission_makes_tokens_iid_uniform():
    V = 6
    task = rg.HiddenMarkovTask.noisy(V, 5.0, 1.0)
    tokens = task.sample(200, 16, seed=3)
    masked, mask = rg.mask_tokens(tokens, rate=0.3, seed=4, mask_id=V)
    post = task.posterior(masked, mask)
    np.testing.assert_allclose(post[mask], 1.0 / V, rtol=0, atol=1e-14)
    assert task.bayes_loss(tokens, mask) == pytest.approx(np.log(V), rel=1e-13)
    assert task.adjacent_loss(tokens, mask) == pytest.approx(np.log(V), rel=1e-13)


# --------------------------------------------------------------------------------------------
# Sampling


def chi_square_rows(counts, probs, what):
    for i in range(counts.shape[0]):
        if counts[i].sum() == 0:
            continue
        chi2, p = stats.chisquare(counts[i], counts[i].sum() * probs[i])
        assert p > 1e-4, (what, i, chi2, p)


def test_sample_emission_and_transition_frequencies_chi_square():
    task = rg.HiddenMarkovTask.random(4, 6, 2.0, noise=0.2, chain="random", seed=11)
    H, V = 4, 6
    T, E = task.hidden.transition, task.emission
    tokens, states = task.sample(4000, 50, seed=3, hidden_states=True)  # 2e5 tokens
    assert tokens.dtype == np.int32 and states.dtype == np.int32
    assert tokens.shape == states.shape == (4000, 50)
    assert 0 <= tokens.min() and tokens.max() < V and 0 <= states.min() and states.max() < H
    # the tokens-only call returns the same tokens
    np.testing.assert_array_equal(task.sample(4000, 50, seed=3), tokens)
    # P(token | state) = E
    emit = np.zeros((H, V))
    np.add.at(emit, (states.ravel(), tokens.ravel()), 1)
    chi_square_rows(emit, E, "emission")
    # P(state_t+1 | state_t) = T, and the first state is drawn from pi
    trans = np.zeros((H, H))
    np.add.at(trans, (states[:, :-1].ravel(), states[:, 1:].ravel()), 1)
    chi_square_rows(trans, T, "transition")
    chi_square_rows(np.bincount(states[:, 0], minlength=H)[None], task.hidden_stationary[None],
                    "initial state")
    # the tokens' stream is separate: given h_t, x_t ignores h_t+1 and x_t-1
    pair = np.zeros((H * H, V))
    np.add.at(pair, (states[:, :-1].ravel() * H + states[:, 1:].ravel(),
                     tokens[:, :-1].ravel()), 1)
    chi_square_rows(pair, np.repeat(E, H, axis=0), "token given (h_t, h_t+1)")
    prev = np.zeros((H * V, V))
    np.add.at(prev, (states[:, 1:].ravel() * V + tokens[:, :-1].ravel(),
                     tokens[:, 1:].ravel()), 1)
    chi_square_rows(prev, np.repeat(E, V, axis=0), "token given (h_t, x_t-1)")
    # the hidden states are the hidden chain's own sample, bit for bit
    np.testing.assert_array_equal(states, task.hidden.sample(4000, 50, seed=3))


def test_tokens_of_probability_zero_are_never_sampled_when_rows_sum_short():
    """Rows may sum to 1 - 1e-9 (the tolerance). The sampler's inverse-CDF table gave the
    missing ~4 / 2^32 to the last column even when its probability is exactly 0, so the task
    emitted a token it cannot emit and its own posterior refused the sample as impossible.
    Seed 74024182 was found by a search of the Philox stream: the emission stream's word 1 of
    sequence 0 is 2^32 - 4, inside that sliver."""
    E = np.array([[0.5, 0.5 - 9e-10, 0.0], [0.25, 0.75 - 9e-10, 0.0]])
    task = rg.HiddenMarkovTask(GOOD_T, E)
    assert rg._core.philox4x32_10((0, 0, 7, 0), (74024182, 0))[1] == 2**32 - 4
    x = task.sample(1, 3, seed=74024182)
    assert x[0, 1] == 1   # the last token of positive probability, not token 2 (was [0 2 0])
    mask = np.array([[True, False, False]])
    assert np.isfinite(task.bayes_loss(x, mask))
    # rows that end in a positive entry keep their tables: the same draw gives token 2 there
    full = rg.HiddenMarkovTask(GOOD_T, np.array([[0.5, 0.0, 0.5], [0.25, 0.0, 0.75]]))
    assert full.sample(1, 3, seed=74024182)[0, 1] == 2


def test_sample_reproducible_prefix_stable_and_thread_independent():
    task = rg.HiddenMarkovTask.noisy(8, 1.5, 0.3)
    a, sa = task.sample(10, 17, seed=9, hidden_states=True)
    b, sb = task.sample(10, 17, seed=9, hidden_states=True)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(sa, sb)
    c, sc = task.sample(5, 17, seed=9, hidden_states=True)
    np.testing.assert_array_equal(a[:5], c)
    np.testing.assert_array_equal(sa[:5], sc)
    np.testing.assert_array_equal(a[:5], task.sample(5, 17, seed=9))
    assert not np.array_equal(a, task.sample(10, 17, seed=10))
    assert not np.array_equal(a, sa)  # noise 0.3: the tokens are not the states
    big, sbig = task.sample(1001, 17, seed=9, hidden_states=True)
    for threads in (2, 7):
        t2, s2 = task.sample(1001, 17, seed=9, n_threads=threads, hidden_states=True)
        np.testing.assert_array_equal(big, t2)
        np.testing.assert_array_equal(sbig, s2)
    np.testing.assert_array_equal(big, task.sample(1001, 17, seed=9, n_threads=2))
    np.testing.assert_array_equal(sbig, task.hidden.sample(1001, 17, seed=9))
    assert task.sample(4, 3, seed=np.random.default_rng(0)).shape == (4, 3)


# --------------------------------------------------------------------------------------------
# The relevant context grows with the hidden chain's correlation length


def test_distance_three_token_matters_more_for_longer_correlation():
    """Change the visible token 3 to the right of a masked middle token and measure the total
    variation between the two posteriors of the middle token (mean over sampled sequences).
    With everything else visible, noise makes the tokens non-Markov, so distance 3 matters;
    i.i.d. tokens (xi = 0) or noise-free (Markov) tokens screen it off exactly."""
    L, mid, n = 9, 4, 200

    def change(task, gap):
        V = task.n_states
        x = task.sample(n, L, seed=5)
        y = x.copy()
        y[:, mid + 3] = (y[:, mid + 3] + V // 2) % V
        mask = np.zeros((n, L), dtype=bool)
        mask[:, mid] = True
        if gap:  # only distance >= 3 visible
            mask[:, mid - 2:mid + 3] = True
        px = task.posterior(np.where(mask, V, x).astype(np.int32), mask)[:, mid]
        py = task.posterior(np.where(mask, V, y).astype(np.int32), mask)[:, mid]
        # the same figures from the NumPy reference
        T, pi, E = task.hidden.transition, task.hidden_stationary, task.emission
        rx = forward_backward_ref(T, pi, E, x, mask)[0][:, mid]
        ry = forward_backward_ref(T, pi, E, y, mask)[0][:, mid]
        np.testing.assert_allclose(px, rx, rtol=0, atol=1e-12)
        np.testing.assert_allclose(py, ry, rtol=0, atol=1e-12)
        return float(total_variation(px, py).mean())

    for gap in (False, True):
        d = {xi: change(rg.HiddenMarkovTask.noisy(8, xi, 0.3), gap) for xi in (0.0, 1.0, 7.0)}
        assert d[0.0] < 1e-14, (gap, d)
        # measured (xi = 1 vs 7): all visible 0.0076 vs 0.0353; only distance >= 3 visible
        # 0.0244 vs 0.200 (the NumPy reference agrees to 1e-12 above)
        assert d[1.0] > 1e-3, (gap, d)
        assert d[7.0] > 3 * d[1.0], (gap, d)
    # noise-free tokens are a Markov chain: the visible neighbours screen off distance 3
    assert change(rg.HiddenMarkovTask.noisy(8, 7.0, 0.0), gap=False) < 1e-14


# --------------------------------------------------------------------------------------------
# Bad input: TypeError/ValueError naming the argument, never a crash


GOOD_T = np.array([[0.9, 0.1], [0.2, 0.8]])
GOOD_E = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])


@pytest.mark.parametrize("E,exc,match", [
    (np.full((3, 3), 1 / 3), ValueError, "emission"),            # 3 rows for H = 2
    (np.full((1, 3), 1 / 3), ValueError, "emission"),            # 1 row for H = 2
    (np.array([0.5, 0.5]), ValueError, "emission"),              # 1-D
    (np.full((2, 3, 1), 1 / 3), ValueError, "emission"),         # 3-D
    (np.array([[1.1, -0.1, 0.0], [0.1, 0.1, 0.8]]), ValueError, "emission"),
    (np.array([[0.5, 0.3, 0.1], [0.1, 0.1, 0.8]]), ValueError, "emission"),   # row sums 0.9
    (GOOD_E + np.array([[1e-8, 0, 0], [0, 0, 0]]), ValueError, "emission"),  # beyond 1e-9
    (np.array([[0.5, np.nan, 0.2], [0.1, 0.1, 0.8]]), ValueError, "emission"),
    (np.array([[0.5, np.inf, 0.2], [0.1, 0.1, 0.8]]), ValueError, "emission"),
    (np.ones((2, 1)), ValueError, "emission"),                   # V = 1
    (np.zeros((2, 0)), ValueError, "emission"),                  # V = 0
    (np.full((2, 65536), 1 / 65536), ValueError, "emission"),    # V > 65535
    (np.array([["a", "b"], ["c", "d"]]), TypeError, "emission"),
    (None, TypeError, "emission"),
    ("abc", TypeError, "emission"),
    (GOOD_E.astype(complex), (TypeError, ValueError), "emission"),
])
def test_bad_emission(E, exc, match):
    with pytest.raises(exc, match=match):
        rg.HiddenMarkovTask(GOOD_T, E)


def test_emission_row_sum_tolerance_and_transition_checks():
    ok = GOOD_E + np.array([[1e-11, 0, 0], [0, 0, 0]])  # within 1e-9: accepted
    rg.HiddenMarkovTask(GOOD_T, ok)
    with pytest.raises(ValueError, match="row 1 sums"):
        rg.HiddenMarkovTask(np.array([[0.9, 0.1], [0.2, 0.7]]), GOOD_E)
    with pytest.raises(ValueError, match="closed classes"):
        rg.HiddenMarkovTask(np.eye(3), np.full((3, 2), 0.5))
    with pytest.raises(TypeError, match="transition"):
        rg.HiddenMarkovTask("abc", GOOD_E)


@pytest.mark.parametrize("noise,exc", [
    (-0.1, ValueError), (1.1, ValueError), (float("nan"), ValueError),
    (float("inf"), ValueError), ("0.1", TypeError), (None, TypeError)])
def test_bad_noise(noise, exc):
    with pytest.raises(exc, match="noise"):
        rg.HiddenMarkovTask.noisy(4, 1.0, noise)
    with pytest.raises(exc, match="noise"):
        rg.HiddenMarkovTask.random(3, 4, 1.0, noise=noise)


def test_bad_factory_arguments():
    rg.HiddenMarkovTask.noisy(4, 1.0, 0.0)
    rg.HiddenMarkovTask.noisy(4, 1.0, 1.0)
    for make in (lambda: rg.HiddenMarkovTask.noisy(4, 1.0, 0.1, chain="bogus"),
                 lambda: rg.HiddenMarkovTask.random(3, 4, 1.0, chain="bogus")):
        with pytest.raises((ValueError, TypeError), match="chain"):
            make()
    with pytest.raises(ValueError, match="n_states"):
        rg.HiddenMarkovTask.noisy(1, 1.0, 0.1)
    with pytest.raises(ValueError, match="n_states"):
        rg.HiddenMarkovTask.random(3, 1, 1.0)
    with pytest.raises(ValueError, match="n_hidden|n_states"):
        rg.HiddenMarkovTask.random(1, 4, 1.0)
    with pytest.raises(ValueError, match="xi"):
        rg.HiddenMarkovTask.noisy(4, -1.0, 0.1)
    with pytest.raises(ValueError, match="seed"):
        rg.HiddenMarkovTask.random(3, 4, 1.0, seed=-1)


def test_bad_n_hidden_is_named_and_refused_by_config():
    """random(n_hidden=1) said "n_states must be >= 2" (the hidden chain's own argument), and
    Config(task="hmm-random", n_hidden=1 or 10**6) was accepted, to fail only in run()."""
    from rgflow.experiments import Config
    for bad in (1, 65536, 10**6):
        with pytest.raises(ValueError, match=r"^n_hidden must .*got %d$" % bad):
            rg.HiddenMarkovTask.random(bad, 4, 1.0)
        with pytest.raises(ValueError, match=r"^n_hidden must .*got %d$" % bad):
            Config(task="hmm-random", n_hidden=bad)
    with pytest.raises(TypeError, match="n_hidden"):
        rg.HiddenMarkovTask.random(3.0, 4, 1.0)
    assert Config(task="hmm-random", n_hidden=2).n_hidden == 2


def test_bad_sample_arguments():
    task = rg.HiddenMarkovTask(GOOD_T, GOOD_E)
    for kwargs, exc, match in [
            (dict(n=0, length=5), ValueError, "n must be"),
            (dict(n=3, length=0), ValueError, "length must be"),
            (dict(n=3.0, length=5), TypeError, "n must be an int"),
            (dict(n=3, length=5, seed=-1), ValueError, "seed"),
            (dict(n=3, length=5, n_threads=0), ValueError, "n_threads"),
            (dict(n=2**40, length=2**40), ValueError, "too large"),
            (dict(n=3, length=5, hidden_states=np.array([1, 2])), TypeError, "hidden_states"),
            (dict(n=3, length=5, hidden_states="yes"), TypeError, "hidden_states")]:
        with pytest.raises(exc, match=match):
            task.sample(**kwargs)


def test_bad_posterior_and_loss_arguments():
    task = rg.HiddenMarkovTask.random(3, 4, 1.0, noise=0.1, seed=0)
    V = 4
    tokens = task.sample(4, 5, seed=0)
    masked, mask = rg.mask_tokens(tokens, 0.3, seed=0, mask_id=V)
    out_high = masked.copy()
    out_high[~mask] = V                                   # visible token = mask id
    out_neg = masked.copy()
    out_neg[np.nonzero(~mask)[0][0], np.nonzero(~mask)[1][0]] = -1
    beyond = masked.copy()
    beyond[mask] = V + 1                                  # masked may hold [0, V], not V + 1
    cases = [
        ((masked.astype(float), mask), TypeError, "tokens"),
        ((masked, mask[:, :4]), ValueError, "mask"),
        ((masked[:3], mask), ValueError, "mask|tokens"),
        ((masked[0], mask[0]), ValueError, "tokens"),
        ((out_high, mask), ValueError, "tokens"),
        ((out_neg, mask), ValueError, "tokens"),
        ((masked[:0], mask[:0]), ValueError, "tokens"),
    ]
    for args, exc, match in cases:
        with pytest.raises(exc, match=match):
            task.posterior(*args)
    with pytest.raises(ValueError, match="tokens"):
        task.posterior(beyond, mask)
    # bayes_loss takes the true tokens: the same faults, and the mask id is out of range too
    true_high = tokens.copy()
    true_high[0, 0] = V
    for args, exc, match in [
            ((tokens.astype(float), mask), TypeError, "tokens"),
            ((tokens, mask[:, :4]), ValueError, "mask"),
            ((tokens[:3], mask), ValueError, "mask|tokens"),
            ((tokens[0], mask[0]), ValueError, "tokens"),
            ((true_high, mask), ValueError, "tokens"),
            ((tokens - 1, mask), ValueError, "tokens"),
            ((tokens[:0], mask[:0]), ValueError, "tokens|mask hides no token"),
            ((masked, mask), ValueError, "tokens")]:
        with pytest.raises(exc, match=match):
            task.bayes_loss(*args)
    with pytest.raises(ValueError, match="mask hides no token"):
        task.bayes_loss(tokens, np.zeros_like(mask))
    for bad_t, bad_m, exc, match in [
            (tokens.astype(float), mask, TypeError, "tokens"),
            (tokens[0], mask, ValueError, "tokens"),
            (tokens + V, mask, ValueError, "tokens"),
            (tokens, mask[:2], ValueError, "mask"),
            (tokens, mask * 2, TypeError, "mask"),
            (tokens, np.zeros_like(mask), ValueError, "mask hides no token")]:
        with pytest.raises(exc, match=match):
            task.adjacent_nll(bad_t, bad_m)
        with pytest.raises(exc, match=match):
            task.adjacent_loss(bad_t, bad_m)
    # the task still works after all of that
    assert np.isfinite(task.posterior(masked, mask)).all()


def test_mask_id_is_a_token_only_where_hidden():
    # the one range check of posterior and bayes_loss (in the binding; the kernels trust it)
    # names where the mask id V stands wrongly: visible, or among bayes_loss's true tokens
    for task in (rg.MarkovChain.lazy(3, 1.0), rg.HiddenMarkovTask(GOOD_T, GOOD_E)):  # V = 3
        tokens = task.sample(4, 5, seed=0)
        mask = np.zeros((4, 5), dtype=bool)
        mask[1, 2] = True
        hidden = tokens.copy()
        hidden[1, 2] = 3
        assert np.isfinite(task.posterior(hidden, mask)).all()
        with pytest.raises(ValueError, match=r"tokens\[1, 2\] = 3 is not a token in \[0, 3\)"):
            task.bayes_loss(hidden, mask)
        visible = tokens.copy()
        visible[2, 4] = 3
        for run in (task.posterior, task.bayes_loss):
            with pytest.raises(ValueError, match=r"tokens\[2, 4\] = 3 is not a token"):
                run(visible, mask)


def test_impossible_visible_tokens_are_rejected():
    # token 2 is never emitted
    E = np.array([[0.6, 0.4, 0.0], [0.3, 0.7, 0.0]])
    task = rg.HiddenMarkovTask(GOOD_T, E)
    tokens = np.array([[0, 1, 2, 0]], dtype=np.int32)
    mask = np.array([[False, True, False, False]])
    with pytest.raises(ValueError, match="probability zero|impossible"):
        task.posterior(tokens, mask)
    with pytest.raises(ValueError, match="probability zero|impossible"):
        task.bayes_loss(tokens, mask)
    # masked, it is merely never predicted
    post = task.posterior(tokens, ~mask)
    assert (post[..., 2] == 0).all()
    # each token possible on its own, the pair impossible: a period-2 hidden chain seen exactly
    flip = rg.HiddenMarkovTask(np.array([[0.0, 1.0], [1.0, 0.0]]), np.eye(2))
    tokens = np.array([[0, 0, 1]], dtype=np.int32)
    mask = np.array([[False, False, True]])
    with pytest.raises(ValueError, match="probability zero|impossible"):
        flip.posterior(tokens, mask)
    np.testing.assert_array_equal(flip.posterior(np.array([[0, 2, 0]], dtype=np.int32),
                                                 np.array([[False, True, False]]))[0, 1], [0, 1])


def test_adjacent_rule_rejects_impossible_visible_neighbours():
    """The adjacent rule conditions on the visible neighbours; when they have probability zero
    it raises as posterior and bayes_loss do (it returned NaN, with a RuntimeWarning)."""
    never = rg.HiddenMarkovTask(GOOD_T, np.array([[0.6, 0.4, 0.0], [0.3, 0.7, 0.0]]))
    flip = rg.HiddenMarkovTask(np.array([[0.0, 1.0], [1.0, 0.0]]), np.eye(2))
    hide = np.array([[False, False, False], [False, True, False]])
    for task, bad in [(never, [[0, 1, 0], [2, 0, 1]]),   # token 2 is never emitted
                      (flip, [[0, 1, 0], [0, 1, 1]])]:   # 0 _ 1 is impossible at period 2
        for chain in (task, task.hidden) if task is flip else (task,):
            for run in (chain.adjacent_nll, chain.adjacent_loss):
                with pytest.raises(ValueError, match=r"tokens.*\(1, 1\).*probability zero"):
                    run(np.array(bad), hide)
    # a possible pair of neighbours with an impossible true token stays -log 0 = inf, as in
    # bayes_loss; a possible one is exact: 0 _ 0 forces 1 at period 2
    with np.errstate(divide="ignore"):
        assert flip.adjacent_nll(np.array([[0, 0, 0]]), hide[1:]).tolist() == [np.inf]
    assert flip.adjacent_nll(np.array([[0, 1, 0]]), hide[1:]).tolist() == [0.0]


# --------------------------------------------------------------------------------------------
# The task in training, configs and the relevant context


def test_training_batch_emits_on_its_own_stream():
    """Identity emission: the training batch is the hidden chain's, bit for bit; with noise the
    states are the same and only the tokens differ, at about the noise's rate."""
    from rgflow.train import train_batch
    chain_task = rg.HiddenMarkovTask.noisy(8, 4.0, 0.0)
    noisy = rg.HiddenMarkovTask.noisy(8, 4.0, 0.5)
    model = rg.ResidualMLP(8, 32, 8, 16, 1)
    same = train_batch(chain_task, model, 5, batch_size=64, seed=3)
    ref = train_batch(chain_task.hidden, model, 5, batch_size=64, seed=3)
    for a, b in zip(same, ref):
        np.testing.assert_array_equal(a, b)
    tokens, _, mask = train_batch(noisy, model, 5, batch_size=64, seed=3)
    np.testing.assert_array_equal(mask, ref[2])   # masks do not depend on the tokens
    changed = np.mean(tokens != ref[0])   # noise 0.5, uniform: 7/16 differ (measured 0.448)
    assert abs(changed - 0.5 * 7 / 8) < 0.03


def test_training_on_a_hidden_markov_task_approaches_its_floor():
    task = rg.HiddenMarkovTask.noisy(4, 4.0, 0.2)
    model = rg.ResidualMLP(4, 16, 8, 64, 2, seed=0)
    hist = rg.train(model, task, 600, batch_size=64, lr=3e-3, eval_every=600, eval_size=512,
                    progress=False)
    excess = hist.eval_loss[-1] - hist.eval_bayes[-1]
    unigram = task.unigram_entropy - hist.eval_bayes[-1]
    assert 0 <= excess < 0.25 * unigram, (excess, unigram)   # measured: 0.072 of 0.469 nats


def test_config_hidden_markov_fields_and_keys():
    from rgflow.experiments import Config, make_chain
    plain = Config(xi=7.0)
    assert "task" not in plain.to_dict() and "noise" not in plain.to_dict()
    hmm = Config(xi=7.0, task="hmm", noise=0.3)
    assert hmm.to_dict()["task"] == "hmm" and hmm.key() != plain.key()
    assert Config.from_dict(hmm.to_dict()) == hmm
    assert Config.from_dict(plain.to_dict()) == plain
    task = make_chain(hmm)
    assert isinstance(task, rg.HiddenMarkovTask) and task.noise == 0.3
    np.testing.assert_array_equal(task.hidden.transition, make_chain(plain).transition)
    other = make_chain(Config(task="hmm-random", n_hidden=3, n_states=5, noise=0.1))
    assert (other.n_hidden, other.n_states) == (3, 5)
    # n_hidden = n_states is the default spelled out: the same config, the same key
    for task in ("hmm", "hmm-random"):
        assert Config(task=task, n_hidden=8, noise=0.1).key() == \
            Config(task=task, noise=0.1).key()
    for bad, match in [(dict(noise=0.1), "noise"), (dict(task="hmm", noise=1.5), "noise"),
                       (dict(task="hmm"), "task='hmm' needs noise > 0"),
                       (dict(task="bogus"), "task"),
                       (dict(task="hmm", noise=0.1, n_hidden=3), "n_hidden")]:
        with pytest.raises(ValueError, match=match):
            Config(**bad)


def test_relevant_context_of_a_chain_is_one_token():
    """Markov property: the neighbours screen off everything farther (influence 0 to rounding)."""
    c = rg.relevant_context(rg.MarkovChain.random(6, 3.0, seed=2), max_distance=6, n=300)
    assert c.length == 1 and c.influence[0] > 0.05
    assert np.all(c.influence[1:] < 1e-12) and np.isnan(c.decay_length)
    np.testing.assert_array_equal(c.distance, np.arange(1, 7))


def test_relevant_context_grows_with_noise_and_xi():
    """Against a NumPy reference at r = 2 and the ordering the issue is about: with emission
    noise farther tokens matter, and more so for the longer correlation."""
    got = {}
    for xi in (1.0, 7.0):
        task = rg.HiddenMarkovTask.noisy(8, xi, 0.3)
        c = rg.relevant_context(task, max_distance=8, n=400, seed=5)
        got[xi] = c
        # reference for r = 2 from the task's own posterior, masks built here
        x = task.sample(400, 17, seed=5)
        m = np.zeros_like(x, dtype=bool)
        m[:, 8] = True
        base = task.posterior(np.where(m, 8, x), m)[:, 8]
        tv = 0.0
        for side in (6, 10):
            m2 = m.copy()
            m2[:, side] = True
            tv += 0.25 * np.abs(task.posterior(np.where(m2, 8, x), m2)[:, 8] - base).sum(1).mean()
        assert abs(c.influence[1] - tv) < 1e-12
        assert np.all(np.diff(c.influence) < 0)     # decays with distance
    assert got[7.0].length > got[1.0].length >= 2   # measured: 3 and 2 at threshold 0.01
    assert got[7.0].influence[3] > 3 * got[1.0].influence[3]
    # the decay fit against np.polyfit on the points it documents
    for c in got.values():
        keep = (c.distance >= 2) & (c.influence >= 1e-4)
        slope = np.polyfit(c.distance[keep], np.log(c.influence[keep]), 1)[0]
        assert abs(c.decay_length + 1.0 / slope) < 1e-12
    assert got[7.0].decay_length > 1.5 * got[1.0].decay_length   # measured 1.59 vs 0.63


@pytest.mark.parametrize("task", [
    rg.HiddenMarkovTask.random(3, 2, 4.0, noise=0.1, chain="random", seed=3),
    rg.HiddenMarkovTask.noisy(2, 15.0, 0.3),
    rg.HiddenMarkovTask.noisy(3, 2.0, 0.0)])
def test_relevant_context_matches_brute_force_enumeration(task):
    """Every influence against the posterior from the enumerated joint law of the same sampled
    sequences (R = 3, 7 tokens), to 1e-12; at noise 0 the task is a chain: context 1."""
    R, n = 3, 150
    c = rg.relevant_context(task, threshold=0.01, max_distance=R, n=n, seed=4)
    xs, px = brute_token_law(task.transition, task.hidden_stationary, task.emission, 2 * R + 1)
    x = task.sample(n, 2 * R + 1, seed=4)

    def centre(hide):
        mask = np.zeros_like(x, dtype=bool)
        mask[:, hide] = True
        return brute_posterior(xs, px, x, mask)[0][:, R]
    base = centre([R])
    ref = np.array([np.mean([total_variation(centre([R, R + side * r]), base).mean()
                             for side in (-1, 1)]) for r in range(1, R + 1)])
    np.testing.assert_allclose(c.influence, ref, rtol=0, atol=1e-12)
    above = np.flatnonzero(ref >= 0.01)
    assert c.length == (above[-1] + 1 if above.size else 0)
    if task.noise == 0.0:
        assert c.length == 1 and np.all(ref[1:] < 1e-12)


def test_relevant_context_bad_input():
    task = rg.HiddenMarkovTask.noisy(4, 2.0, 0.1)
    with pytest.raises(TypeError, match="task"):
        rg.relevant_context(np.eye(4))
    with pytest.raises(ValueError, match="threshold"):
        rg.relevant_context(task, threshold=0.0)
    with pytest.raises(ValueError, match="max_distance"):
        rg.relevant_context(task, max_distance=0)


def test_readme_relevant_context_table():
    """Two cells of the README's table, recomputed at the documented defaults."""
    import re
    from pathlib import Path
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    rows = {}
    for m in re.finditer(r"\| (0\.\d) \| (context ≥ 0\.01 \(tokens\)|decay length \(tokens\)) "
                         r"\|([^\n]*)\|", text):
        rows[m.group(1), m.group(2)[:5]] = [c.strip() for c in m.group(3).split("|")]
    assert len(rows) == 4
    for column, xi in ((0, 1.0), (3, 7.0)):
        c = rg.relevant_context(rg.HiddenMarkovTask.noisy(8, xi, 0.3))
        assert rows["0.3", "conte"][column] == str(c.length)
        assert rows["0.3", "decay"][column] == "%.2f" % c.decay_length
