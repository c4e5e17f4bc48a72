"""The seeds behind the README's gated verdicts (issue 12): ξ ∈ {1, 7} × 10 seeds at the small
size with the recipe the recipe study chose (cosine learning rate 3e-3, 500 warm-up steps,
30,000 steps; see notebooks/recipe_study.py), every run storing every measure, its
initialisation baseline, the adjacent-token rule and its gate figures. Records go to
notebooks/results/gated-small/ (resumable: finished runs are not recomputed).

    python notebooks/gated_sweep.py [--workers 2] [--seeds 10]
"""
import argparse
from pathlib import Path

from rgflow.experiments import Config
from rgflow.sweep import grid, process_pool, sweep

STORE = Path(__file__).resolve().parent / "results" / "gated-small"
RECIPE = Config(length=16, width=16, hidden=256, depth=8, steps=30000, lr=3e-3,
                schedule="cosine", warmup=500)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=10)
    args = ap.parse_args()
    configs = grid(RECIPE, seed=list(range(args.seeds)), xi=[1.0, 7.0])
    with process_pool(args.workers) as ex:
        sweep(configs, executor=ex, store=STORE, progress=True)


if __name__ == "__main__":
    main()
