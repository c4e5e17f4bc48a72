"""rgflow: does a deep residual MLP coarse-grain its input like a renormalization-group flow?

Markov chains with a known spectrum (:class:`MarkovChain`), the masked-token task on their
sequences (:func:`mask_tokens`) and its exact Bayes-optimal answer, computed by a C core.
"""
try:
    from . import _core
except ImportError as exc:  # pragma: no cover - depends on how rgflow was installed
    import os as _os
    raise ImportError(
        "rgflow's compiled core could not be imported from %s (%s). In a source checkout, "
        "either `pip install .` and run from another directory, or build in place with "
        "`make inplace`." % (_os.path.dirname(__file__), exc)) from exc
from .analysis import (cka_matrix, drift_profile, effective_rank, linear_cka, rank_profile,
                       singular_values)
from ._core import MemoryLimitError
from .chains import MarkovChain, mask_tokens
from .model import ResidualMLP
from .train import History, TrainingInterrupted, train
from . import experiments, findings, plot  # noqa: E402  (modules: rg.experiments.Config, ...)
from .sweep import SweepInterrupted, grid, sweep  # noqa: E402  (rg.sweep is the function)

__version__ = "0.1.0"

__all__ = ["MarkovChain", "mask_tokens", "MemoryLimitError", "TrainingInterrupted",
           "SweepInterrupted", "ResidualMLP", "train", "History", "show_config",
           "__version__", "effective_rank", "singular_values", "rank_profile", "linear_cka",
           "drift_profile", "cka_matrix", "experiments", "findings", "plot", "grid", "sweep"]


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
