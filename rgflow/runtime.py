"""Threads and the machine: how many threads rgflow computes with, and where a result was
computed.

rgflow's model kernels (forward, gradients, training) run on a thread pool of their own and
give bit-identical results for any thread count: each layer is cut into pieces by its shapes
alone and every piece runs single-threaded OpenBLAS (OpenBLAS's own partition of a GEMM
depends on its thread count and, on some CPU kernels, changes the rounding). Results can still
differ between OpenBLAS CPU kernels (``core`` below: Haswell and SkylakeX order a GEMM's sums
differently), so every stored result records :func:`where_computed`.
"""
import os
import platform
import threading

from . import _core
from ._version import __version__

_ENV = "RGFLOW_NUM_THREADS"


def _default_threads():
    value = os.environ.get(_ENV)
    if value:
        try:
            n = int(value)
        except ValueError:
            raise ValueError("%s must be a positive integer, got %r" % (_ENV, value)) from None
        if n < 1:
            raise ValueError("%s must be a positive integer, got %r" % (_ENV, value))
        return min(n, 64)
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 64))


def set_num_threads(n):
    """Set the number of threads rgflow's kernels use (1..64); returns the previous count.

    Results do not depend on it. The default is ``$RGFLOW_NUM_THREADS`` or the CPUs this
    process may run on.

    >>> before = set_num_threads(1); _ = set_num_threads(before)
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError("n_threads must be an int, got %s" % type(n).__name__)
    return _core.set_num_threads(n)


def get_num_threads():
    """Threads rgflow's kernels use.

    >>> get_num_threads() >= 1
    True
    """
    return _core.blas_info()[3]


# num_threads blocks open now, in any thread, in the order they were entered, and the count
# before the first of them: the count is process-wide, so blocks in several threads at once
# (a sweep on a thread pool) must not restore it in whatever order they happen to end.
_blocks_lock = threading.Lock()
_open_blocks = []
_count_before_blocks = [None]


class num_threads:
    """Context manager: ``with num_threads(1): ...`` computes with 1 thread, then restores.

    The count is process-wide. Blocks open in several threads at once (e.g. runs of a sweep
    on a thread pool) share it: the most recently entered open block's count applies, and the
    count from before the first of them comes back when the last one ends, whatever order
    they end in."""

    def __init__(self, n):
        self.n = n

    def __enter__(self):
        with _blocks_lock:
            before = set_num_threads(self.n)
            if not _open_blocks:
                _count_before_blocks[0] = before
            self.before = before
            _open_blocks.append(self)
        return self

    def __exit__(self, *exc):
        with _blocks_lock:
            for i in range(len(_open_blocks) - 1, -1, -1):
                if _open_blocks[i] is self:
                    del _open_blocks[i]
                    break
            set_num_threads(_open_blocks[-1].n if _open_blocks else _count_before_blocks[0])


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover - not Linux
        pass
    return platform.processor() or platform.machine()


def where_computed():
    """Where results computed now come from: a dict with ``rgflow`` (version), ``blas``
    (provider), ``openblas`` (its version and build line), ``core`` (the OpenBLAS CPU kernel,
    e.g. ``Haswell`` or ``SkylakeX``), ``threads`` (rgflow's thread count), ``cpu`` (model),
    ``machine`` (architecture).

    >>> sorted(where_computed())
    ['blas', 'core', 'cpu', 'machine', 'openblas', 'rgflow', 'threads']
    """
    provider, config, core, threads = _core.blas_info()
    return {"rgflow": __version__, "blas": provider, "openblas": config.strip(),
            "core": core.strip(), "threads": threads, "cpu": _cpu_model(),
            "machine": platform.machine()}


def show_config(print_=True):
    """Report the BLAS/LAPACK the C core was built against, its CPU kernel and rgflow's thread
    count (see :func:`where_computed` for the keys); prints it too unless ``print_=False``.

    >>> info = show_config(print_=False)
    >>> info["threads"] >= 1
    True
    """
    info = where_computed()
    if print_:
        print("rgflow %s\n  BLAS/LAPACK: %s\n  OpenBLAS:    %s\n  CPU kernel:  %s\n"
              "  CPU:         %s\n  threads:     %d (rgflow's pool; OpenBLAS single-threaded "
              "inside it)" % (info["rgflow"], info["blas"], info["openblas"], info["core"],
                              info["cpu"], info["threads"]))
    return info


_core.set_num_threads(_default_threads())
