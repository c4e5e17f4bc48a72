"""One full training step (forward + backward + AdamW) of rgflow vs PyTorch.

    python benchmarks/bench_train.py [--threads N] [--steps S] [--repeats R] [--configs abc]

For each configuration it prints ms/step of rgflow's fused C loop (batch sampling and masking
included) and of the equivalent torch module (default torch.optim.AdamW, batch precomputed,
``torch.set_num_threads`` = rgflow's BLAS threads), their ratio, and rgflow's achieved GEMM
GFLOP/s next to the sgemm-bound rate: the same sgemm calls a step makes (same shapes and
transposes), timed through the very OpenBLAS library rgflow links (ctypes on
rgflow/libscipy_openblas.so, which the process already loaded). Times are the minimum over
rounds of (S steps) / S (the machine may be shared: the minimum is the least disturbed
estimate; medians are printed too). The three timings are interleaved round by round, with a
0.3 s pause before each so that idle OpenBLAS / OpenMP workers stop spinning and do not steal
cores from the next measurement.
"""
import argparse
import ctypes
import glob
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

import rgflow as rg  # noqa: E402
from rgflow import _core  # noqa: E402
from rgflow.train import train_batch  # noqa: E402

# (a) the paper's size at batch 128, (b) a small network, (c) the paper size's recipe (batch
# 512, rgflow.report.CONFIGS["paper"]).
CONFIGS = {"a": dict(V=8, L=32, d=16, m=512, K=12, B=128),
           "b": dict(V=8, L=16, d=8, m=128, K=8, B=128),
           "c": dict(V=8, L=32, d=16, m=512, K=12, B=512)}


def blas_lib():
    path = glob.glob(os.path.join(ROOT, "rgflow", "libscipy_openblas*.so"))
    if not path:
        return None, None
    lib = ctypes.CDLL(path[0])
    for name in ("scipy_cblas_sgemm", "cblas_sgemm"):
        if hasattr(lib, name):
            f = getattr(lib, name)
            f.restype = None
            f.argtypes = [ctypes.c_int] * 6 + [ctypes.c_float, ctypes.c_void_p, ctypes.c_int,
                                               ctypes.c_void_p, ctypes.c_int, ctypes.c_float,
                                               ctypes.c_void_p, ctypes.c_int]
            prefix = "scipy_" if name.startswith("scipy_") else ""
            set_threads = getattr(lib, prefix + "openblas_set_num_threads")
            set_threads.argtypes = [ctypes.c_int]
            return set_threads, f
    return None, None


def step_gemms(c):
    """(transA, transB, M, N, K, count) of every sgemm in one training step, row-major."""
    B = c["B"]
    D, m, BL = c["L"] * c["d"], c["m"], B * c["L"]
    N, T = 111, 112  # CblasNoTrans, CblasTrans
    return [
        (N, T, B, m, D, c["K"]), (N, T, B, D, m, c["K"]),          # fc1, fc2 forward
        (T, N, D, m, B, c["K"]), (N, N, B, m, D, c["K"]),          # fc2 backward: dW, dinp
        (T, N, m, D, B, c["K"]), (N, N, B, D, m, c["K"]),          # fc1 backward: dW, dinp
        (N, T, BL, c["V"], c["d"], 1), (T, N, c["V"], c["d"], BL, 1),  # unembed fwd, dW
        (N, N, BL, c["d"], c["V"], 1),                             # unembed dinp
    ]


def gemm_flops(c):
    return sum(2.0 * M * N * K * cnt for _, _, M, N, K, cnt in step_gemms(c))


def sgemm_bound_runner(c, sgemm, set_threads, threads):
    """Returns f() -> seconds of the step's sgemm calls alone (each shape timed, x count), one
    call per GEMM on OpenBLAS's own threads (rgflow keeps that library single-threaded and
    resets it at its next kernel call)."""
    calls = []
    for ta, tb, M, N, K, cnt in step_gemms(c):
        a = np.random.default_rng(0).standard_normal(M * K).astype(np.float32)
        b = np.random.default_rng(1).standard_normal(K * N).astype(np.float32)
        out = np.zeros(M * N, dtype=np.float32)
        lda = K if ta == 111 else M
        ldb = N if tb == 111 else K
        args = (101, ta, tb, M, N, K, 1.0, a.ctypes.data, lda, b.ctypes.data, ldb, 0.0,
                out.ctypes.data, N)
        calls.append((args, cnt, max(1, int(5e7 / (2.0 * M * N * K))), (a, b, out)))

    def run():
        total = 0.0
        set_threads(threads)
        for args, cnt, inner, _ in calls:
            t = time.perf_counter()
            for _ in range(inner):
                sgemm(*args)
            total += (time.perf_counter() - t) / inner * cnt
        return total
    return run


def rgflow_runner(c, steps):
    model = rg.ResidualMLP(c["V"], c["L"], c["d"], c["m"], c["K"], seed=0)
    chain = rg.MarkovChain.lazy(c["V"], 7.0)
    B = c["B"]
    ws = model._workspace(B)
    lrs = np.full(steps, 1e-4)
    arenas = (model.params, model._grads, model._adam_m, model._adam_v)
    options = dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, max_grad_norm=0.0,
                   mask_rate=0.15, mask_span=1)

    def run():
        t = time.perf_counter()
        _core.mlp_train_steps(model.shape, arenas, ws, B, chain.transition, chain.stationary,
                              None, 0, model.step, lrs, options)
        model.step += steps
        return (time.perf_counter() - t) / steps
    return run, model


def torch_runner(c, model, steps, threads):
    import torch
    from rgflow.torch_ref import to_torch
    torch.set_num_threads(threads)
    V = c["V"]
    net = to_torch(model)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    chain = rg.MarkovChain.lazy(V, 7.0)
    t, x, mask = train_batch(chain, model, 0, batch_size=c["B"])
    x, t, mask = (torch.from_numpy(x.astype(np.int64)), torch.from_numpy(t.astype(np.int64)),
                  torch.from_numpy(mask))

    def run():
        tt = time.perf_counter()
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(net(x)[mask], t[mask])
            loss.backward()
            opt.step()
        return (time.perf_counter() - tt) / steps
    return run, torch.__version__


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None, help="rgflow/torch threads (default: "
                   "rgflow's default, the CPUs available)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--configs", default="abc")
    a = p.parse_args()
    if a.threads:
        rg.set_num_threads(a.threads)
    info = rg.where_computed()
    threads = info["threads"]
    set_threads, sgemm = blas_lib()
    try:
        import torch  # noqa: F401
        have_torch = True
    except ImportError:
        have_torch = False
    print("rgflow %s, threads %d; OpenBLAS %s kernel, CPU %s; sgemm bound via %s"
          % (rg.__version__, threads, info["core"], info["cpu"],
             "rgflow's OpenBLAS" if sgemm else "n/a"))
    rows = []
    for key in a.configs:
        c = CONFIGS[key]
        flops = gemm_flops(c)
        run_rg, model = rgflow_runner(c, a.steps)
        runners = {"rgflow": run_rg, "bound": sgemm_bound_runner(c, sgemm, set_threads, threads)}
        ver = None
        if have_torch:
            runners["torch"], ver = torch_runner(c, model, a.steps, threads)
        times = {k: [] for k in runners}
        for r in range(a.repeats + 1):          # interleaved rounds, round 0 is warm-up
            for k, run in runners.items():
                time.sleep(0.3)                 # let spinning BLAS/OpenMP workers go idle
                t = run()
                if r:
                    times[k].append(t)
        best = {k: min(v) for k, v in times.items()}
        med = {k: float(np.median(v)) for k, v in times.items()}
        t_rg, bound, t_pt = best["rgflow"], best["bound"], best.get("torch", float("nan"))
        rows.append((key, c, best, med, flops))
        print("(%s) V=%d L=%d d=%d m=%d K=%d B=%d: rgflow %.2f ms/step (median %.2f), torch %s "
              "%.2f ms/step (median %.2f), ratio %.2fx | GEMM %.3f GFLOP/step: rgflow %.1f "
              "GFLOP/s, sgemm-bound %.1f GFLOP/s (%.2f ms, median %.2f) -> %.0f%% of bound"
              % (key, c["V"], c["L"], c["d"], c["m"], c["K"], c["B"], 1e3 * t_rg,
                 1e3 * med["rgflow"], ver, 1e3 * t_pt, 1e3 * med.get("torch", float("nan")),
                 t_pt / t_rg,
                 flops / 1e9, flops / t_rg / 1e9, flops / bound / 1e9, 1e3 * bound,
                 1e3 * med["bound"], 100 * bound / t_rg))
    return rows


if __name__ == "__main__":
    main()
