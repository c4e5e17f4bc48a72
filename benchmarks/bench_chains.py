"""Sampling and posterior: rgflow's C kernels against the fastest NumPy code we could write.

Run: python benchmarks/bench_chains.py [--tokens 10000000]
Prints tokens/s for both samplers and the ratio (one thread each: OpenBLAS is not involved in
sampling, and NumPy's sampler is single-threaded), then posterior times.
"""
import argparse
import time

import numpy as np

import rgflow as rg


def numpy_sample_compare(cdf, pi_cdf, n, L, rng):
    """Vectorised over sequences, one step at a time: count CDF entries below u."""
    out = np.empty((n, L), dtype=np.int32)
    x = (rng.random(n)[:, None] >= pi_cdf[None, :-1]).sum(axis=1)
    out[:, 0] = x
    for t in range(1, L):
        u = rng.random(n)
        x = (u[:, None] >= cdf[x, :-1]).sum(axis=1)
        out[:, t] = x
    return out


def numpy_sample_searchsorted(cdf, pi_cdf, n, L, rng):
    """Vectorised over sequences, one step at a time: one searchsorted over all row CDFs
    laid end to end (row i shifted by i), so no (n, V) temporaries."""
    V = cdf.shape[0]
    flat = (cdf[:, :-1] + np.arange(V)[:, None]).ravel()
    offsets = np.arange(V) * (V - 1)
    out = np.empty((n, L), dtype=np.int32)
    x = np.searchsorted(pi_cdf[:-1], rng.random(n), side="right")
    out[:, 0] = x
    for t in range(1, L):
        x = np.searchsorted(flat, x + rng.random(n), side="right") - offsets[x]
        out[:, t] = x
    return out


def numpy_posterior(T, pi, tokens, mask, E=None):
    """Forward-backward over all sequences at once, normalised per step; with an emission E
    (H, V), over the hidden states, the token posterior then gamma @ E (one-hot where
    visible)."""
    n, L = tokens.shape
    H = T.shape[0]
    E_ = np.eye(H) if E is None else E
    vis = ~mask
    obs = np.ones((n, L, H))
    obs[vis] = E_[:, tokens[vis]].T          # P(visible token | state)
    alpha = np.empty((n, L, H))
    a = pi * obs[:, 0]
    alpha[:, 0] = a / a.sum(1, keepdims=True)
    for t in range(1, L):
        a = (alpha[:, t - 1] @ T) * obs[:, t]
        alpha[:, t] = a / a.sum(1, keepdims=True)
    b = np.ones((n, H))
    post = np.empty_like(alpha)
    post[:, -1] = alpha[:, -1]
    for t in range(L - 2, -1, -1):
        b = (obs[:, t + 1] * b) @ T.T
        b /= b.sum(1, keepdims=True)
        p = alpha[:, t] * b
        post[:, t] = p / p.sum(1, keepdims=True)
    if E is None:
        return post
    out = post @ E
    out[vis] = 0.0
    out[vis, tokens[vis]] = 1.0
    return out


def best_of(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=10_000_000)
    ap.add_argument("--length", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rg.show_config()
    chain = rg.MarkovChain.random(8, 2.0, seed=0)
    L = args.length
    n = args.tokens // L
    cdf = np.cumsum(chain.transition, axis=1)
    pi_cdf = np.cumsum(chain.stationary)
    rng = np.random.default_rng(0)

    t_rg, tok = best_of(lambda: chain.sample(n, L, seed=0), args.repeat)
    t_rg2, _ = best_of(lambda: chain.sample(n, L, seed=0, n_threads=2), args.repeat)
    t_cmp, _ = best_of(lambda: numpy_sample_compare(cdf, pi_cdf, n, L, rng), args.repeat)
    t_ss, ref = best_of(lambda: numpy_sample_searchsorted(cdf, pi_cdf, n, L, rng), args.repeat)
    t_np = min(t_cmp, t_ss)
    # sanity: both samplers give the same transition frequencies
    f = lambda x: np.bincount((x[:, :-1] * 8 + x[:, 1:]).ravel(), minlength=64) / x[:, 1:].size
    freq_diff = np.abs(f(tok) - f(ref)).max()
    N = n * L
    print("\nSampling %d tokens (V = 8, %d sequences x %d)" % (N, n, L))
    print("  rgflow, 1 thread      %8.3f s  %12.3e tokens/s" % (t_rg, N / t_rg))
    print("  rgflow, 2 threads     %8.3f s  %12.3e tokens/s" % (t_rg2, N / t_rg2))
    print("  NumPy compare-count   %8.3f s  %12.3e tokens/s" % (t_cmp, N / t_cmp))
    print("  NumPy searchsorted    %8.3f s  %12.3e tokens/s" % (t_ss, N / t_ss))
    print("  ratio rgflow(1 thread) / best NumPy: %.1fx (target >= 20x)" % (t_np / t_rg))
    print("  max |transition frequency difference|: %.2e" % freq_diff)

    n_post, L_post = 4096, 64
    tok = chain.sample(n_post, L_post, seed=1)
    masked, mask = rg.mask_tokens(tok, rate=0.15, seed=2, mask_id=8)
    t_post, post = best_of(lambda: chain.posterior(masked, mask), args.repeat)
    t_npost, ref = best_of(lambda: numpy_posterior(chain.transition, chain.stationary, tok, mask),
                           args.repeat)
    print("\nPosterior of %d x %d tokens (V = 8, 15%% masked)" % (n_post, L_post))
    print("  rgflow  %8.4f s" % t_post)
    print("  NumPy   %8.4f s" % t_npost)
    print("  ratio   %.1fx   max |difference| %.2e" % (t_npost / t_post, np.abs(post - ref).max()))

    task = rg.HiddenMarkovTask.noisy(8, 2.0, 0.3)
    tok = task.sample(n_post, L_post, seed=1)
    masked, mask = rg.mask_tokens(tok, rate=0.15, seed=2, mask_id=8)
    t_post, post = best_of(lambda: task.posterior(masked, mask), args.repeat)
    t_npost, ref = best_of(lambda: numpy_posterior(task.transition, task.hidden_stationary, tok,
                                                   mask, task.emission), args.repeat)
    print("\nHidden Markov posterior of %d x %d tokens (H = V = 8, noise 0.3, 15%% masked)"
          % (n_post, L_post))
    print("  rgflow  %8.4f s" % t_post)
    print("  NumPy   %8.4f s" % t_npost)
    print("  ratio   %.1fx   max |difference| %.2e" % (t_npost / t_post, np.abs(post - ref).max()))
    t_hs, _ = best_of(lambda: task.sample(n, L, seed=0), args.repeat)
    print("\nHidden Markov sampling of %d tokens: %.3e tokens/s (%.2fx the chain's time)"
          % (N, N / t_hs, t_hs / t_rg))


if __name__ == "__main__":
    main()
