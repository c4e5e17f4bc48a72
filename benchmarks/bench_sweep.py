"""Wall time of an 8-run grid with 1 and 2 workers (ProcessPoolExecutor, 1 BLAS thread per run).

Run: python benchmarks/bench_sweep.py [--steps 600]
Prints both wall times and the speed-up (target >= 1.8x on 2 cores) and checks that the two
tables are identical.
"""
import argparse
import json
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import rgflow as rg
from rgflow.experiments import Config


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600)
    args = ap.parse_args()
    base = Config(length=16, width=16, hidden=256, depth=8, steps=args.steps, eval_size=512)
    configs = rg.grid(base, xi=[1.0, 7.0], seed=[0, 1, 2, 3])
    times, tables = {}, {}
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as store:
            t0 = time.perf_counter()
            with ProcessPoolExecutor(workers) as ex:
                table = rg.sweep(configs, executor=ex, store=store, progress=False)
            times[workers] = time.perf_counter() - t0
        rows = table.to_dict("records") if hasattr(table, "to_dict") else table
        tables[workers] = json.dumps(rows, sort_keys=True)
    print("8 runs (L 16, d 16, m 256, K 8, %d steps each)" % args.steps)
    print("  1 worker   %7.1f s" % times[1])
    print("  2 workers  %7.1f s" % times[2])
    print("  speed-up   %7.2fx (target >= 1.8x)" % (times[1] / times[2]))
    print("  tables identical: %s" % (tables[1] == tables[2]))


if __name__ == "__main__":
    main()
