"""One full training step (forward + backward + AdamW, batch 128) of rgflow vs PyTorch.

    python benchmarks/bench_train.py [--threads N] [--steps S] [--repeats R]

For each configuration it prints ms/step of rgflow's fused C loop (batch sampling and masking
included) and of the equivalent torch module (default torch.optim.AdamW, batch precomputed,
``torch.set_num_threads`` = rgflow's BLAS threads), their ratio, and rgflow's achieved GEMM
GFLOP/s next to the sgemm-bound rate: the same sgemm calls a step makes (same shapes and
transposes), timed through the very OpenBLAS library rgflow links (ctypes on
rgflow/libscipy_openblas.so, which the process already loaded). Times are the median over
repeats of (S steps) / S. Torch runs after rgflow in each configuration because torch's idle
OpenMP workers spin for a while after each op and would steal cores from OpenBLAS.
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

CONFIGS = {"a": dict(V=8, L=32, d=16, m=512, K=12), "b": dict(V=8, L=16, d=8, m=128, K=8)}
B = 128


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
            return lib, f
    return lib, None


def step_gemms(c):
    """(transA, transB, M, N, K, count) of every sgemm in one training step, row-major."""
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


def sgemm_bound_seconds(c, sgemm, repeats):
    """Time of the step's sgemm calls alone (sum over shapes of median time x count)."""
    total = 0.0
    for ta, tb, M, N, K, cnt in step_gemms(c):
        a = np.random.default_rng(0).standard_normal(M * K).astype(np.float32)
        b = np.random.default_rng(1).standard_normal(K * N).astype(np.float32)
        out = np.zeros(M * N, dtype=np.float32)
        lda = K if ta == 111 else M
        ldb = N if tb == 111 else K
        args = (101, ta, tb, M, N, K, 1.0, a.ctypes.data, lda, b.ctypes.data, ldb, 0.0,
                out.ctypes.data, N)
        inner = max(1, int(2e8 / (2.0 * M * N * K)))
        times = []
        for _ in range(repeats + 1):
            t = time.perf_counter()
            for _ in range(inner):
                sgemm(*args)
            times.append((time.perf_counter() - t) / inner)
        total += float(np.median(times[1:])) * cnt
    return total


def time_rgflow(c, steps, repeats):
    model = rg.ResidualMLP(c["V"], c["L"], c["d"], c["m"], c["K"], seed=0)
    chain = rg.MarkovChain.lazy(c["V"], 7.0)
    ws = model._workspace(B)
    times = []
    for r in range(repeats + 1):
        lrs = np.full(steps, 1e-4)
        t = time.perf_counter()
        _core.mlp_train_steps(model._cfg, model.params, model._grads, model._adam_m,
                              model._adam_v, ws, B, chain.transition, chain.stationary, 0,
                              model.step, lrs, 0.0, 0.0, 0.15, 1)
        times.append((time.perf_counter() - t) / steps)
        model.step += steps
    return float(np.median(times[1:])), model


def time_torch(c, model, steps, repeats, threads):
    import torch
    nn = torch.nn
    torch.set_num_threads(threads)
    D, L, d, V = c["L"] * c["d"], c["L"], c["d"], c["V"]

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln, self.fc1, self.fc2 = nn.LayerNorm(D), nn.Linear(D, c["m"]), nn.Linear(c["m"], D)

        def forward(self, z):
            return z + self.fc2(nn.functional.gelu(self.fc1(self.ln(z))))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok_emb = nn.Parameter(torch.zeros(V + 1, d))
            self.pos_emb = nn.Parameter(torch.zeros(L, d))
            self.blocks = nn.ModuleList(Block() for _ in range(c["K"]))
            self.ln_f = nn.LayerNorm(D)
            self.unembed = nn.Linear(d, V)

        def forward(self, x):
            z = (self.tok_emb[x] + self.pos_emb).reshape(x.shape[0], D)
            for b in self.blocks:
                z = b(z)
            return self.unembed(self.ln_f(z).reshape(x.shape[0], L, d))

    net = Net()
    net.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    chain = rg.MarkovChain.lazy(V, 7.0)
    t, x, mask = train_batch(chain, model, 0, batch_size=B)
    x, t, mask = (torch.from_numpy(x.astype(np.int64)), torch.from_numpy(t.astype(np.int64)),
                  torch.from_numpy(mask))

    def step():
        opt.zero_grad(set_to_none=True)
        logits = net(x)
        loss = nn.functional.cross_entropy(logits[mask], t[mask])
        loss.backward()
        opt.step()

    times = []
    for r in range(repeats + 1):
        tt = time.perf_counter()
        for _ in range(steps):
            step()
        times.append((time.perf_counter() - tt) / steps)
    return float(np.median(times[1:])), torch.__version__


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None, help="BLAS/torch threads (default: "
                   "rgflow's OpenBLAS default)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--configs", default="ab")
    a = p.parse_args()
    if a.threads:
        _core.blas_set_num_threads(a.threads)
    threads = rg.show_config(print_=False)["threads"]
    _, sgemm = blas_lib()
    try:
        import torch  # noqa: F401
        have_torch = True
    except ImportError:
        have_torch = False
    print("rgflow %s, BLAS threads %d, batch %d; sgemm bound via %s"
          % (rg.__version__, threads, B, "rgflow's OpenBLAS" if sgemm else "n/a"))
    rows = []
    for key in a.configs:
        c = CONFIGS[key]
        flops = gemm_flops(c)
        bound = sgemm_bound_seconds(c, sgemm, a.repeats) if sgemm else float("nan")
        t_rg, model = time_rgflow(c, a.steps, a.repeats)
        t_pt, ver = time_torch(c, model, a.steps, a.repeats, threads) if have_torch \
            else (float("nan"), None)
        rows.append((key, c, t_rg, t_pt, flops, bound))
        print("(%s) V=%d L=%d d=%d m=%d K=%d: rgflow %.2f ms/step, torch %s %.2f ms/step, "
              "ratio %.2fx | GEMM %.2f GFLOP/step: rgflow %.1f GFLOP/s, sgemm-bound %.1f "
              "GFLOP/s (%.2f ms) -> %.0f%% of bound"
              % (key, c["V"], c["L"], c["d"], c["m"], c["K"], 1e3 * t_rg, ver, 1e3 * t_pt,
                 t_pt / t_rg, flops / 1e9, flops / t_rg / 1e9, flops / bound / 1e9,
                 1e3 * bound, 100 * bound / t_rg))
    return rows


if __name__ == "__main__":
    main()
