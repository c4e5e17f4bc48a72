"""The regime search behind notebooks/02_findings.ipynb and the README's findings table.

Sweeps ξ ∈ {1, 7} × 3 seeds over the variants below and stores one JSON record per run in
notebooks/results/regime/ (resumable: finished runs are not recomputed).

    python notebooks/regime_search.py [--workers 2] [--only NAME ...]
"""
import argparse
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from rgflow.experiments import Config
from rgflow.sweep import grid, sweep

STORE = Path(__file__).resolve().parent / "results" / "regime"

PAPER = Config()  # V 8, L 32, d 16, m 512, K 12, 3000 steps, lr 1e-3, mask rate 0.15
SMALL = Config(length=16, width=16, hidden=256, depth=8, steps=2000)

VARIANTS = {
    "small": SMALL,
    "small-long": SMALL.replace(steps=6000, schedule="cosine", warmup=200),
    "small-lr3e-4": SMALL.replace(lr=3e-4),
    "small-noLN": SMALL.replace(block_ln=False),
    "small-wd0.1": SMALL.replace(weight_decay=0.1),
    "small-span4": SMALL.replace(mask_span=4, mask_rate=0.3),
    "small-d8": SMALL.replace(width=8),
    "small-random": SMALL.replace(chain="random"),
    "paper": PAPER,
}


def configs(names):
    out = []
    for name in names:
        out += grid(VARIANTS[name], xi=[1.0, 7.0], seed=[0, 1, 2])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", nargs="*", default=list(VARIANTS))
    args = ap.parse_args()
    with ProcessPoolExecutor(args.workers) as ex:
        sweep(configs(args.only), executor=ex, store=STORE, progress=True)


if __name__ == "__main__":
    main()
