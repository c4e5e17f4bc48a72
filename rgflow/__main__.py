"""Command line: ``rgflow demo`` (or ``python -m rgflow demo`` outside the source tree)."""
import argparse
import sys

import numpy as np


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


def main(argv=None):
    parser = argparse.ArgumentParser(prog="rgflow", description="rgflow command line")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="build chains, sample them, print spectrum and Bayes floor")
    p.add_argument("--xi", type=float, nargs="+", default=[1.0, 7.0])
    p.add_argument("--states", type=int, default=8)
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--length", type=int, default=32)
    p.add_argument("--mask-rate", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=demo)
    args = parser.parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
