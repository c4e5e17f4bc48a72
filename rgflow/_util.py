"""Small helpers shared by the Python layer: seeds and argument checks."""
import numbers

import numpy as np

SEED_BOUND = 2**63


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


def as_count(value, name, minimum=1):
    """A Python int >= minimum, or TypeError/ValueError naming the argument."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError("%s must be an int, got %s" % (name, type(value).__name__))
    value = int(value)
    if value < minimum:
        raise ValueError("%s must be >= %d, got %d" % (name, minimum, value))
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
