"""What the plateau is (issue 12): seed 0 of the gated small-size sweep at ξ = 1 and ξ = 7,
re-trained with the flow that also records each block's switched-off hidden units
(`ResidualMLP.inactive_units`). The configs are the gated sweep's own, so training follows the
stored gated records bit for bit (same masked CE); records go to
notebooks/results/plateau-small/ (resumable).

    python notebooks/plateau_study.py [--workers 2] [--seeds 1]
"""
import argparse
from pathlib import Path

from gated_sweep import SIZES
from rgflow.findings import LONG_XI, SHORT_XI
from rgflow.sweep import grid, process_pool, sweep

STORE = Path(__file__).resolve().parent / "results" / "plateau-small"


def configs(seeds=1):
    return grid(SIZES["small"], seed=list(range(seeds)), xi=[SHORT_XI, LONG_XI])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=1)
    args = ap.parse_args()
    with process_pool(args.workers) as ex:
        sweep(configs(args.seeds), executor=ex, store=STORE, progress=True)


if __name__ == "__main__":
    main()
