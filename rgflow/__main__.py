"""Command line: ``rgflow reproduce``, ``rgflow demo`` (``python -m rgflow ...`` works too,
outside the source tree)."""
import argparse
import os
import sys

import numpy as np

INTERRUPTED = 130  # the shell's code for a process ended by SIGINT (128 + 2)


def demo(args):
    import rgflow as rg

    rg.show_config()
    print()
    for xi in args.xi:
        chain = rg.MarkovChain.lazy(n_states=args.states, xi=xi)
        tokens = chain.sample(n=args.n, length=args.length, seed=args.seed)
        masked, mask = rg.mask_tokens(tokens, rate=args.mask_rate, seed=args.seed + 1,
                                      mask_id=chain.n_states)
        ev = chain.eigenvalues
        print("lazy chain, V = %d, requested xi = %g" % (chain.n_states, xi))
        print("  eigenvalues (by modulus): %s" % np.array2string(ev.real, precision=4))
        print("  correlation length:       %.6g" % chain.correlation_length)
        print("  entropy rate:             %.4f nats/token" % chain.entropy_rate)
        print("  unigram entropy H(pi):    %.4f nats" % chain.unigram_entropy)
        print("  sampled %d x %d tokens; %d masked (rate %.2f)"
              % (args.n, args.length, mask.sum(), args.mask_rate))
        print("  Bayes floor (masked CE):  %.4f nats\n" % chain.bayes_loss(tokens, mask))


def reproduce(args):
    from .report import reproduce as run_reproduce

    summary = run_reproduce(out=args.out, quick=args.quick, seeds=args.seeds,
                            workers=args.workers, progress=not args.no_progress)
    print("\nreport written to %s/report.md" % args.out)
    for xi, entry in summary["per_xi"].items():
        print("xi = %s: collapse (masked / visible / all positions): %s / %s / %s; "
              "plateau: %s; learned share %s" % (
                  xi, entry["collapse_masked"]["status"], entry["collapse_visible"]["status"],
                  entry["collapse_all"]["status"], entry["plateau"]["status"],
                  ", ".join("%.2f" % x for x in entry["learned"])))
    print("selectivity (all positions): %s; at masked positions: %s"
          % (summary["selectivity"]["status"], summary["selectivity_masked"]["status"]))


def sweep(args):
    import json
    from pathlib import Path

    import rgflow as rg
    from .report import CONFIGS
    from .sweep import process_pool

    base = CONFIGS["quick" if args.quick else "paper"]
    overrides = {k: getattr(args, k) for k in ("steps", "depth", "hidden", "width", "length")
                 if getattr(args, k) is not None}
    configs = rg.grid(base.replace(**overrides), xi=args.xi, seed=list(range(args.seeds)))
    store = Path(args.store)
    progress = not args.no_progress
    if args.scheduler:
        from distributed import Client
        with Client(args.scheduler) as client:
            table = rg.sweep(configs, executor=client, store=store, progress=progress)
    elif args.workers > 1:
        with process_pool(args.workers) as ex:
            table = rg.sweep(configs, executor=ex, store=store, progress=progress)
    else:
        table = rg.sweep(configs, store=store, progress=progress)
    rows = table.to_dict("records") if hasattr(table, "to_dict") else table
    print("%6s %5s %8s %8s %8s %8s  %s" % ("xi", "seed", "CE", "floor", "learned", "R", "error"))
    for r in rows:
        if r["status"] == "ok":
            print("%6g %5d %8.4f %8.4f %8.2f %8.3f" % (r["xi"], r["seed"], r["masked_ce"],
                  r["bayes_floor"], r["learned"], r["ratio_position"]))
        else:
            print("%6g %5d %s" % (r["xi"], r["seed"], r["error"]))
    (store / "table.json").write_text(json.dumps(rows, indent=1))
    import matplotlib
    matplotlib.use("Agg")
    from .plot import plot_phase_diagram
    if any(r["status"] == "ok" for r in rows):
        ax = plot_phase_diagram(rows)
        ax.figure.savefig(store / "phase_diagram.png", dpi=100)
        print("table.json and phase_diagram.png written to %s" % store)


def _store_of(args):
    if args.command == "reproduce":
        return os.path.join(args.out, "runs")
    return getattr(args, "store", None)


def interrupted_line(args, exc):
    """The one line printed on Ctrl-C: what was kept and how to resume."""
    from .sweep import SweepInterrupted

    store = _store_of(args)
    if store is None:
        return "rgflow %s: interrupted" % args.command
    if isinstance(exc, SweepInterrupted):
        return ("rgflow %s: interrupted; %d of %d runs finished and are kept in %s; run the "
                "same command again to compute only the other %d"
                % (args.command, exc.done, exc.total, store, exc.total - exc.done))
    return ("rgflow %s: interrupted; every finished run is kept in %s; run the same command "
            "again to resume" % (args.command, store))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="rgflow", description="rgflow command line")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("reproduce", help="train xi = 1 and 7 over seeds, judge the three "
                       "claims, write report.md/report.json and figures")
    p.add_argument("--quick", action="store_true", help="the small configuration (minutes)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", default="rgflow-report")
    p.add_argument("--workers", type=int, default=2, help="runs in parallel (1 BLAS thread each)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=reproduce)
    p = sub.add_parser("sweep", help="run a grid of xi x seeds (resumable), print the table, "
                       "write table.json and phase_diagram.png into the store")
    p.add_argument("--xi", type=float, nargs="+", default=[1.0, 7.0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--store", required=True)
    p.add_argument("--scheduler", help="address of a Dask scheduler (runs on that cluster)")
    p.add_argument("--quick", action="store_true", help="start from the quick configuration")
    for name in ("steps", "depth", "hidden", "width", "length"):
        p.add_argument("--" + name, type=int)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=sweep)
    p = sub.add_parser("demo", help="build chains, sample them, print spectrum and Bayes floor")
    p.add_argument("--xi", type=float, nargs="+", default=[1.0, 7.0])
    p.add_argument("--states", type=int, default=8)
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--length", type=int, default=32)
    p.add_argument("--mask-rate", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=demo)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt as exc:  # Ctrl-C: SweepInterrupted, TrainingInterrupted, ...
        print(interrupted_line(args, exc), file=sys.stderr, flush=True)
        return INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
