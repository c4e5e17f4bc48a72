"""rgflow: does a deep residual MLP coarse-grain its input like a renormalization-group flow?

Markov chains with a known spectrum (:class:`MarkovChain`), hidden-Markov tasks built on them
(:class:`HiddenMarkovTask`), the masked-token task on their sequences (:func:`mask_tokens`) and
its exact Bayes-optimal answer, computed by a C core.
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
from ._version import __version__
from .runtime import get_num_threads, num_threads, set_num_threads, show_config, where_computed
from .chains import HiddenMarkovTask, MarkovChain, mask_tokens, relevant_context
from .model import ResidualMLP
from .train import History, TrainingInterrupted, train
from . import experiments, findings, plot  # noqa: E402  (modules: rg.experiments.Config, ...)
from .sweep import SweepInterrupted, grid, sweep  # noqa: E402  (rg.sweep is the function)

__all__ = ["MarkovChain", "HiddenMarkovTask", "mask_tokens", "relevant_context",
           "MemoryLimitError", "TrainingInterrupted",
           "SweepInterrupted", "ResidualMLP", "train", "History", "show_config",
           "where_computed", "set_num_threads", "get_num_threads", "num_threads",
           "__version__", "effective_rank", "singular_values", "rank_profile", "linear_cka",
           "drift_profile", "cka_matrix", "experiments", "findings", "plot", "grid", "sweep"]
