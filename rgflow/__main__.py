"""Command line: ``rgflow reproduce``, ``rgflow sweep``, ``rgflow demo`` (``rgflow --help``).

Bad option values are usage errors (one line, exit code 2). Ctrl-C stops every run at its next
training chunk, keeps every finished run, prints one line saying what was kept and how to
resume, and exits with code 130; SIGTERM does the same and exits with code 143.
"""
import argparse
import contextlib
import importlib.util
import math
import os
import signal
import sys
import threading

import numpy as np

INTERRUPTED = 130  # the shell's code for a process ended by SIGINT (128 + 2)
TERMINATED = 143  # ... and by SIGTERM (128 + 15)


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
    from .findings import LONG_XI, MIN_SEEDS, SHORT_XI
    from .report import reproduce as run_reproduce

    summary = run_reproduce(out=args.out, quick=args.quick, seeds=args.seeds,
                            workers=args.workers, progress=not args.no_progress,
                            store=args.store)
    print("\nreport written to %s/report.md" % args.out)
    v = summary["erank/masked"]
    for name in ("short", "long"):
        c = v[name]
        xi = SHORT_XI if name == "short" else LONG_XI
        print("xi = %g: %d of %d runs pass the gate%s; collapse from layer 1 in %d/%d, from "
              "the peak in %d/%d; plateau in %d/%d" % (
                  xi, c["n_gated"], c["n_runs"],
                  "" if c["enough"] else " (fewer than %d: no verdict)" % MIN_SEEDS,
                  c["collapse"]["holds"], c["collapse"]["of"], c["collapse_peak"]["holds"],
                  c["collapse_peak"]["of"], c["plateau"]["holds"], c["plateau"]["of"]))
    print("selectivity (masked positions, centred erank): on R %s, on R_peak %s" % (
        v["selectivity"]["status"], v["selectivity_peak"]["status"]))


def sweep_table(rows):
    """The lines ``rgflow sweep`` prints for table rows (see :func:`rgflow.sweep`)."""
    from .findings import DELTA, GATE_EXCESS

    lines = ["%6s %5s %8s %8s %8s %8s %10s %8s  %s" % (
        "xi", "seed", "CE", "floor", "excess", "margin", "R(masked)", "R(all)", "note")]
    for r in rows:
        if r["status"] == "ok":
            note = "" if r.get("gated", True) else "not gated"
            lines.append("%6g %5d %8.4f %8.4f %8.4f %8s %10.3f %8.3f  %s" % (
                r["xi"], r["seed"], r["masked_ce"], r["bayes_floor"],
                r.get("excess", r["masked_ce"] - r["bayes_floor"]),
                "%+.4f" % r["adjacent_margin"] if r.get("adjacent_margin") is not None else "—",
                r.get("ratio_masked", math.nan), r.get("ratio_position", math.nan), note))
        else:
            lines.append("%6g %5d  error: %s" % (r["xi"], r["seed"], r["error"]))
    lines += ["excess: masked CE above the Bayes floor (nats); margin: the adjacent-token rule's "
              "CE minus the network's; both on the run's gate batch when it has one (CE and "
              "floor: the measurement batch). A run is gated (evidence) when excess <= %g and "
              "margin > 0." % GATE_EXCESS,
              "R = rank[K]/rank[1], the position-level effective rank after the last block over "
              "that after the first, at masked positions and at all positions; R <= %g is a "
              "collapse." % (1 - DELTA)]
    return lines


def sweep(args):
    import json
    from pathlib import Path

    import rgflow as rg
    from .report import CONFIGS
    from .sweep import process_pool

    base = CONFIGS["quick" if args.quick else "paper"]
    overrides = {k: getattr(args, k) for k in ("steps", "depth", "hidden", "width", "length")
                 if getattr(args, k) is not None}
    if args.task != "chain":
        overrides.update(task=args.task, noise=args.noise)
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
    print("\n".join(sweep_table(rows)))
    from .report import computed_on_lines
    if any(r["status"] == "ok" for r in rows):
        print("computed on: " + "; ".join(computed_on_lines(
            [r["computed_on"] for r in rows if r["status"] == "ok"])))
    (store / "table.json").write_text(json.dumps(rows, indent=1))
    import matplotlib
    matplotlib.use("Agg")
    from .plot import plot_phase_diagram
    if any(r["status"] == "ok" and "ratio_position" in r for r in rows):  # depth >= 3
        ax = plot_phase_diagram(rows)
        ax.figure.savefig(store / "phase_diagram.png", dpi=100)
        print("table.json and phase_diagram.png written to %s" % store)


# -- option values: argparse turns ArgumentTypeError into a one-line usage error, exit code 2 --

def _integer(minimum, maximum=None):
    def convert(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError("%r is not an integer" % text) from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(
                "must be an integer >= %d%s, got %s"
                % (minimum, "" if maximum is None else " and <= %d" % maximum, text))
        return value
    return convert


def _real(low, low_open, high=math.inf, high_open=True):
    def convert(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError("%r is not a number" % text) from None
        if not (value > low if low_open else value >= low) or \
                not (value < high if high_open else value <= high):
            raise argparse.ArgumentTypeError("must lie in %s%g, %g%s, got %s" % (
                "(" if low_open else "[", low, high, ")" if high_open else "]", text))
        return value
    return convert


def _xi(low_open):
    """Correlation lengths: finite, > 0 (>= 0 for demo, where 0 is an i.i.d. chain), short
    enough that exp(-1/xi) < 1 (the chain's own check)."""
    in_range = _real(0.0, low_open)

    def convert(text):
        value = in_range(text)
        from .chains import _lam_from_xi
        try:
            _lam_from_xi(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value
    return convert


def _directory(text):
    """A directory that exists or can be made: not a file, not under a file, writable."""
    if not text:
        raise argparse.ArgumentTypeError("a directory name is needed, got ''")
    path = os.path.abspath(text)
    if os.path.exists(path) and not os.path.isdir(path):
        raise argparse.ArgumentTypeError("%s exists and is not a directory" % text)
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise argparse.ArgumentTypeError("%s cannot be created: %s is a file" % (text, parent))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError("%s: no permission to write in %s" % (text, parent))
    return text


def _version():
    from ._version import __version__
    return "rgflow %s" % __version__


def make_parser():
    from .report import CONFIGS

    paper, quick = CONFIGS["paper"], CONFIGS["quick"]
    parser = argparse.ArgumentParser(
        prog="rgflow", description="Train residual MLPs on Markov-chain masked-token tasks and "
        "measure how the residual stream's effective rank and kernel drift change with depth.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.commands = sub.choices  # name -> its parser, for usage errors found after parsing

    p = sub.add_parser(
        "reproduce", help="train xi = 1 and 7 over seeds, judge the paper's three claims over "
        "the runs that pass the training gate, write report.md, report.json and figures",
        description="Train xi = 1 and xi = 7 for each seed with the documented recipe, judge "
        "the paper's three claims over the runs that pass the training gate and write "
        "OUT/report.md, OUT/report.json and PNG figures. Finished runs are stored in STORE "
        "(default OUT/runs) and reused: an interrupted run resumes where it stopped, and "
        "--store notebooks/results/gated-small (with --quick) judges the committed records "
        "without training.")
    p.add_argument("--quick", action="store_true",
                   help="the small size (L %d, m %d, K %d, %d steps of batch %d; about 9 "
                   "minutes per run on one core) instead of the paper size (L %d, m %d, K %d, "
                   "%d steps of batch %d; about an hour per run) (default: paper size)" % (
                       quick.length, quick.hidden, quick.depth, quick.steps, quick.batch_size,
                       paper.length, paper.hidden, paper.depth, paper.steps,
                       paper.batch_size))
    p.add_argument("--seeds", type=_integer(1), default=10, metavar="N",
                   help="train seeds 0..N-1 at each xi; every other seed of the same "
                   "configuration already in the store is judged too (default: %(default)s)")
    p.add_argument("--out", type=_directory, default="rgflow-report", metavar="DIR",
                   help="report directory, created if missing (default: %(default)s)")
    p.add_argument("--store", type=_directory, metavar="DIR",
                   help="directory of stored runs, created if missing (default: OUT/runs)")
    p.add_argument("--workers", type=_integer(1), default=2, metavar="N",
                   help="runs in parallel, each in its own process with 1 BLAS thread; 1 runs "
                   "them in this process (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (default: show one)")
    p.set_defaults(func=reproduce)

    p = sub.add_parser(
        "sweep", help="run a grid of xi x seeds (resumable), print the table, write "
        "table.json and phase_diagram.png into the store",
        description="Run every (xi, seed) of a grid, store each finished run in STORE (a "
        "re-run computes only what is missing), print the table and write STORE/table.json "
        "and STORE/phase_diagram.png. Every run follows the documented recipe (--steps "
        "to shorten it); without --quick it is paper size (about an hour per run on one "
        "core; about 9 minutes with --quick).")
    p.add_argument("--xi", type=_xi(low_open=True), nargs="+", default=[1.0, 7.0],
                   metavar="XI", help="correlation lengths, > 0 (default: 1 7)")
    p.add_argument("--seeds", type=_integer(1), default=3, metavar="N",
                   help="train seeds 0..N-1 at each xi (default: %(default)s)")
    p.add_argument("--workers", type=_integer(1), default=1, metavar="N",
                   help="runs in parallel, each in its own process with 1 BLAS thread; 1 runs "
                   "them in this process (default: %(default)s)")
    p.add_argument("--store", type=_directory, required=True, metavar="DIR",
                   help="directory of stored runs, created if missing (required)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="run on the Dask cluster of this scheduler instead of local processes "
                   "(default: none)")
    p.add_argument("--quick", action="store_true",
                   help="start from the quick configuration (L %d, m %d, K %d, %d steps of "
                   "batch %d) (default: the paper size, L %d, m %d, K %d, %d steps of batch "
                   "%d)" % (quick.length, quick.hidden, quick.depth, quick.steps,
                            quick.batch_size, paper.length, paper.hidden, paper.depth,
                            paper.steps, paper.batch_size))
    for name, what in (("steps", "training steps"), ("depth", "residual blocks K"),
                       ("hidden", "MLP hidden width m"), ("width", "per-position width d"),
                       ("length", "sequence length L")):
        both = getattr(paper, name), getattr(quick, name)
        p.add_argument("--" + name, type=_integer(1), metavar="N",
                       help="%s (default: %s)" % (what, "%d" % both[0] if both[0] == both[1]
                                                  else "%d, or %d with --quick" % both))
    p.add_argument("--task", choices=("chain", "hmm", "hmm-random"), default="chain",
                   metavar="TASK", help="chain, hmm or hmm-random. chain: the tokens are the "
                   "lazy chain's states; hmm: each is replaced by a uniform token with "
                   "probability --noise (a hidden Markov task); hmm-random: a random emission "
                   "mixed with --noise (default: %(default)s)")
    p.add_argument("--noise", type=_real(0.0, False, 1.0, False), default=0.0, metavar="ETA",
                   help="the hidden-Markov tasks' emission noise, in [0, 1]; > 0 for --task "
                   "hmm (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (default: show one)")
    p.set_defaults(func=sweep)

    p = sub.add_parser("demo", help="build chains, sample them, print spectrum and Bayes floor",
                       description="Build lazy chains, sample and mask them, and print each "
                       "chain's spectrum, entropy rate and Bayes floor.")
    p.add_argument("--xi", type=_xi(low_open=False), nargs="+", default=[1.0, 7.0],
                   metavar="XI", help="correlation lengths, >= 0 (0: i.i.d. tokens) "
                   "(default: 1 7)")
    p.add_argument("--states", type=_integer(2, 65535), default=8, metavar="V",
                   help="number of states V (default: %(default)s)")
    p.add_argument("--n", type=_integer(1), default=2048,
                   help="sequences to sample (default: %(default)s)")
    p.add_argument("--length", type=_integer(1), default=32, metavar="L",
                   help="sequence length (default: %(default)s)")
    p.add_argument("--mask-rate", type=_real(0.0, True, 1.0, False), default=0.15,
                   metavar="RATE", help="share of tokens masked, in (0, 1] "
                   "(default: %(default)s)")
    p.add_argument("--seed", type=_integer(0, 2**64 - 2), default=0,
                   help="sampling seed; masking uses seed + 1 (default: %(default)s)")
    p.set_defaults(func=demo)
    return parser


def _store_of(args):
    if args.command == "reproduce":
        return args.store or os.path.join(args.out, "runs")
    return getattr(args, "store", None)


def interrupted_line(args, exc, what="interrupted"):
    """The one line printed on Ctrl-C (``what``: "interrupted", or "terminated" on SIGTERM):
    what was kept and how to resume."""
    from .sweep import SweepInterrupted

    store = _store_of(args)
    if store is None:
        return "rgflow %s: %s" % (args.command, what)
    if isinstance(exc, SweepInterrupted):
        return ("rgflow %s: %s; %d of %d runs finished and are kept in %s; run the "
                "same command again to compute only the other %d"
                % (args.command, what, exc.done, exc.total, store, exc.total - exc.done))
    return ("rgflow %s: %s; every finished run is kept in %s; run the same command "
            "again to resume" % (args.command, what, store))


@contextlib.contextmanager
def _sigterm_as_ctrl_c():
    """Within the block, SIGTERM (``kill PID``, a job scheduler) stops the command as Ctrl-C
    does: runs stop at their next chunk, finished ones are kept. Yields a list that is
    non-empty once a SIGTERM arrived. Only in the main thread, and only where SIGTERM has its
    default action (which would end the process at once, finished runs of the workers
    lost)."""
    got = []
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield got
        return
    ctrl_c = signal.getsignal(signal.SIGINT) is not signal.SIG_IGN

    def on_sigterm(signum, frame):
        got.append(signum)
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):  # Python's (KeyboardInterrupt), train's hold, a pool worker's
            handler(signal.SIGINT, frame)
        elif handler is signal.SIG_IGN and ctrl_c:
            return  # a sweep winding down after the first Ctrl-C or SIGTERM ignores more
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield got
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def main(argv=None):
    """Entry point of the ``rgflow`` command; returns the exit code."""
    parser = make_parser()
    args = parser.parse_args(argv)
    if getattr(args, "noise", 0.0) and args.task == "chain":
        # the command's own usage line, as for its other bad values
        parser.commands[args.command].error("argument --noise: needs --task hmm or hmm-random")
    if getattr(args, "task", None) == "hmm" and not args.noise:
        parser.commands[args.command].error("argument --noise: --task hmm needs a noise > 0 "
                                            "(with 0 it is --task chain)")
    if getattr(args, "scheduler", None) and importlib.util.find_spec("distributed") is None:
        # Dask is an extra: without it the sweep ended in a ModuleNotFoundError traceback
        parser.commands[args.command].error(
            "argument --scheduler: needs Dask (pip install \".[dask]\" in rgflow's source folder)")
    with _sigterm_as_ctrl_c() as terminated:
        try:
            args.func(args)
        except KeyboardInterrupt as exc:  # Ctrl-C: SweepInterrupted, TrainingInterrupted, ...
            what = "terminated" if terminated else "interrupted"
            print(interrupted_line(args, exc, what), file=sys.stderr, flush=True)
            return TERMINATED if terminated else INTERRUPTED
        except MemoryError as exc:  # rgflow.MemoryLimitError: too large for this machine
            print("rgflow %s: %s" % (args.command, exc), file=sys.stderr)
            return 1
        except OSError as exc:  # a store that cannot be made or written, a scheduler away
            print("rgflow %s: %s" % (args.command, exc), file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
