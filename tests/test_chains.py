"""Chains: RNG, construction, spectrum, stationary law, sampling, masking and the exact
posterior, each against an independent reference (NumPy/SciPy, brute-force enumeration)."""
import itertools
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
import scipy.linalg
from scipy import stats

import rgflow as rg
from rgflow import _core
from conftest import random_stochastic


# --------------------------------------------------------------------------------------------
# RNG


def test_philox_known_answers():
    # Random123's kat_vectors for philox4x32_10
    assert _core.philox4x32_10((0, 0, 0, 0), (0, 0)) == (
        0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)
    assert _core.philox4x32_10((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2) == (
        0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)
    assert _core.philox4x32_10((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
                               (0xA4093822, 0x299F31D0)) == (
        0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)


# --------------------------------------------------------------------------------------------
# Construction, stationary law and spectrum


@pytest.mark.parametrize("V", [2, 3, 8, 50])
def test_stationary_and_spectrum_match_numpy(rng, V):
    T = random_stochastic(rng, V, zeros=0.3 if V > 3 else 0.0)
    chain = rg.MarkovChain(T)
    pi = chain.stationary
    np.testing.assert_allclose(pi @ T, pi, atol=1e-15, rtol=0)
    assert abs(pi.sum() - 1) < 1e-14
    w, vl = np.linalg.eig(T.T)
    ref = np.real(vl[:, np.argmin(abs(w - 1))])
    np.testing.assert_allclose(pi, ref / ref.sum(), rtol=1e-10, atol=1e-14)
    ev_ref = np.linalg.eigvals(T)
    ev = chain.eigenvalues
    assert np.all(np.diff(np.abs(ev)) <= 1e-12)  # sorted by decreasing modulus
    np.testing.assert_allclose(np.sort_complex(ev), np.sort_complex(ev_ref), atol=1e-12)
    assert abs(ev[0] - 1) < 1e-12
    xi_ref = -1 / np.log(np.sort(np.abs(ev_ref))[-2])
    assert chain.correlation_length == pytest.approx(xi_ref, rel=1e-10)


def test_stationary_gth_is_accurate_for_nearly_decomposable_chain():
    # two blocks coupled by eps: pi is known in closed form; naive eigen-solvers lose digits
    eps = 1e-13
    T = np.array([[1 - eps, eps, 0.0], [0.0, 0.5, 0.5], [eps, 0.0, 1 - eps]])
    # balance: pi0*eps = pi2*eps (flow 2->0), pi0*eps = pi1*0.5, pi1*0.5 = pi2*eps
    raw = np.array([1.0, 2 * eps, 1.0])
    chain = rg.MarkovChain(T)
    np.testing.assert_allclose(chain.stationary, raw / raw.sum(), rtol=1e-14)


def test_transient_states_get_zero_mass():
    T = np.array([[0.5, 0.5, 0.0], [0.0, 0.2, 0.8], [0.0, 0.6, 0.4]])
    pi = rg.MarkovChain(T).stationary
    assert pi[0] == 0.0
    np.testing.assert_allclose(pi[1:], [0.6 / 1.4, 0.8 / 1.4], rtol=1e-14)


@pytest.mark.parametrize("V", [2, 8, 64])
@pytest.mark.parametrize("xi", [0.25, 1.0, 7.0, 100.0])
def test_lazy_and_random_have_the_requested_correlation_length(V, xi):
    lazy = rg.MarkovChain.lazy(V, xi)
    assert lazy.correlation_length == pytest.approx(xi, rel=1e-9)
    lam = np.exp(-1 / xi)
    np.testing.assert_allclose(lazy.eigenvalues[1:].real, lam, rtol=1e-9)
    rand = rg.MarkovChain.random(V, xi, seed=7)
    assert rand.correlation_length == pytest.approx(xi, rel=1e-9)
    ev = np.linalg.eigvals(rand.transition)
    mods = np.sort(np.abs(ev))[::-1]
    assert mods[1] == pytest.approx(lam, rel=1e-10)
    if V <= 8:  # non-degenerate spectrum (gaps well above rounding)
        assert np.min(np.diff(np.sort(ev.real))) > 1e-6
    # reversible w.r.t. its stationary law
    pi = rand.stationary
    F = pi[:, None] * rand.transition
    np.testing.assert_allclose(F, F.T, atol=1e-15)


def test_correlation_length_limits():
    iid = rg.MarkovChain.lazy(4, 0.0)
    assert iid.correlation_length == 0.0
    periodic = rg.MarkovChain(np.array([[0.0, 1.0], [1.0, 0.0]]))
    assert periodic.correlation_length == float("inf")
    np.testing.assert_allclose(periodic.stationary, [0.5, 0.5])


def birth_death(V, up, down):
    """Reflecting birth-death chain: i -> i+1 w.p. up, i -> i-1 w.p. down; the end states keep
    the move they cannot make as a self-loop (T[0, 0] = 1 - up, T[V-1, V-1] = 1 - down)."""
    T = np.diag(np.full(V - 1, up), 1) + np.diag(np.full(V - 1, down), -1)
    T[np.diag_indices(V)] = 1.0 - T.sum(axis=1)
    return T


def birth_death_spectrum(V, up, down):
    """1 and 1 - up - down + 2 sqrt(up down) cos(pi k / V), k = 1..V-1.  In the symmetrised
    S = D^1/2 T D^-1/2 (off-diagonal b = sqrt(up down)) v_j = sin((j+1) t) - r sin(j t),
    r = sqrt(down / up), solves the interior rows for mu = 1 - up - down + 2 b cos t and row 0
    (which needs v_-1 = r v_0); row V-1 (v_V = v_{V-1} / r) then requires
    sin(V t) (2 r cos t - 1 - r^2) = 0: t = pi k / V, or cos t = (1 + r^2) / (2 r), i.e. mu = 1."""
    k = np.arange(1, V)
    return np.concatenate([[1.0], 1 - up - down + 2 * np.sqrt(up * down) * np.cos(np.pi * k / V)])


@pytest.mark.parametrize("up,down", [(0.2, 0.7), (0.6, 0.3)])
@pytest.mark.parametrize("V", [60, 200, 500, 1000])
def test_birth_death_spectrum_matches_closed_form(V, up, down):
    # pi_k ~ (up/down)^k spans 30 to 270 orders of magnitude (V = 60..500; at V = 1000 its tail
    # underflows to 0): T is far from normal, and dgeev gave xi = 11.77 for 6.0756 at V = 200
    T = birth_death(V, up, down)
    chain = rg.MarkovChain(T)
    exact = birth_death_spectrum(V, up, down)
    xi = -1 / np.log(np.sort(np.abs(exact))[-2])
    assert chain.correlation_length == pytest.approx(xi, rel=1e-10)
    ev = chain.eigenvalues
    assert np.all(ev.imag == 0.0)
    np.testing.assert_allclose(np.sort(ev.real), np.sort(exact), rtol=0, atol=1e-13)
    assert chain.reversible
    if V <= 500:  # GTH: pi to a few ulps against the exact law of the float64 entries
        a, b = Fraction(T[0, 1]) / Fraction(T[1, 0]), 1  # up/down = a/b in lowest terms
        a, b = a.numerator, a.denominator
        weights = [a ** k * b ** (V - 1 - k) for k in range(V)]  # exact integers
        total = sum(weights)
        np.testing.assert_allclose(chain.stationary, [w / total for w in weights],  # int / int
                                   rtol=1e-13, atol=0)                             # rounds once


@pytest.mark.parametrize("V", [2, 8, 64])
@pytest.mark.parametrize("xi", [0.25, 1.0, 7.0, 100.0])
def test_lazy_and_random_spectra_unchanged_and_real(V, xi):
    # these chains are reversible and well conditioned, so the general solver (numpy's dgeev,
    # what the chains used before) is accurate: the symmetric one must agree, and be real
    spread = 0.5 ** np.arange(V)
    for chain in (rg.MarkovChain.lazy(V, xi), rg.MarkovChain.random(V, xi, seed=7),
                  rg.MarkovChain.lazy(V, xi, stationary=spread / spread.sum()),
                  rg.MarkovChain.random(V, xi, seed=1, stationary=spread / spread.sum())):
        ev = chain.eigenvalues
        ref = np.linalg.eigvals(chain.transition)
        assert np.abs(ref.imag).max() < 1e-12
        np.testing.assert_allclose(ev.real, np.sort(ref.real)[::-1], rtol=0, atol=1e-12)
        assert chain.correlation_length == pytest.approx(xi, rel=1e-10)
        assert np.all(ev.imag == 0.0)
        assert chain.reversible


def test_non_reversible_chain_keeps_the_general_solver():
    # a biased walk on a ring: symmetric support and uniform pi, but 0.6^V != 0.3^V around the
    # ring (Kolmogorov's criterion fails); circulant, hence normal, with eigenvalues
    # 0.1 + 0.6 w^k + 0.3 w^-k, w = exp(2 pi i / V)
    V = 12
    T = 0.1 * np.eye(V) + 0.6 * np.roll(np.eye(V), 1, axis=1) + 0.3 * np.roll(np.eye(V), -1, axis=1)
    chain = rg.MarkovChain(T)
    w = np.exp(2j * np.pi * np.arange(V) / V)
    exact = 0.1 + 0.6 * w + 0.3 / w
    ev = chain.eigenvalues
    assert np.abs(ev.imag).max() > 0.1
    np.testing.assert_allclose(np.sort_complex(ev), np.sort_complex(exact), rtol=0, atol=1e-14)
    assert chain.correlation_length == pytest.approx(-1 / np.log(np.abs(exact[1])), rel=1e-12)
    assert not chain.reversible
    # a dense random chain: against SciPy's general solver
    T = random_stochastic(np.random.default_rng(3), 40)
    chain = rg.MarkovChain(T)
    np.testing.assert_allclose(np.sort_complex(chain.eigenvalues),
                               np.sort_complex(scipy.linalg.eigvals(T)), rtol=0, atol=1e-13)
    assert not chain.reversible


def test_reversibility_decision():
    """Detailed balance within REVERSIBLE_TOL = 1e-12 (relative) picks the symmetric solver;
    the spectrum is then within REVERSIBLE_TOL / 2 of the exact one."""
    assert rg.chains.REVERSIBLE_TOL == 1e-12
    base = rg.MarkovChain.random(8, 3.0, seed=5).transition
    for delta, reversible in [(5e-13, True), (2e-12, False), (1e-6, False)]:
        T = base.copy()
        T[0, 1] *= 1 + delta  # pi_0 T_01 vs pi_1 T_10 now off by delta (relative)
        T[0, 0] -= T[0, 1] - base[0, 1]
        chain = rg.MarkovChain(T)
        assert chain.reversible is reversible, delta
        ref = np.linalg.eigvals(T)  # well conditioned: accurate to ~1e-15
        np.testing.assert_allclose(np.sort(chain.eigenvalues.real), np.sort(ref.real),
                                   rtol=0, atol=0.5 * rg.chains.REVERSIBLE_TOL + 1e-14)
    # a tree of transitions (here a star with arbitrary rates) always balances
    rng = np.random.default_rng(0)
    star = np.zeros((6, 6))
    star[0, 1:], star[1:, 0] = rng.dirichlet(np.ones(5)) * 0.9, rng.random(5)
    star[np.diag_indices(6)] = 1.0 - star.sum(axis=1)
    assert rg.MarkovChain(star).reversible
    # a one-way transition: transient state 0 never balances
    transient = np.array([[0.5, 0.5, 0.0], [0.0, 0.2, 0.8], [0.0, 0.6, 0.4]])
    chain = rg.MarkovChain(transient)
    assert not chain.reversible
    np.testing.assert_allclose(chain.eigenvalues.real, [1.0, 0.5, -0.4], rtol=0, atol=1e-15)
    # periodic: balanced, eigenvalues +-1
    chain = rg.MarkovChain([[0.0, 1.0], [1.0, 0.0]])
    assert chain.reversible
    np.testing.assert_array_equal(chain.eigenvalues, [1.0, -1.0])
    # the kernel's contract: a NaN tolerance accepts nothing
    assert _core.chain_eigenvalues(base, 1e-12)[1] is True
    assert _core.chain_eigenvalues(base, float("nan"))[1] is False


def test_xi_beyond_float64_is_rejected_like_inf():
    # lam = exp(-1/xi) within SPECTRAL_TOL of 1 reads as xi = inf: 1e13 used to be accepted
    # (and reported inf) while inf was rejected
    for make in (rg.MarkovChain.lazy, rg.MarkovChain.random):
        for xi in (float("inf"), 1e13, 2 * rg.chains.XI_MAX):
            with pytest.raises(ValueError, match="xi must be at most 1e\\+11"):
                make(4, xi)
        # at the limit 1 - lam = 1e-11, and an eigenvalue known to ~V eps ~ 1e-15 gives xi to
        # ~1e-4 relative, whatever the BLAS kernel (Haswell: 3.3e-5, SkylakeX: 8e-8)
        chain = make(4, rg.chains.XI_MAX)
        assert chain.correlation_length == pytest.approx(1e11, rel=2e-4)
    with pytest.raises(ValueError, match="xi"):
        rg.experiments.Config(xi=1e13)


def test_entropy_rate_and_unigram_entropy():
    chain = rg.MarkovChain([[0.9, 0.1], [0.2, 0.8]])
    pi = np.array([2 / 3, 1 / 3])
    h = lambda p: -sum(x * np.log(x) for x in p)
    assert chain.entropy_rate == pytest.approx(pi[0] * h([0.9, 0.1]) + pi[1] * h([0.2, 0.8]),
                                               rel=1e-14)
    assert chain.unigram_entropy == pytest.approx(h(pi), rel=1e-14)
    assert rg.MarkovChain.lazy(8, 0.0).entropy_rate == pytest.approx(np.log(8), rel=1e-14)


def test_stationary_argument_is_checked():
    T = np.array([[0.9, 0.1], [0.2, 0.8]])
    rg.MarkovChain(T, stationary=[2 / 3, 1 / 3])
    with pytest.raises(ValueError, match="stationary"):
        rg.MarkovChain(T, stationary=[0.5, 0.5])
    with pytest.raises(ValueError, match="stationary"):
        rg.MarkovChain.lazy(3, 1.0, stationary=[0.5, 0.5])


# --------------------------------------------------------------------------------------------
# Sampling


def test_sample_transition_counts_chi_square():
    chain = rg.MarkovChain.random(6, 2.0, seed=11)
    tok = chain.sample(4000, 50, seed=3)
    assert tok.dtype == np.int32 and tok.shape == (4000, 50)
    V = chain.n_states
    counts = np.zeros((V, V))
    np.add.at(counts, (tok[:, :-1].ravel(), tok[:, 1:].ravel()), 1)
    for i in range(V):
        expected = counts[i].sum() * chain.transition[i]
        chi2, p = stats.chisquare(counts[i], expected)
        assert p > 1e-4, (i, chi2, p)


def test_sample_marginal_is_stationary_at_every_position():
    chain = rg.MarkovChain.random(5, 3.0, seed=2)
    tok = chain.sample(20000, 8, seed=5)
    for t in range(tok.shape[1]):
        counts = np.bincount(tok[:, t], minlength=5)
        _, p = stats.chisquare(counts, 20000 * chain.stationary)
        assert p > 1e-4, (t, p)


def test_sample_reproducible_prefix_stable_and_thread_independent():
    chain = rg.MarkovChain.lazy(8, 1.5)
    a = chain.sample(10, 17, seed=9)
    np.testing.assert_array_equal(a, chain.sample(10, 17, seed=9))
    np.testing.assert_array_equal(a[:5], chain.sample(5, 17, seed=9))
    assert not np.array_equal(a, chain.sample(10, 17, seed=10))
    big = chain.sample(1001, 17, seed=9)
    np.testing.assert_array_equal(big, chain.sample(1001, 17, seed=9, n_threads=2))
    np.testing.assert_array_equal(big, chain.sample(1001, 17, seed=9, n_threads=7))
    chunks = [_core.chain_sample(chain.transition, chain.stationary, e - s, 17, 9, first=s)
              for s, e in [(0, 1), (1, 400), (400, 1001)]]
    np.testing.assert_array_equal(big, np.concatenate(chunks))
    gen_seeded = chain.sample(4, 3, seed=np.random.default_rng(0))
    assert gen_seeded.shape == (4, 3)


def test_sample_same_in_a_fresh_process(tmp_path):
    code = ("import rgflow as rg; c = rg.MarkovChain.lazy(8, 1.0); "
            "print(c.sample(3, 6, seed=42).tolist())")
    # cwd elsewhere: from the repo root, `python -c` would import the uncompiled source tree
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=tmp_path).stdout
    assert eval(out) == rg.MarkovChain.lazy(8, 1.0).sample(3, 6, seed=42).tolist()


def test_zero_probability_states_never_sampled():
    T = np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    chain = rg.MarkovChain(T)
    tok = chain.sample(500, 30, seed=1)
    pairs = set(zip(tok[:, :-1].ravel().tolist(), tok[:, 1:].ravel().tolist()))
    assert pairs <= {(0, 0), (0, 1), (1, 2), (2, 0)}


# --------------------------------------------------------------------------------------------
# Masking


def test_mask_tokens_rate_minimum_and_ids():
    tok = rg.MarkovChain.lazy(8, 1.0).sample(5000, 32, seed=0)
    masked, mask = rg.mask_tokens(tok, rate=0.15, seed=1, mask_id=8)
    assert masked.dtype == np.int32 and mask.dtype == np.bool_
    assert mask.any(axis=1).all()
    assert (masked[mask] == 8).all() and (masked[~mask] == tok[~mask]).all()
    # P(no mask in 32) = 0.85^32 = 0.0055 adds one: expected fraction 0.15 + 0.0055/32
    expected = 0.15 + 0.85 ** 32 / 32
    sd = np.sqrt(0.15 * 0.85 / mask.size)
    assert abs(mask.mean() - expected) < 5 * sd
    m2, k2 = rg.mask_tokens(tok, rate=0.15, seed=1, mask_id=8)
    np.testing.assert_array_equal(mask, k2)
    _, k3 = rg.mask_tokens(tok[:7], rate=0.15, seed=1, mask_id=8)
    np.testing.assert_array_equal(mask[:7], k3)


def test_mask_rate_zero_masks_exactly_one_and_rate_one_masks_all():
    tok = np.zeros((300, 10), dtype=np.int64)
    _, mask = rg.mask_tokens(tok, rate=0.0, seed=0, mask_id=3)
    assert (mask.sum(axis=1) == 1).all()
    counts = np.bincount(np.argmax(mask, axis=1), minlength=10)
    assert counts.min() > 10  # the forced position is spread over the sequence
    _, mask = rg.mask_tokens(tok, rate=1.0, seed=0, mask_id=3)
    assert mask.all()


def test_mask_spans_are_contiguous_runs():
    tok = np.zeros((2000, 40), dtype=np.int32)
    _, mask = rg.mask_tokens(tok, rate=0.3, seed=4, mask_id=8, span=4)
    assert mask.any(axis=1).all()
    # every run of masked positions not touching the end is at least 4 long
    m = mask.astype(np.int8)
    d = np.diff(np.pad(m, ((0, 0), (1, 1))), axis=1)
    for row in range(200):
        starts = np.flatnonzero(d[row] == 1)
        ends = np.flatnonzero(d[row] == -1)
        for s, e in zip(starts, ends):
            assert e - s >= 4 or e == 40
    assert abs(mask.mean() - 0.3) < 0.05  # overlaps and the end clip lower it a little


# --------------------------------------------------------------------------------------------
# Posterior: brute force over all completions


def brute_posterior(T, pi, tokens, mask):
    V = T.shape[0]
    n, L = tokens.shape
    out = np.zeros((n, L, V))
    for i in range(n):
        hidden = np.flatnonzero(mask[i])
        total = 0.0
        for fill in itertools.product(range(V), repeat=len(hidden)):
            x = tokens[i].copy()
            x[hidden] = fill
            p = pi[x[0]] * np.prod(T[x[:-1], x[1:]])
            total += p
            out[i, np.arange(L), x] += p
        out[i] /= total
    return out


@pytest.mark.parametrize("V,L", [(2, 1), (2, 6), (3, 5), (3, 6)])
def test_posterior_matches_brute_force(rng, V, L):
    for trial in range(4):
        T = random_stochastic(rng, V, zeros=0.2 if V == 3 else 0.0)
        chain = rg.MarkovChain(T)
        tok = chain.sample(12, L, seed=trial)
        masked, mask = rg.mask_tokens(tok, rate=0.5, seed=trial, mask_id=V)
        mask[0] = True  # one sequence fully hidden: posterior = stationary marginals
        masked[0] = V
        post = chain.posterior(masked, mask)
        ref = brute_posterior(T, chain.stationary, np.where(mask, 0, masked), mask)
        np.testing.assert_allclose(post, ref, rtol=0, atol=1e-12)
        np.testing.assert_allclose(post[0], np.tile(chain.stationary, (L, 1)), atol=1e-12)


def test_posterior_is_underflow_safe_on_long_sequences():
    chain = rg.MarkovChain.random(4, 2.0, seed=1)
    tok = chain.sample(3, 5000, seed=2)
    masked, mask = rg.mask_tokens(tok, rate=0.5, seed=3, mask_id=4)
    post = chain.posterior(masked, mask)
    assert np.isfinite(post).all()
    np.testing.assert_allclose(post.sum(axis=2), 1.0, atol=1e-12)
    # locality: far-away evidence cannot matter, so a window gives the same answer
    window = chain.posterior(masked[:, 2000:2100], mask[:, 2000:2100])
    inner = slice(40, 60)
    np.testing.assert_allclose(post[:, 2000:2100][:, inner], window[:, inner], atol=1e-9)


def test_posterior_rejects_impossible_observations():
    T = np.array([[0.0, 1.0], [1.0, 0.0]])
    chain = rg.MarkovChain(T)
    tok = np.array([[0, 0, 1]], dtype=np.int32)
    mask = np.array([[False, False, True]])
    with pytest.raises(ValueError, match="probability zero"):
        chain.posterior(tok, mask)


def test_bayes_loss_limits():
    n, L = 400, 32
    # xi = 0, uniform pi: the posterior is pi, so the loss is exactly log V = H(pi)
    iid = rg.MarkovChain.lazy(8, 0.0)
    tok = iid.sample(n, L, seed=1)
    _, mask = rg.mask_tokens(tok, rate=0.15, seed=2, mask_id=8)
    assert iid.bayes_loss(tok, mask) == pytest.approx(np.log(8), rel=1e-13)
    # xi = 0, non-uniform pi: the loss is the empirical mean of -log pi at masked tokens
    pi = np.array([0.5, 0.3, 0.15, 0.05])
    iid = rg.MarkovChain.lazy(4, 0.0, stationary=pi)
    tok = iid.sample(n, L, seed=1)
    _, mask = rg.mask_tokens(tok, rate=0.15, seed=2, mask_id=4)
    assert iid.bayes_loss(tok, mask) == pytest.approx(-np.log(pi[tok[mask]]).mean(), rel=1e-13)
    # xi -> inf: neighbours determine the masked token, the loss -> 0
    losses = []
    for xi in [1.0, 10.0, 100.0, 1e4]:
        chain = rg.MarkovChain.lazy(8, xi)
        tok = chain.sample(n, L, seed=1)
        _, mask = rg.mask_tokens(tok, rate=0.15, seed=2, mask_id=8)
        losses.append(chain.bayes_loss(tok, mask))
    assert all(a > b for a, b in zip(losses, losses[1:]))
    assert losses[-1] < 2e-3


def test_bayes_loss_equals_mean_of_posterior_log_probability():
    chain = rg.MarkovChain.random(8, 3.0, seed=4)
    tok = chain.sample(300, 20, seed=1)
    masked, mask = rg.mask_tokens(tok, rate=0.2, seed=2, mask_id=8)
    post = chain.posterior(masked, mask)
    ref = -np.log(np.take_along_axis(post, tok[..., None], axis=2)[..., 0][mask]).mean()
    assert chain.bayes_loss(tok, mask) == pytest.approx(ref, rel=1e-13)


# --------------------------------------------------------------------------------------------
# Bad input: TypeError/ValueError naming the argument, never a crash


GOOD_T = np.array([[0.9, 0.1], [0.2, 0.8]])


@pytest.mark.parametrize("T,exc,match", [
    (np.array([[0.9, 0.1], [0.2, 0.8]], dtype=complex), TypeError, "transition"),
    (np.array([[True, False], [False, True]]), TypeError, "transition"),
    (np.array([["a", "b"], ["c", "d"]]), TypeError, "transition"),
    (np.array([0.5, 0.5]), ValueError, "transition"),
    (np.ones((2, 3)) / 3, ValueError, "square"),
    (np.ones((1, 1)), ValueError, "between 2"),
    (np.array([[0.9, np.nan], [0.2, 0.8]]), ValueError, "non-finite"),
    (np.array([[0.9, np.inf], [0.2, 0.8]]), ValueError, "non-finite"),
    (np.array([[1.1, -0.1], [0.2, 0.8]]), ValueError, r"transition\[0, 1\]"),
    (np.array([[0.9, 0.1], [0.2, 0.7]]), ValueError, "row 1 sums"),
    (np.eye(3), ValueError, "closed classes"),
    (None, TypeError, "transition"),
    ("abc", TypeError, "transition"),
])
def test_bad_transition(T, exc, match):
    with pytest.raises(exc, match=match):
        rg.MarkovChain(T)


def test_transition_layouts_accepted():
    T = random_stochastic(np.random.default_rng(0), 5)
    ref = rg.MarkovChain(T)
    for variant in [np.asfortranarray(T), np.repeat(np.repeat(T, 2, 0), 2, 1)[::2, ::2],
                    T.tolist()]:
        np.testing.assert_array_equal(rg.MarkovChain(variant).transition, ref.transition)
    # float32 rows sum to 1 only to ~1e-7: rejected unless exactly representable
    with pytest.raises(ValueError, match="row 0 sums"):
        rg.MarkovChain(T.astype(np.float32))
    exact = np.array([[0.5, 0.5], [0.25, 0.75]], dtype=np.float32)
    np.testing.assert_array_equal(rg.MarkovChain(exact).transition, exact)
    ro = T.copy()
    ro.setflags(write=False)
    rg.MarkovChain(ro)
    chain = rg.MarkovChain(T)
    with pytest.raises(ValueError):
        chain.transition[0, 0] = 1.0  # exposed arrays are read-only


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(n=0, length=5), ValueError, "n must be"),
    (dict(n=-3, length=5), ValueError, "n must be"),
    (dict(n=3, length=0), ValueError, "length must be"),
    (dict(n=3.0, length=5), TypeError, "n must be an int"),
    (dict(n=3, length="5"), TypeError, "length must be an int"),
    (dict(n=2**40, length=2**40), ValueError, "too large"),
    (dict(n=3, length=5, seed=-1), ValueError, "seed"),
    (dict(n=3, length=5, seed=1.5), TypeError, "seed"),
    (dict(n=3, length=5, n_threads=0), ValueError, "n_threads"),
])
def test_bad_sample_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        rg.MarkovChain(GOOD_T).sample(**kwargs)


def test_bad_chain_constructor_arguments():
    for bad, exc in [(dict(n_states=1, xi=1.0), ValueError), (dict(n_states=2.5, xi=1.0), TypeError),
                     (dict(n_states=4, xi=-1.0), ValueError), (dict(n_states=4, xi=float("nan")), ValueError),
                     (dict(n_states=4, xi=float("inf")), ValueError), (dict(n_states=4, xi="1"), TypeError)]:
        with pytest.raises(exc, match="n_states|xi"):
            rg.MarkovChain.lazy(**bad)
        with pytest.raises(exc, match="n_states|xi"):
            rg.MarkovChain.random(**bad)


def test_bad_mask_arguments():
    tok = np.zeros((4, 6), dtype=np.int32)
    cases = [
        (dict(tokens=tok.astype(float), mask_id=8), TypeError, "tokens"),
        (dict(tokens=tok.astype(bool), mask_id=8), TypeError, "tokens"),
        (dict(tokens=tok[0], mask_id=8), ValueError, "tokens"),
        (dict(tokens=tok + 8, mask_id=8), ValueError, "tokens"),
        (dict(tokens=tok - 1, mask_id=8), ValueError, "tokens"),
        (dict(tokens=np.zeros((0, 6), np.int32), mask_id=8), ValueError, "tokens"),
        (dict(tokens=np.zeros((4, 0), np.int32), mask_id=8), ValueError, "tokens"),
        (dict(tokens=tok, mask_id=8, rate=1.5), ValueError, "rate"),
        (dict(tokens=tok, mask_id=8, rate=float("nan")), ValueError, "rate"),
        (dict(tokens=tok, mask_id=8, span=0), ValueError, "span"),
        (dict(tokens=tok, mask_id=0), ValueError, "mask_id"),
        (dict(tokens=tok), TypeError, "mask_id"),
        (dict(tokens=np.full((2, 2), 2**40), mask_id=8), ValueError, "tokens"),
        (dict(tokens=np.full((2, 2), 2**63, dtype=np.uint64), mask_id=8), ValueError, "tokens"),
    ]
    for kwargs, exc, match in cases:
        with pytest.raises(exc, match=match):
            rg.mask_tokens(**kwargs)


def test_mask_accepts_any_layout_and_integer_dtype():
    tok = rg.MarkovChain.lazy(8, 1.0).sample(6, 10, seed=0)
    ref = rg.mask_tokens(tok, 0.3, seed=1, mask_id=8)
    for variant in [np.asfortranarray(tok), tok.astype(np.uint8), tok.astype(np.int64),
                    np.repeat(tok, 2, axis=1)[:, ::2]]:
        out = rg.mask_tokens(variant, 0.3, seed=1, mask_id=8)
        np.testing.assert_array_equal(out[0], ref[0])
        np.testing.assert_array_equal(out[1], ref[1])


def test_bad_posterior_arguments():
    chain = rg.MarkovChain.lazy(3, 1.0)
    tok = chain.sample(4, 5, seed=0)
    masked, mask = rg.mask_tokens(tok, 0.3, seed=0, mask_id=3)
    cases = [
        ((masked.astype(float), mask), TypeError, "tokens"),
        ((masked, mask.astype(int)), TypeError, "mask"),
        ((masked, mask[:, :4]), ValueError, "mask"),
        ((masked[0], mask[0]), ValueError, "tokens"),
        ((masked + 4, mask), ValueError, "tokens"),
        ((np.full_like(masked, 3), np.zeros_like(mask)), ValueError, "tokens"),
        ((masked[:0], mask[:0]), ValueError, "tokens"),
    ]
    for args, exc, match in cases:
        with pytest.raises(exc, match=match):
            chain.posterior(*args)
        with pytest.raises(exc, match=match):
            chain.bayes_loss(*args)
    with pytest.raises(ValueError, match="tokens"):  # true tokens may not be the mask id
        chain.bayes_loss(masked, mask)
    with pytest.raises(ValueError, match="mask hides no token"):
        chain.bayes_loss(tok, np.zeros_like(mask))
    np.testing.assert_array_equal(chain.posterior(np.asfortranarray(masked), mask[:, ::-1][:, ::-1]),
                                  chain.posterior(masked, mask))


@pytest.mark.parametrize("reversible", [True, False])
def test_adjacent_loss_matches_brute_force_enumeration(rng, reversible):
    """The adjacent-token rule against conditionals of the joint law of every sequence of
    length 5 over V = 3 (started from pi): P(x_t | the visible ones of x_{t-1}, x_{t+1})."""
    V, L = 3, 5
    if reversible:
        chain = rg.MarkovChain.random(V, 2.0, seed=4)
    else:
        chain = rg.MarkovChain(random_stochastic(rng, V))
    T, pi = chain.transition, chain.stationary
    seqs = np.array(list(itertools.product(range(V), repeat=L)))
    prob = pi[seqs[:, 0]] * np.prod(T[seqs[:, :-1], seqs[:, 1:]], axis=1)
    tokens = chain.sample(6, L, seed=2)
    mask = np.zeros((6, L), dtype=bool)
    mask[0, 0] = mask[1, 4] = mask[2, [1, 2]] = mask[3, [2, 3, 4]] = True
    mask[4, 2] = mask[5, [0, 1, 3]] = True
    nll = []
    for n, t in zip(*np.nonzero(mask)):
        keep = np.ones(len(seqs), dtype=bool)
        for q in (t - 1, t + 1):
            if 0 <= q < L and not mask[n, q]:
                keep &= seqs[:, q] == tokens[n, q]
        cond = np.bincount(seqs[keep, t], weights=prob[keep], minlength=V)
        nll.append(-np.log(cond[tokens[n, t]] / cond.sum()))
    assert chain.adjacent_loss(tokens, mask) == pytest.approx(np.mean(nll), rel=1e-12)
    # per token, in np.nonzero(mask) order
    np.testing.assert_allclose(chain.adjacent_nll(tokens, mask), nll, rtol=1e-12)
    # the rule is the exact posterior when every masked token has visible neighbours
    lone = np.zeros((6, L), dtype=bool)
    lone[:, 2] = True
    assert chain.adjacent_loss(tokens, lone) == pytest.approx(chain.bayes_loss(tokens, lone),
                                                              rel=1e-12)


def test_adjacent_loss_rejects_bad_input():
    chain = rg.MarkovChain.lazy(4, 2.0)
    tokens = chain.sample(3, 6, seed=0)
    mask = np.zeros((3, 6), dtype=bool)
    mask[:, 2] = True
    for bad_t, bad_m, exc, match in [
            (tokens.astype(float), mask, TypeError, "tokens must be an integer"),
            (tokens[0], mask, ValueError, "tokens must have shape"),
            (tokens + 4, mask, ValueError, r"tokens must lie in \[0, 4\)"),
            (tokens, mask[:2], ValueError, "mask must have shape"),
            (tokens, mask * 2, TypeError, "mask must be a boolean"),
            (tokens, np.zeros_like(mask), ValueError, "mask hides no token")]:
        with pytest.raises(exc, match=match):
            chain.adjacent_loss(bad_t, bad_m)
    assert chain.adjacent_loss(tokens, mask.astype(np.uint8)) == chain.adjacent_loss(tokens, mask)
