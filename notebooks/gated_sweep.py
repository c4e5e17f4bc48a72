"""The seeds behind the README's gated verdicts (issue 12): ξ ∈ {1, 7} × 10 seeds (and the
extra seeds of EXTRA_SEEDS) at the small size and at the paper's size, each with the
recipe the recipe study chose for it (rgflow.report.CONFIGS; notebooks/recipe_study.py):
cosine learning rate 3e-3 with 500 warm-up steps, for 30,000 steps of batch 128 at the small
size and 10,000 steps of batch 512 at the paper's size (~1 hour a run there, two at a time
on 2 cores; ~7 minutes at the small size). Every run stores every measure, its initialisation baseline, the flow during training, and the gate's
figures on 65,536 fresh sequences. Records go to notebooks/results/gated-<size>/ (resumable:
finished runs are not recomputed; Ctrl-C stops at the next chunk and keeps what finished).

    python notebooks/gated_sweep.py [--size small|paper] [--workers 2] [--seeds 10]
                                    [--first-seed 0] [--xi 1 7] [--threads N]

Two processes can share a store by taking disjoint seed ranges (--first-seed 5 --seeds 5).
"""
import argparse
from pathlib import Path

from rgflow.report import CONFIGS
from rgflow.findings import LONG_XI, SHORT_XI
from rgflow.sweep import grid, process_pool, sweep

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = {"small": CONFIGS["quick"], "paper": CONFIGS["paper"]}


def store(size):
    return RESULTS / ("gated-" + size)


# xi = 1 at the small size: seeds 0-9 left 7 networks through the gate (the adjacent-token rule
# binds), short of the 10 a verdict needs. Seeds 10-14 were then trained as one batch, all five
# fixed before any of them ran, and every one of the 15 runs is reported: (size, xi) -> seeds.
#
# xi = 7 at the paper's size: seeds 0-4 left 4 networks through the gate (seed 4 missed the
# floor by 0.0209 nats against the gate's 0.02), so seeds 0-9 can give at most 9. Seeds 10-14
# were fixed then, on 2026-12-06, before any of seeds 5-14 ran; all 15 runs are reported.
EXTRA_SEEDS = {("small", SHORT_XI): range(10, 15), ("paper", LONG_XI): range(10, 15)}


def configs(size, seeds=10, first_seed=0, xi=(SHORT_XI, LONG_XI)):
    return grid(SIZES[size], seed=list(range(first_seed, first_seed + seeds)), xi=list(xi))


def documented(size):
    """Every run of the documented sweep at ``size``: 10 seeds per xi, and EXTRA_SEEDS."""
    out = configs(size)
    for (at, xi), seeds in EXTRA_SEEDS.items():
        if at == size:
            out += grid(SIZES[size], seed=list(seeds), xi=[xi])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--xi", type=float, nargs="+", default=[SHORT_XI, LONG_XI])
    ap.add_argument("--threads", type=int, default=None,
                    help="rgflow threads per run (default: the machine's cores); results do "
                         "not depend on it")
    args = ap.parse_args()
    with process_pool(args.workers) as ex:
        sweep(configs(args.size, args.seeds, args.first_seed, args.xi), executor=ex,
              store=store(args.size), progress=True, blas_threads=args.threads)


if __name__ == "__main__":
    main()
