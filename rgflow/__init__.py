"""rgflow: does a deep residual MLP coarse-grain its input like a renormalization-group flow?

Markov chains with a known spectrum (:class:`MarkovChain`), the masked-token task on their
sequences (:func:`mask_tokens`) and its exact Bayes-optimal answer, computed by a C core.
"""
from . import _core
from .chains import MarkovChain, mask_tokens
from .model import ResidualMLP
from .train import History, train

__version__ = "0.1.0"

__all__ = ["MarkovChain", "mask_tokens", "ResidualMLP", "train", "History", "show_config",
           "__version__"]


def show_config(print_=True):
    """Report the BLAS/LAPACK the C core was built against and its thread count.

    Returns a dict with keys ``blas`` (provider), ``config`` (OpenBLAS's own description) and
    ``threads``; prints it too unless ``print_=False``.

    >>> info = show_config(print_=False)
    >>> sorted(info)
    ['blas', 'config', 'threads']
    """
    provider, config, threads = _core.blas_info()
    info = {"blas": provider, "config": config.strip(), "threads": threads}
    if print_:
        print("rgflow %s\n  BLAS/LAPACK: %s\n  OpenBLAS:    %s\n  threads:     %d"
              % (__version__, provider, info["config"], threads))
    return info
