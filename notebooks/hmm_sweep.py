"""The runs behind issue 13's experiment: the paper's claims on tasks whose relevant context
grows with xi. At the small size, with the gated recipe (report.CONFIGS["quick"]), for
xi in {1, 2, 4, 7, 15} and 5 seeds: the plain lazy chain and the hidden-Markov task
HiddenMarkovTask.noisy at noise 0.1 and 0.3. Chain runs at xi = 1 and 7 are those of
notebooks/results/gated-small/ (the same configurations, so the same keys): they are read
from there, not trained again. Records go to notebooks/results/hmm-small/ (resumable;
finished runs are not recomputed; Ctrl-C keeps what finished).

    python notebooks/hmm_sweep.py [--workers 2] [--threads 1] [--seeds 5] [--first-seed 0]
                                  [--noise 0.1 0.3] [--xi 1 2 4 7 15]
"""
import argparse
from pathlib import Path

from rgflow.report import CONFIGS
from rgflow.sweep import grid, process_pool, sweep

RESULTS = Path(__file__).resolve().parent / "results"
STORE = RESULTS / "hmm-small"
XIS = [1.0, 2.0, 4.0, 7.0, 15.0]
NOISES = [0.1, 0.3]
GATED = {1.0, 7.0}   # xi of the chain runs already in gated-small


def configs(seeds=5, first_seed=0, xis=XIS, noises=NOISES):
    base = CONFIGS["quick"]
    seed = list(range(first_seed, first_seed + seeds))
    out = grid(base, xi=[x for x in xis if x not in GATED], seed=seed)
    for noise in noises:
        out += grid(base.replace(task="hmm", noise=noise), xi=list(xis), seed=seed)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1,
                    help="rgflow threads per run (results do not depend on it)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--xi", type=float, nargs="+", default=XIS)
    ap.add_argument("--noise", type=float, nargs="+", default=NOISES)
    args = ap.parse_args()
    with process_pool(args.workers) as ex:
        sweep(configs(args.seeds, args.first_seed, args.xi, args.noise), executor=ex,
              store=STORE, progress=True, blas_threads=args.threads)


if __name__ == "__main__":
    main()
