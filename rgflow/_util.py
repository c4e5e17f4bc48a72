"""Small helpers shared by the Python layer: seeds, argument checks and atomic file writes."""
import contextlib
import numbers
import os
import re
import socket

import numpy as np

SEED_BOUND = 2**63


def check_memory(nbytes, what):
    """Raise ``rgflow.MemoryLimitError`` (a MemoryError) naming ``what`` if allocating
    ``nbytes`` would exceed the memory available now; call it before large allocations.
    The same helper the C bindings use (``_core.check_memory``)."""
    from . import _core
    _core.check_memory(float(nbytes), what)


def as_seed(seed, name="seed"):
    """An int seed in [0, 2**63) from an int or a ``numpy.random.Generator``.

    A Generator is consumed (one draw), so passing the same Generator twice gives two seeds.
    """
    if isinstance(seed, np.random.Generator):
        return int(seed.integers(SEED_BOUND))
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise TypeError("%s must be an int or a numpy.random.Generator, got %s"
                        % (name, type(seed).__name__))
    seed = int(seed)
    if not 0 <= seed < 2**64:
        raise ValueError("%s must lie in [0, 2**64), got %d" % (name, seed))
    return seed


def shape2(x):
    """(n, length) of a 2-D array-like without converting it, or None (the C core then
    reports what is wrong with it, naming the argument)."""
    shape = getattr(x, "shape", None)
    if shape is None:
        try:
            shape = np.shape(x)
        except (ValueError, TypeError):
            return None
    return tuple(int(s) for s in shape) if len(shape) == 2 else None


def as_flag(value, name):
    """A Python bool from a bool or NumPy bool, or TypeError naming the argument (a string
    such as "no" or a 0/1 int would otherwise pass as true or false without a word)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError("%s must be a bool, got %s" % (name, type(value).__name__))
    return bool(value)


def as_count(value, name, minimum=1, maximum=2**62):
    """A Python int in [minimum, maximum], or TypeError/ValueError naming the argument (the
    default maximum keeps products of sizes from overflowing int64 in the C core)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError("%s must be an int, got %s" % (name, type(value).__name__))
    value = int(value)
    if value < minimum:
        raise ValueError("%s must be >= %d, got %d" % (name, minimum, value))
    if maximum is not None and value > maximum:
        raise ValueError("%s must be <= %d, got %d" % (name, maximum, value))
    return value


def as_real(value, name, low=None, high=None, low_open=False, high_open=False):
    """A finite Python float within the given bounds, or TypeError/ValueError naming it."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError("%s must be a real number, got %s" % (name, type(value).__name__))
    value = float(value)
    bad = value != value
    if low is not None:
        bad |= value <= low if low_open else value < low
    if high is not None:
        bad |= value >= high if high_open else value > high
    if bad:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise ValueError("%s must lie in %s%s, %s%s, got %r"
                         % (name, lo, low if low is not None else "-inf",
                            high if high is not None else "inf", hi, value))
    return value


# Temporary files of atomic_write are named ".<name>.<host>.<pid>-<12 hex>.tmp", so that one
# left by a killed process can be told from one a live process is writing (maybe on another
# machine sharing the folder): see remove_orphaned_temporaries.
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
_TEMPORARY = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)-[0-9a-f]{12}\.tmp$")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        pass  # exists under another user, or cannot be asked: keep its files
    return True


def remove_orphaned_temporaries(directory):
    """Delete the temporary files :func:`atomic_write` left in ``directory`` when its process
    was killed mid-write (SIGKILL, power loss: no handler runs): those written on this
    machine by a process that no longer runs. A temporary a live process is writing, or one
    from another machine, is left alone. A missing directory is fine."""
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return
    for name in names:
        m = _TEMPORARY.match(name)
        if m and m.group("host") == _HOST and not _alive(int(m.group("pid"))):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(directory, name))


@contextlib.contextmanager
def atomic_write(path, binary=False):
    """Write ``path`` all or nothing: yields a file open for writing (text, UTF-8, or binary)
    on a temporary file in the same directory, which is fsynced and renamed over ``path`` when
    the block ends; the directory is then fsynced so the rename survives a crash. On any
    exception (Ctrl-C included) the temporary file is removed and ``path`` is left as it was.

    The file is created with mode 0666 minus the umask, as ``open`` would (``mkstemp`` makes
    0600 files that other users of a shared results folder cannot read).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = os.path.join(directory, ".%s.%s.%d-%s.tmp" % (
            os.path.basename(path), _HOST, os.getpid(), os.urandom(6).hex()))
        try:
            fd = os.open(tmp, flags, 0o666)  # the kernel applies the umask
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover - 100 collisions of 48 random bits
        raise FileExistsError("no free temporary name next to %s" % path)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else
                                                       {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # not every file system can fsync a directory
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def as_mask_rate(value, name="mask_rate"):
    """A masking rate in [0, 1] (0 still hides one span per sequence: see mask_tokens)."""
    return as_real(value, name, low=0.0, high=1.0)


def split_map(part, n, n_threads):
    """``part(start, stop)`` over ``n_threads`` contiguous ranges of ``range(n)`` on a thread
    pool (the C kernels release the GIL), the results concatenated along axis 0 in order.
    Every caller computes each item by the same code whatever its range, so the result does
    not depend on ``n_threads``."""
    from concurrent.futures import ThreadPoolExecutor
    k = max(1, min(n_threads, n))
    if k == 1:
        return part(0, n)
    bounds = np.linspace(0, n, k + 1).astype(np.int64)
    with ThreadPoolExecutor(k) as pool:
        parts = pool.map(lambda j: part(int(bounds[j]), int(bounds[j + 1])), range(k))
        return np.concatenate(list(parts), axis=0)


def as_bool_mask(mask, shape, name="mask"):
    """A bool array of ``shape`` from any boolean-valued array (bool, or integers 0/1), or
    TypeError/ValueError naming the argument."""
    m = np.asarray(mask)
    if m.shape != tuple(shape):
        raise ValueError("%s must have shape %s, got %s" % (name, tuple(shape), m.shape))
    if m.dtype != bool and not (m.dtype.kind in "iu" and np.isin(m, (0, 1)).all()):
        raise TypeError("%s must be a boolean (or 0/1) array, got dtype %s" % (name, m.dtype))
    return m.astype(bool)
