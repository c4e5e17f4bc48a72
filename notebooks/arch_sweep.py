"""The runs behind issue 14's comparison: the attention baseline (rgflow.torch.TransformerMLM,
Config(arch="transformer")) on the residual MLP's task and recipe at the small size
(report.CONFIGS["quick"]: per-token width 16, 8 blocks, feed-forward width 256; 30,000 cosine
steps), xi in {1, 7}, 5 seeds, each trained on exactly the batches of the MLP run with the
same seed in results/gated-small/. Records go to notebooks/results/transformer-small/
(resumable: finished runs are not recomputed, and a stopped run resumes from its last
checkpoint, every tenth of its steps, with the same PyTorch build and thread count).

    python notebooks/arch_sweep.py [--workers 2] [--seeds 5] [--first-seed 0] [--xi 1 7]
"""
import argparse
from pathlib import Path

from rgflow.findings import LONG_XI, SHORT_XI
from rgflow.report import CONFIGS
from rgflow.sweep import grid, process_pool, sweep

STORE = Path(__file__).resolve().parent / "results" / "transformer-small"


def configs(seeds=5, first_seed=0, xis=(SHORT_XI, LONG_XI)):
    return grid(CONFIGS["quick"].replace(arch="transformer"),
                seed=list(range(first_seed, first_seed + seeds)), xi=list(xis))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--xi", type=float, nargs="+", default=[SHORT_XI, LONG_XI])
    args = ap.parse_args()
    # one thread per run: run() gives PyTorch rgflow's thread count
    with process_pool(args.workers) as ex:
        sweep(configs(args.seeds, args.first_seed, args.xi), executor=ex, store=STORE,
              progress=True, blas_threads=1)


if __name__ == "__main__":
    main()
