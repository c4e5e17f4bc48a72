"""rgflow's analysis kernels against the plain NumPy way, in one process.

    PYTHONPATH=. python benchmarks/bench_analysis.py [--quick]

1. position-level rank profile of a (13, 2048, 32, 16) float32 stream vs a Python loop of
   np.linalg.svd over layers and positions;
2. stream-level profile ((13, 2048, 512)) vs np.linalg.svd per layer;
3. the full 13 x 13 linear-CKA matrix vs the n x n-Gram formula in NumPy, as CKA libraries
   write it (Kornblith et al.'s gram_linear / center_gram / cka): with every Gram computed
   once and cached, and with cka(gram_linear(X_i), gram_linear(X_j)) per pair.

Timings are the best of a few rounds in which rgflow and NumPy run alternately, so that both
see the same machine load (rgflow 5 rounds, 3 for CKA; NumPy 5 for the position loop, 3 for
the stream loop, 2 for the cached CKA matrix, 1 per pair); rgflow's plain rows use
``--threads`` threads (default 1, like single-threaded NumPy), and the 2-thread results are
checked bit-identical to the 1-thread ones.
Two streams: "gaussian" (i.i.d. N(0, 1): every matrix is well conditioned, so rgflow takes the
Gram route) and "graded" (feature j scaled by 10^(-4 j / d) within each position: every matrix
is ill-conditioned, so rgflow cannot use the Gram's eigenvalues; its equilibrated Gram is well
conditioned, so it takes the scaled Cholesky route), and
"trained": the (9, 2048, 16, 16) residual stream of the quick configuration's network after
2,000 steps of its recipe at xi = 7 (trained inside the benchmark, ~15 s), the real case.  Peak memory is measured
in fresh subprocesses as the rise of the resident high-water mark (VmHWM) over its value after
building the stream, so it counts NumPy's arrays and the C kernel's workspace alike.  (Not
ru_maxrss: Linux carries the parent's high-water mark into a forked child.)  The machine's
thread count for OpenBLAS (both NumPy's and rgflow's) follows OPENBLAS_NUM_THREADS.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

import rgflow as rg
from rgflow import _core

DEPTH1, N, LENGTH, WIDTH = 13, 2048, 32, 16


def trained_stream(n=N, steps=2000):
    """The residual stream of a trained network, the real case: the quick configuration's
    model (L 16, d 16, m 256, K 8) trained for ``steps`` steps of its recipe's schedule on the
    xi = 7 chain, on n held-out masked sequences: (9, n, 16, 16) float32."""
    from rgflow.experiments import make_chain, train_as
    from rgflow.report import CONFIGS
    config = CONFIGS["quick"].replace(xi=7.0)
    chain = make_chain(config)
    model = rg.ResidualMLP(config.n_states, config.length, config.width, config.hidden,
                           config.depth, seed=0)
    train_as(config, model, chain, steps=steps, progress=False)
    tokens = chain.sample(n, config.length, seed=123)
    masked, _ = rg.mask_tokens(tokens, rate=0.15, seed=124, mask_id=config.n_states)
    return model.residual_stream(masked)


def make_stream(kind, depth1=DEPTH1, n=N):
    if kind == "trained":
        return trained_stream(n)
    rng = np.random.default_rng(0)
    s = np.empty((depth1, n, LENGTH, WIDTH), dtype=np.float32)
    for l in range(depth1):  # layer by layer: no float64 temporary of the whole stream
        s[l] = rng.standard_normal((n, LENGTH, WIDTH), dtype=np.float32)
        s[l] += 0.5 * s[l - 1] if l else 0.0  # consecutive layers are related
    if kind == "graded":
        s *= (10.0 ** (-4.0 * np.arange(WIDTH) / WIDTH)).astype(np.float32)
    return s


# ---- the NumPy way ---------------------------------------------------------------------------

def np_erank(s):
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def np_position_profile(stream):
    out = np.empty(stream.shape[:1] + stream.shape[2:3])
    for l in range(stream.shape[0]):
        for p in range(stream.shape[2]):
            X = stream[l, :, p, :].astype(np.float64)
            X -= X.mean(axis=0)
            out[l, p] = np_erank(np.linalg.svd(X, compute_uv=False))
    return out.mean(axis=1)


def np_stream_profile(stream):
    out = np.empty(stream.shape[0])
    for l in range(stream.shape[0]):
        X = stream[l].reshape(stream.shape[1], -1).astype(np.float64)
        X -= X.mean(axis=0)
        out[l] = np_erank(np.linalg.svd(X, compute_uv=False))
    return out


def gram_linear(x):
    return x @ x.T


def center_gram(gram):
    gram = gram.copy()
    means = np.mean(gram, 0, dtype=np.float64)
    means -= np.mean(means) / 2
    gram -= means[:, None]
    gram -= means[None, :]
    return gram


def cka(gram_x, gram_y):
    gram_x, gram_y = center_gram(gram_x), center_gram(gram_y)
    return gram_x.ravel().dot(gram_y.ravel()) / (np.linalg.norm(gram_x) * np.linalg.norm(gram_y))


def np_cka_matrix_cached(stream):
    layers = [stream[l].reshape(stream.shape[1], -1).astype(np.float64)
              for l in range(stream.shape[0])]
    grams = [gram_linear(x) for x in layers]
    L = len(grams)
    M = np.eye(L)
    for i in range(L):
        for j in range(i + 1, L):
            M[i, j] = M[j, i] = cka(grams[i], grams[j])
    return M


def np_cka_matrix_per_pair(stream):
    L = stream.shape[0]
    X = lambda l: stream[l].reshape(stream.shape[1], -1).astype(np.float64)  # noqa: E731
    M = np.eye(L)
    for i in range(L):
        for j in range(i + 1, L):
            M[i, j] = M[j, i] = cka(gram_linear(X(i)), gram_linear(X(j)))
    return M


# ---- rgflow ----------------------------------------------------------------------------------

def make_tasks(threads):
    """The benchmark's tasks by name; the plain rgflow rows use ``threads`` (--threads)."""
    return {
        "position/rgflow": lambda s: rg.rank_profile(s, level="position", n_threads=threads),
        "position/rgflow-2threads": lambda s: rg.rank_profile(s, level="position", n_threads=2),
        "position/numpy": np_position_profile,
        "stream/rgflow": lambda s: rg.rank_profile(s, level="stream", n_threads=threads),
        "stream/rgflow-2threads": lambda s: rg.rank_profile(s, level="stream", n_threads=2),
        "stream/numpy": np_stream_profile,
        "cka/rgflow": lambda s: rg.cka_matrix(s, level="stream", n_threads=threads),
        "cka/rgflow-2threads": lambda s: rg.cka_matrix(s, level="stream", n_threads=2),
        "cka/numpy-cached": np_cka_matrix_cached,
        "cka/numpy-per-pair": np_cka_matrix_per_pair,
    }


def timed(fn, arg, repeat):
    best, out = np.inf, None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn(arg)
        best = min(best, time.perf_counter() - t)
    return best, out


def interleaved(ours, theirs, arg, rounds, theirs_rounds):
    """Best times of ours and theirs run alternately (ours every round, theirs in the first
    theirs_rounds), so that both see the same machine load."""
    best, outs = [np.inf, np.inf], [None, None]
    for r in range(rounds):
        for j, fn in enumerate((ours, theirs)):
            if j == 1 and r >= theirs_rounds:
                continue
            t, out = timed(fn, arg, 1)
            best[j], outs[j] = min(best[j], t), out
    return (best[0], outs[0]), (best[1], outs[1])


def vm_hwm_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def child(fn, kind):
    s = make_stream(kind)
    before = vm_hwm_kib()
    fn(s)
    print(json.dumps({"peak_mib": (vm_hwm_kib() - before) / 1024.0}))


def peak_mib(task, kind, threads):
    out = subprocess.run([sys.executable, __file__, "--child", task, "--kind", kind,
                          "--threads", str(threads)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout)["peak_mib"]


def routes(s):
    """How many matrices took each of rgflow's routes (rank.h: Gram eigenvalues, scaled
    Cholesky, CholeskyQR2, direct SVD)."""
    names = {0: "Gram", 3: "scaled Cholesky", 2: "CholeskyQR2", 1: "direct SVD"}
    parts = []
    for what, x in [("position", s.transpose(0, 2, 1, 3)),
                    ("stream", s.reshape(s.shape[0], s.shape[1], -1))]:
        r = _core.rank(x)[1].ravel()
        parts.append("%s: %s" % (what, ", ".join("%d %s" % ((r == code).sum(), name)
                                                  for code, name in names.items())))
    return "; ".join(parts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--child")
    ap.add_argument("--kind", default="gaussian")
    ap.add_argument("--quick", action="store_true", help="skip the slow per-pair CKA and the "
                    "graded and trained streams")
    ap.add_argument("--threads", type=int, default=1, help="rgflow's threads for the plain "
                    "rgflow rows (default 1, as single-threaded NumPy; the -2threads rows use 2 "
                    "and are checked bit-identical to these)")
    args = ap.parse_args()
    tasks = make_tasks(args.threads)
    if args.child:
        return child(tasks[args.child], args.kind)
    info = rg.where_computed()
    print("rgflow analysis benchmark; BLAS: %s (%s kernel, OpenBLAS threads: NumPy's follow "
          "OPENBLAS_NUM_THREADS=%s, rgflow's are always 1), rgflow threads %d for the plain rows"
          % (info["blas"], info["core"], os.environ.get("OPENBLAS_NUM_THREADS", "unset"),
             args.threads))
    kinds = ["gaussian"] if args.quick else ["gaussian", "graded", "trained"]
    rows = []
    for kind in kinds:
        s = make_stream(kind)
        print("\nstream %r %s: %s" % (kind, s.shape, routes(s)))
        square = "cka %dx%d" % (s.shape[0], s.shape[0])
        comparisons = [("position", "position/rgflow", "position/numpy", 5),
                       ("position", "position/rgflow-2threads", "position/numpy", 3),
                       ("stream", "stream/rgflow", "stream/numpy", 3),
                       (square, "cka/rgflow", "cka/numpy-cached", 2),
                       (square, "cka/rgflow-2threads", "cka/numpy-cached", 2)]
        if kind == "gaussian" and not args.quick:
            comparisons.append((square, "cka/rgflow", "cka/numpy-per-pair", 1))
        for what, ours, theirs, theirs_rounds in comparisons:
            # interleaved: rgflow best of 5 (3 for CKA), NumPy best of theirs_rounds
            rounds = max(3 if what.startswith("cka") else 5, theirs_rounds)
            (t1, r1), (t2, r2) = interleaved(tasks[ours], tasks[theirs], s, rounds,
                                             theirs_rounds)
            diff = float(np.max(np.abs(np.asarray(r1) - np.asarray(r2))))
            rows.append((kind, what, ours, theirs, t1, t2, t2 / t1, diff))
            print("  %-10s %-26s %8.3f s   %-20s %8.3f s   x%6.1f   max|diff| %.1e"
                  % (what, ours, t1, theirs, t2, t2 / t1, diff))
        for level in ("position", "stream", "cka"):
            one = (rg.cka_matrix(s, level="stream", n_threads=1) if level == "cka"
                   else rg.rank_profile(s, level=level, n_threads=1))
            two = tasks[level + "/rgflow-2threads"](s)
            print("  %-10s 1 and 2 rgflow threads bit-identical: %s"
                  % (level, "yes" if np.array_equal(one, two) else "NO"))
    print("\npeak memory above the loaded stream (fresh subprocess each, MiB):")
    for task in ("cka/rgflow", "cka/rgflow-2threads", "cka/numpy-cached", "stream/rgflow",
                 "stream/numpy",
                 "position/rgflow", "position/numpy"):
        print("  %-22s %8.1f" % (task, peak_mib(task, "gaussian", args.threads)))


if __name__ == "__main__":
    main()
