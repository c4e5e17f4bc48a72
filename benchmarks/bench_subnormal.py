"""Training steps of a network with switched-off hidden units, against a fresh one, and a
NumPy sgemm with subnormal operands against normal ones: what subnormals cost, and that
rgflow's kernels (which flush them, pool.h) do not pay it.

    PYTHONPATH=. python benchmarks/bench_subnormal.py [--steps 20] [--bias -13]
"""
import argparse
import time

import numpy as np

import rgflow as rg


def step_ms(bias, steps):
    """ms per paper-size training step (one thread) with fc1 biases of 400 of each block's 512
    hidden units set to ``bias`` (None: the fresh network)."""
    model = rg.ResidualMLP(8, 32, 16, 512, 12, seed=0)
    if bias is not None:
        sd = {k: np.array(v) for k, v in model.state_dict().items()}
        for k in sd:
            if k.endswith("fc1.bias"):
                sd[k][:400] = bias
        model.load_state_dict(sd)
    chain = rg.MarkovChain.lazy(8, 7.0)
    rg.train(model, chain, 5, batch_size=128, lr=1e-4, progress=False, eval_every=0)
    t = time.perf_counter()
    rg.train(model, chain, steps, batch_size=128, lr=1e-4, progress=False, eval_every=0)
    return (time.perf_counter() - t) / steps * 1000


def sgemm_ms(subnormal):
    rng = np.random.default_rng(0)
    A = rng.standard_normal((4096, 512)).astype(np.float32)
    B = rng.standard_normal((512, 512)).astype(np.float32)
    if subnormal:
        A[:, :400] = np.float32(1e-40)
    A @ B
    t = time.perf_counter()
    for _ in range(3):
        A @ B
    return (time.perf_counter() - t) / 3 * 1000


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--bias", type=float, default=-13.0)
    args = ap.parse_args()
    rg.set_num_threads(1)
    info = rg.where_computed()
    print("OpenBLAS %s kernel, CPU %s, one thread" % (info["core"], info["cpu"]))
    print("NumPy sgemm 4096x512 @ 512x512: normal %.1f ms, 80%% of A subnormal %.1f ms"
          % (sgemm_ms(False), sgemm_ms(True)))
    print("rgflow paper-size step: fresh %.1f ms, 400/512 units per block at bias %g: %.1f ms"
          % (step_ms(None, args.steps), args.bias, step_ms(args.bias, args.steps)))


if __name__ == "__main__":
    main()
